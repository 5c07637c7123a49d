"""`i2nsf-dms`: run the Developer's Management System (its own NETCONF server creating and
removing security function instances on this host)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path

from netconf_core import __version__
from netconf_core.auth import hash_password
from netconf_core.configfile import ConfigError
from netconf_core.daemon import serve_until_signalled, setup_logging
from nsf_agent.dms.config import load_config

log = logging.getLogger("nsf_agent.dms")


STARTER = """# i2nsf-dms configuration (docs/security-functions.md)
[server]
host = "{host}"
port = {port}
state_dir = "{state_dir}"

[dms]
name = "{name}"
# host = "nsf-a"                 # the NSF agent whose SFC proxy reaches the instances
# host_netns = "agent"           # namespace of the host-side links (absent: the DMS's own)
locator = "{locator}"
max_instances = 16
load_interval = 5.0
auto_restart = false

# [controller]                   # register instances with the SFC Catalog Manager
# address = "192.0.2.100"
# port = 830
# username = "dms"
# password_file = "/etc/i2nsf/dms.pw"
# host_key = "ssh-ed25519 AAAA..."   # the controller's host key (always verified)

[[users]]
name = "{user}"
password_hash = "{pw_hash}"
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-dms",
        description="Developer's Management System: a NETCONF server (YANG i2nsf-dms) that "
        "creates and removes security function instances (network namespace, veths, the "
        "function's process and rules) and registers them with the controller's SFC "
        "Catalog Manager. See docs/security-functions.md.",
        epilog="Commands: 'run' (default) serves; 'hash-password' prints a password hash; "
        "'init-config' writes a starter configuration.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="serve NETCONF (the default command)")
    run.add_argument("-c", "--config", type=Path, required=True, help="TOML configuration")
    run.add_argument("--host", help="listen address; overrides [server] host")
    run.add_argument("--port", type=int, help="listen port (0 = any free port)")
    run.add_argument("--state-dir", type=Path, help="overrides [server] state_dir")
    run.add_argument("--ready-file", metavar="PATH",
                     help="write the bound port to PATH once the server accepts connections")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    run.add_argument("--log-format", choices=["text", "json"], default=None,
                     help="text (default) or json (= --log-json), as the other daemons")
    hp = sub.add_parser("hash-password", help="print an scrypt hash for a [[users]] entry")
    hp.add_argument("--stdin", action="store_true", help="read the password from stdin")
    ic = sub.add_parser("init-config", help="write a starter configuration file")
    ic.add_argument("path", type=Path, help="where to write it (refuses to overwrite)")
    ic.add_argument("--user", default="admin")
    ic.add_argument("--password-stdin", action="store_true")
    ic.add_argument("--name", default="dms-1", help="the DMS's name")
    ic.add_argument("--locator", default="192.0.2.1", help="address SFFs reach instances at")
    ic.add_argument("--state-dir", type=Path, default=Path("/var/lib/i2nsf-dms"))
    ic.add_argument("--port", type=int, default=8300)
    ic.add_argument("--host", default="0.0.0.0")
    return p


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        raise SystemExit("passwords differ")
    return pw


def _run(args: argparse.Namespace) -> int:
    from nsf_agent.dms.server import Dms

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"i2nsf-dms: error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        cfg.host = args.host
    if args.port is not None:
        cfg.port = args.port
    if args.state_dir:
        cfg.state_dir = args.state_dir
    setup_logging(args.log_level, args.log_json or args.log_format == "json")
    if not cfg.users:
        log.warning("no [[users]] configured: nobody can log in")
    dms = Dms(cfg)
    asyncio.run(serve_until_signalled(dms.start, dms.stop, lambda: dms.port, args.ready_file))
    return 0


def _init_config(args: argparse.Namespace) -> int:
    if args.path.exists():
        print(f"i2nsf-dms: error: {args.path} exists; not overwriting", file=sys.stderr)
        return 2
    text = STARTER.format(host=args.host, port=args.port, state_dir=args.state_dir,
                          name=args.name, locator=args.locator, user=args.user,
                          pw_hash=hash_password(_read_password(args.password_stdin)))
    fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    print(f"wrote {args.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("run", "hash-password", "init-config", "-h", "--help",
                                "--version"):
        argv.insert(0, "run")  # `i2nsf-dms -c dms.toml` is `run`
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    if args.command == "hash-password":
        print(hash_password(_read_password(args.stdin)))
        return 0
    if args.command == "init-config":
        return _init_config(args)
    return _run(args)
