"""`i2nsf-agent`: run the NSF agent's NETCONF server, or prepare its configuration."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import os
import sys
from pathlib import Path

from netconf_core import __version__
from netconf_core.auth import User, hash_password
from netconf_core.daemon import serve_until_signalled, setup_logging
from nsf_agent import dataplane
from nsf_agent.config import AgentConfig, ConfigError, load_config, render_config

log = logging.getLogger("nsf_agent")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-agent",
        description="I2NSF NSF agent: a NETCONF server (RFC 6241 over SSH, RFC 6242) serving "
        "the RFC 9061 YANG modules and applying committed configuration to this host's "
        "data plane.",
        epilog="Commands: 'run' (default) serves; 'hash-password' prints a password hash for "
        "the config file; 'init-config' writes a starter config. See docs/netconf-server.md.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="serve NETCONF (the default command)",
                         description="Start the agent and serve until SIGINT/SIGTERM.")
    _run_options(run)

    hp = sub.add_parser("hash-password", help="print an scrypt hash for a [[users]] entry",
                        description="Read a password (prompted, or one line of stdin when "
                        "stdin is not a terminal) and print its scrypt hash.")
    hp.add_argument("--stdin", action="store_true",
                    help="read the password from standard input even on a terminal")

    ic = sub.add_parser("init-config", help="write a starter configuration file",
                        description="Write a TOML configuration with one user.")
    ic.add_argument("path", type=Path, help="where to write the file (refuses to overwrite)")
    ic.add_argument("--user", default="admin", help="user name (default: admin)")
    ic.add_argument("--password-stdin", action="store_true",
                    help="read the user's password from stdin instead of prompting")
    ic.add_argument("--authorized-key", action="append", default=[], metavar="KEYLINE",
                    help="an OpenSSH public key line for the user (repeatable)")
    ic.add_argument("--state-dir", type=Path, default=Path("/var/lib/i2nsf-agent"),
                    help="state directory (host key, datastores)")
    ic.add_argument("--port", type=int, default=830, help="listen port (default 830)")
    ic.add_argument("--host", default="0.0.0.0", help="listen address (default 0.0.0.0)")
    iu = sub.add_parser("install-unit", help="write the systemd unit i2nsf-agent.service",
                        description="Render the systemd unit (sandboxed, state in "
                        "/var/lib/i2nsf-agent, config /etc/i2nsf/agent.toml) with this "
                        "installation's path and write it (docs/operations.md).")
    iu.add_argument("--dir", type=Path, default=Path("/etc/systemd/system"),
                    help="where to write it (default /etc/systemd/system)")
    iu.add_argument("--print", action="store_true", dest="print_only",
                    help="print the unit instead of writing it")
    iu.add_argument("--force", action="store_true", help="overwrite an existing unit")
    return p


def _cmd_install_unit(args: argparse.Namespace) -> int:
    from netconf_core import systemd

    if args.print_only:
        print(systemd.render("agent"), end="")
        return 0
    try:
        path = systemd.install("agent", args.dir, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"i2nsf-agent: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; then: systemctl daemon-reload && systemctl enable --now "
          "i2nsf-agent")
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, required=True,
                   help="TOML configuration file (listen address, state dir, users, YANG "
                   "modules and features, dataplane)")
    p.add_argument("--host", help="listen address; overrides [server] host")
    p.add_argument("--port", type=int, help="listen port (0 = any free port); overrides "
                   "[server] port")
    p.add_argument("--state-dir", type=Path, help="directory for the host key and the "
                   "running/startup datastores; overrides [server] state_dir")
    p.add_argument("--dataplane", action="append", metavar="NAME",
                   help="applier to run (repeatable; replaces [dataplane] appliers). "
                   f"Known: {', '.join(dataplane.available())}, or module:factory")
    p.add_argument("--ready-file", metavar="PATH",
                   help="write the bound port to PATH once the server accepts connections")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level (default INFO)")
    p.add_argument("--sfc-dataplane", choices=["auto", "userspace", "bpf"],
                   help="SFC data plane: auto (tc-BPF fast path when forwarder/fast-path is "
                   "enabled and the kernel takes it, else userspace only), userspace, bpf "
                   "(required: refuse to start without it); overrides [dataplane] sfc")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="text (default) or json: one JSON object per line, for journald "
                   "or a log collector")
    p.add_argument("--log-json", action="store_true", help="same as --log-format json")


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        raise SystemExit("passwords differ")
    return pw


def _cmd_run(args: argparse.Namespace) -> int:
    from nsf_agent.agent import Agent

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"i2nsf-agent: error: {exc}", file=sys.stderr)
        return 2
    if args.host:
        cfg.host = args.host
    if args.port is not None:
        cfg.port = args.port
    if args.state_dir:
        cfg.state_dir = args.state_dir
    if args.dataplane:
        cfg.appliers = args.dataplane
    if args.sfc_dataplane:
        cfg.sfc_dataplane = args.sfc_dataplane
    if cfg.sfc_dataplane == "bpf":
        from nsf_agent.sfc.fastpath import FastPath

        ok, why = FastPath.available()
        if not ok:
            print(f"i2nsf-agent: error: --sfc-dataplane bpf: {why}", file=sys.stderr)
            return 2
    setup_logging(args.log_level, args.log_json or args.log_format == "json")
    if not cfg.users:
        log.warning("no [[users]] configured: nobody can log in")
    try:
        agent = Agent(cfg)
    except ValueError as exc:
        print(f"i2nsf-agent: error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(serve_until_signalled(agent.start, agent.stop, lambda: agent.port,
                                      args.ready_file))
    return 0


def _cmd_init_config(args: argparse.Namespace) -> int:
    if args.path.exists():
        print(f"i2nsf-agent: error: {args.path} exists; not overwriting", file=sys.stderr)
        return 2
    pw_hash = None
    if args.password_stdin or not args.authorized_key:
        pw_hash = hash_password(_read_password(args.password_stdin))
    # "auto": the kernel's XFRM when it has ESP, the userspace data path otherwise ("null"
    # would accept SAs and enforce nothing)
    cfg = AgentConfig(host=args.host, port=args.port, state_dir=args.state_dir,
                      appliers=["auto"])
    cfg.users = [User(args.user, pw_hash, list(args.authorized_key))]
    fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(cfg))
    print(f"wrote {args.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("run", "hash-password", "init-config", "install-unit", "-h",
                                "--help", "--version"):
        argv.insert(0, "run")  # `i2nsf-agent -c agent.toml` is `run`
    args = build_parser().parse_args(argv)
    if args.command in (None, "run"):
        if args.command is None:
            build_parser().print_help()
            return 2
        return _cmd_run(args)
    if args.command == "hash-password":
        print(hash_password(_read_password(args.stdin)))
        return 0
    if args.command == "init-config":
        return _cmd_init_config(args)
    if args.command == "install-unit":
        return _cmd_install_unit(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
