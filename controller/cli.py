"""`i2nsf-controller`: run the I2NSF security controller, and drive a running one.

`serve` runs the controller. Every other command is a NETCONF client (ncclient) of the
running controller's northbound interface — the same `i2nsf-flow-policy` module any
NETCONF tool can use; there is no second API.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from controller.cli_client import ENCRYPTION, INTEGRITY
from controller.cli_output import CliError
from netconf_core import __version__
from netconf_core.daemon import serve_until_signalled, setup_logging

log = logging.getLogger("controller")

__all__ = ["CliError", "build_parser", "main"]


# ---- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-controller",
        description="I2NSF security controller: provisions IPsec flow protection "
        "(RFC 9061, IKE-less) on NSF agents over NETCONF, and rekeys it forever. "
        "'serve' runs it; the other commands talk to a running controller over its "
        "NETCONF interface.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--host", default=os.environ.get("I2NSF_CONTROLLER_HOST", "127.0.0.1"),
                   help="controller address (default 127.0.0.1, env I2NSF_CONTROLLER_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("I2NSF_CONTROLLER_PORT",
                                                                  "8300")),
                   help="controller NETCONF port (default 8300)")
    p.add_argument("--user", "-u", default=os.environ.get("I2NSF_USER", "admin"),
                   help="user name (default admin, env I2NSF_USER)")
    p.add_argument("--password-file", type=Path,
                   help="file whose first line is the password (else env I2NSF_PASSWORD)")
    p.add_argument("--key", "-i", type=Path, help="SSH private key for public key login")
    p.add_argument("--host-key", help="the controller's host key: an 'ssh-ed25519 AAAA...' "
                   "line, its base64, or a SHA256: fingerprint (env I2NSF_CONTROLLER_HOST_KEY;"
                   " default: ~/.ssh/known_hosts). A different key is refused before any "
                   "credential is sent")
    p.add_argument("--host-key-file", type=Path, dest="controller_host_key_file",
                   help="file holding the controller's host key (its "
                   "<state_dir>/ssh_host_ed25519_key.pub; env I2NSF_CONTROLLER_HOST_KEY_FILE)")
    p.add_argument("--json", action="store_true", help="list/show/status: print JSON")
    p.add_argument("--wait", action="store_true", help="changes: block until they took "
                   "effect on the NSFs (progress on stderr); exit 1 if they failed")
    p.add_argument("--timeout", type=float, default=120.0, help="--wait limit in seconds "
                   "(default 120; exit 3 when reached)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="run the controller",
                       description="Serve NETCONF northbound and manage the NSFs until "
                       "SIGINT/SIGTERM.")
    s.add_argument("-c", "--config", type=Path, required=True, help="controller TOML file")
    s.add_argument("--ready-file", help="write the bound port here once serving")
    s.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text (default) or json: one JSON object per line (journald, log "
                   "collectors)")

    nsf = sub.add_parser("nsf", help="the NSF inventory").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    a = nsf.add_parser("add", help="add or update an NSF")
    a.add_argument("name")
    a.add_argument("--address", required=True, help="management address of the agent")
    a.add_argument("--mgmt-port", type=int, default=830, help="agent NETCONF port (830)")
    a.add_argument("--username", required=True, help="SSH user on the agent")
    cred = a.add_mutually_exclusive_group(required=True)
    cred.add_argument("--private-key-file", help="controller-side SSH key for the agent")
    cred.add_argument("--password-file", dest="nsf_password_file",
                      help="controller-side file holding the agent password")
    hk = a.add_mutually_exclusive_group(required=True)
    hk.add_argument("--host-key", dest="nsf_host_key",
                    help="the agent's pinned host key: 'ssh-ed25519 AAAA...' or SHA256:...")
    hk.add_argument("--host-key-file", type=Path, help="file holding the agent's public key")
    a.add_argument("--data-plane-address", required=True, help="tunnel endpoint address")
    a.add_argument("--prefix", action="append", default=[], help="protected prefix "
                   "(repeatable)")
    a.add_argument("--nat-public-address", help="the NSF is behind NAT with this address")
    a.add_argument("--nat-public-port", type=int, help="NAT's public UDP port (4500)")
    a.add_argument("--dataplane", choices=["kernel", "userspace"], default="kernel")
    nsf.add_parser("list", help="list NSFs and their session state")
    r = nsf.add_parser("remove", help="remove an NSF (refused while policies, groups or road "
                       "warriors use it; with --wait, waits for removals still running)")
    r.add_argument("name")
    rc = nsf.add_parser("rotate-cert", help="IKE case: issue a new key and certificate to "
                        "an NSF and push them (established IKE SAs stay up)")
    rc.add_argument("name")

    ca = sub.add_parser("ca", help="the controller's certificate authority (IKE case)"
                        ).add_subparsers(dest="sub", metavar="ACTION", required=True)
    ca.add_parser("rotate", help="new CA key and certificate; re-issue and push every "
                  "certificate (the previous CA stays trusted)")
    rw = sub.add_parser("roadwarrior", help="remote hosts connecting to a gateway (IKE case)"
                        ).add_subparsers(dest="sub", metavar="ACTION", required=True)
    rwa = rw.add_parser("add", help="add or replace a road warrior")
    rwa.add_argument("name")
    rwa.add_argument("--gateway", required=True, help="gateway NSF")
    rwa.add_argument("--identity", required=True, help="the host's IKE identity (FQDN)")
    inner = rwa.add_mutually_exclusive_group(required=True)
    inner.add_argument("--inner-address", help="the host's fixed address inside the tunnel "
                       "(configured on the host)")
    inner.add_argument("--pool", help="prefix the gateway hands the host a virtual IP "
                       "address from")
    rwa.add_argument("--prefix", action="append", default=[], help="network behind the "
                     "gateway (default: its protected prefixes)")
    rwa.add_argument("--profile", default="default", help="crypto profile")
    rwe = rw.add_parser("export", help="write the host's credential bundle (swanctl.conf, "
                        "key, certificate, CA certificate) for 'swanctl --load-all'")
    rwe.add_argument("name")
    rwe.add_argument("--out", type=Path, required=True, help="directory to write")
    rw.add_parser("list", help="road warriors and whether they are connected")
    rwr = rw.add_parser("remove", help="remove a road warrior (its identity stops "
                        "authenticating at the gateway)")
    rwr.add_argument("name")

    prof = sub.add_parser("profile", help="crypto profiles (shared by policies)"
                          ).add_subparsers(dest="sub", metavar="ACTION", required=True)
    ps = prof.add_parser("set", help="create or change a profile: every policy using it is "
                         "re-created with the new settings")
    ps.add_argument("name")
    ps.add_argument("--encryption", choices=sorted(ENCRYPTION))
    ps.add_argument("--key-length", type=int, help="key length in bits (0 with null)")
    ps.add_argument("--integrity", choices=sorted(INTEGRITY))
    ps.add_argument("--soft-time", type=int, help="soft lifetime (s)")
    ps.add_argument("--hard-time", type=int, help="hard lifetime (s)")
    prof.add_parser("list", help="crypto profiles")

    grp = sub.add_parser("group", help="policy groups (full mesh of NSFs)").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    ga = grp.add_parser("add", help="create or replace a group: one policy per pair of "
                        "members, named GROUP:NSF1:NSF2")
    ga.add_argument("name")
    ga.add_argument("--member", "-m", action="append", required=True, help="member NSF "
                    "(repeatable, at least two)")
    ga.add_argument("--profile", default="default", help="crypto profile (default 'default')")
    grp.add_parser("list", help="groups, members and the status of their policies")
    gd = grp.add_parser("delete", help="delete a group and its policies")
    gd.add_argument("name")

    pol = sub.add_parser("policy", help="flow protection policies").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    pa = pol.add_parser("apply", help="create or replace a policy between two NSFs")
    pa.add_argument("name")
    pa.add_argument("-a", "--endpoint-a", required=True, help="NSF of end a")
    pa.add_argument("-b", "--endpoint-b", required=True, help="NSF of end b")
    pa.add_argument("--a-prefix", action="append", default=[], help="prefix of end a "
                    "(default: the NSF's protected prefixes)")
    pa.add_argument("--b-prefix", action="append", default=[], help="prefix of end b")
    pa.add_argument("--profile", default="default", help="crypto profile (created with "
                    "the options below if it does not exist; an existing one is never "
                    "changed here, see 'profile set'; default 'default')")
    pa.add_argument("--encryption", choices=sorted(ENCRYPTION), help="profile encryption")
    pa.add_argument("--key-length", type=int, help="profile key length in bits (0 with "
                    "--encryption null, which implies it)")
    pa.add_argument("--integrity", choices=sorted(INTEGRITY), help="profile integrity")
    pa.add_argument("--soft-time", type=int, help="this policy's soft lifetime (s): rekey "
                    "before it (overrides the profile's for this policy only)")
    pa.add_argument("--hard-time", type=int, help="this policy's hard lifetime (s)")
    pa.add_argument("--mode", choices=["tunnel", "transport"], default="tunnel")
    pa.add_argument("--protocol", default="any", help="inner protocol number or 'any'")
    pa.add_argument("--on-demand", action="store_true",
                    help="install SPD entries only; create SAs on the first sadb-acquire")
    pa.add_argument("--ike", choices=["psk", "certificate"],
                    help="IKE case: the NSFs negotiate with IKEv2, authenticated by a "
                    "generated pre-shared key or by certificates from the controller's CA")
    pa.add_argument("--psk-file", help="IKE case: pre-shared key file on the controller host "
                    "instead of a generated key")
    pol.add_parser("list", help="list policies with status and generation")
    sh = pol.add_parser("show", help="a policy's configuration, status and SAs")
    sh.add_argument("name")
    d = pol.add_parser("delete", help="delete a policy (removed from both NSFs)")
    d.add_argument("name")
    rk = pol.add_parser("rekey", help="rekey a policy now (make-before-break)")
    rk.add_argument("name")

    sa = sub.add_parser("sa", help="security associations").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    sl = sa.add_parser("list", help="every SA on every NSF (SPI, direction, age, next rekey)")
    sl.add_argument("--policy", help="only this policy's SAs")

    sub.add_parser("status", help="controller overview: NSF sessions, policies")
    rs = sub.add_parser("resync", help="rewrite an NSF's entries from the controller's store")
    rs.add_argument("nsf")
    from controller import cli_setup

    cli_setup.add_parsers(sub)
    from controller import cli_sfc

    cli_sfc.add_parsers(sub)
    kg = sub.add_parser("keygen", help="write a new ed25519 SSH key (for the controller's "
                        "logins to agents, or an agent's host key) and print its public key",
                        description="Write an OpenSSH ed25519 private key to PATH (mode "
                        "0600) and its public key to PATH.pub; print the public key line "
                        "(what 'nsf add --host-key' or an agent's authorized_keys want).")
    kg.add_argument("path", type=Path)
    kg.add_argument("--public", action="store_true",
                    help="only print the public key of an existing private key at PATH")
    _script_options(sub)
    return p


JSON_COMMANDS = {("nsf", "list"), ("policy", "list"), ("policy", "show"), ("sa", "list"),
                 ("roadwarrior", "list"), ("profile", "list"), ("group", "list"),
                 ("status", None)}
WAIT_COMMANDS = {("nsf", "add"), ("nsf", "remove"), ("policy", "apply"), ("policy", "delete"),
                 ("policy", "rekey"), ("group", "add"), ("group", "delete"),
                 ("roadwarrior", "remove"), ("resync", None)}


def _script_options(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """--json / --wait --timeout --quiet also after the command (`policy list --json`);
    SUPPRESS keeps a value given before the command."""
    for cmd, parser in sub.choices.items():
        leaves: dict[str | None, argparse.ArgumentParser] = {None: parser}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                leaves = dict(action.choices)
        for name, leaf in leaves.items():
            if (cmd, name) in JSON_COMMANDS:
                leaf.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                                  help="print JSON")
            if (cmd, name) in WAIT_COMMANDS:
                leaf.add_argument("--wait", action="store_true", default=argparse.SUPPRESS,
                                  help="block until done on the NSFs (progress on stderr); "
                                  "exit 1 if it failed, 3 on timeout")
                leaf.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                                  help="--wait limit in seconds (default 120)")
                leaf.add_argument("--quiet", "-q", action="store_true",
                                  default=argparse.SUPPRESS, help="no progress output")


# ---- serve --------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"i2nsf-controller: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format == "json")
    if not cfg.users:
        log.warning("no [[users]] configured: nobody can use the northbound interface")
    return asyncio.run(_serve(cfg, args.ready_file))


async def _serve(cfg: Any, ready_file: str | None) -> int:
    from controller.server import ControllerServer

    ctl = ControllerServer(cfg)
    await serve_until_signalled(ctl.start, ctl.stop, lambda: ctl.port, ready_file)
    # HA (docs/ha.md): an instance that lost its lease exits non-zero, so that systemd's
    # Restart=on-failure brings it back as a standby
    return 75 if ctl.ha is not None and ctl.ha.lost_lease else 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    import asyncssh

    path: Path = args.path
    if args.public:
        try:
            key = asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            print(f"i2nsf-controller: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        print(key.export_public_key().decode().strip())
        return 0
    if path.exists():
        print(f"i2nsf-controller: {path} exists; not overwriting", file=sys.stderr)
        return 1
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    pub = key.export_public_key().decode().strip()
    Path(f"{path}.pub").write_text(pub + "\n")
    print(pub)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "keygen":
        return _cmd_keygen(args)
    if args.command in ("init-config", "install-unit"):
        from controller import cli_setup

        return (cli_setup.cmd_init_config(args) if args.command == "init-config"
                else cli_setup.cmd_install_unit(args))
    if args.command == "sfc":
        from controller import cli_sfc
        from controller.cli_client import run_client_with

        return run_client_with(args, cli_sfc.run)
    from controller.cli_client import run_client

    try:
        return run_client(args)
    except CliError as exc:
        print(f"i2nsf-controller: error: {exc}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
