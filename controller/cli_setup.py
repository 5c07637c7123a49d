"""`i2nsf-controller init-config` and `install-unit`: a starter controller.toml (one user,
state under /var/lib, optional RESTCONF and metrics) and the systemd unit."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from netconf_core.auth import hash_password

DEFAULT_CONFIG = Path("/etc/i2nsf/controller.toml")
DEFAULT_STATE = Path("/var/lib/i2nsf-controller")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ic = sub.add_parser("init-config", help="write a starter controller.toml",
                        description="Write a controller configuration with one user "
                        "(mode 0600; refuses to overwrite).")
    ic.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG,
                    help=f"where to write it (default {DEFAULT_CONFIG})")
    ic.add_argument("--user", default="admin", help="northbound user (default admin)")
    ic.add_argument("--password-stdin", action="store_true",
                    help="read the user's password from stdin instead of prompting")
    ic.add_argument("--authorized-key", action="append", default=[], metavar="KEYLINE",
                    help="an OpenSSH public key line for the user (repeatable)")
    ic.add_argument("--state-dir", type=Path, default=DEFAULT_STATE,
                    help=f"store, host key, datastores (default {DEFAULT_STATE})")
    ic.add_argument("--host", default="127.0.0.1", help="NETCONF listen address")
    ic.add_argument("--port", type=int, default=8300, help="NETCONF port (default 8300)")
    ic.add_argument("--restconf-port", type=int, metavar="PORT",
                    help="also serve RESTCONF (HTTPS, generated certificate) on PORT")
    ic.add_argument("--metrics-port", type=int, metavar="PORT",
                    help="also serve Prometheus /metrics on 127.0.0.1:PORT")
    iu = sub.add_parser("install-unit", help="write the systemd unit "
                        "i2nsf-controller.service",
                        description="Render the sandboxed systemd unit with this "
                        "installation's path and write it (docs/operations.md).")
    iu.add_argument("--dir", type=Path, default=Path("/etc/systemd/system"),
                    help="where to write it (default /etc/systemd/system)")
    iu.add_argument("--print", action="store_true", dest="print_only",
                    help="print the unit instead of writing it")
    iu.add_argument("--force", action="store_true", help="overwrite an existing unit")


def _password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    pw = getpass.getpass("password: ")
    if pw != getpass.getpass("again: "):
        raise SystemExit("i2nsf-controller: error: the passwords differ")
    return pw


def _s(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(args: argparse.Namespace, password_hash: str | None) -> str:
    lines = ["[server]", f"host = {_s(args.host)}", f"port = {args.port}",
             f"state_dir = {_s(str(args.state_dir))}", ""]
    if args.restconf_port is not None:
        lines += ["[restconf]", f"host = {_s(args.host)}", f"port = {args.restconf_port}",
                  "# certificate_file = \"/etc/i2nsf/restconf.crt\"   # else generated", ""]
    if args.metrics_port is not None:
        lines += ["[metrics]", 'host = "127.0.0.1"', f"port = {args.metrics_port}", ""]
    lines += ["[[users]]", f"name = {_s(args.user)}"]
    if password_hash:
        lines.append(f"password_hash = {_s(password_hash)}")
    if args.authorized_key:
        lines.append("authorized_keys = [" + ", ".join(_s(k) for k in args.authorized_key)
                     + "]")
    return "\n".join(lines) + "\n"


def cmd_init_config(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, parse_config
    from netconf_core.configfile import read_toml

    path: Path = args.path
    if path.exists():
        print(f"i2nsf-controller: error: {path} exists; not overwriting", file=sys.stderr)
        return 2
    pw_hash = None
    if args.password_stdin or not args.authorized_key:
        pw = _password(args.password_stdin)
        if not pw:
            print("i2nsf-controller: error: empty password", file=sys.stderr)
            return 2
        pw_hash = hash_password(pw)
    text = render(args, pw_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    try:  # what we wrote must load
        parse_config(read_toml(path), path.resolve().parent)
    except ConfigError as exc:
        path.unlink()
        print(f"i2nsf-controller: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; start with: i2nsf-controller serve -c {path}")
    return 0


def cmd_install_unit(args: argparse.Namespace) -> int:
    from netconf_core import systemd

    if args.print_only:
        print(systemd.render("controller"), end="")
        return 0
    try:
        path = systemd.install("controller", args.dir, force=args.force)
    except (FileExistsError, OSError) as exc:
        print(f"i2nsf-controller: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; then: systemctl daemon-reload && systemctl enable --now "
          "i2nsf-controller")
    return 0
