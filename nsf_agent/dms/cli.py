"""`i2nsf-dms`: run the Developer's Management System (its own NETCONF server creating and
removing security function instances on this host)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from netconf_core import __version__
from netconf_core.configfile import ConfigError
from netconf_core.daemon import serve_until_signalled, setup_logging
from nsf_agent.dms.config import load_config

log = logging.getLogger("nsf_agent.dms")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-dms",
        description="Developer's Management System: a NETCONF server (YANG i2nsf-dms) that "
        "creates and removes security function instances (network namespace, veths, the "
        "function's process and rules) and registers them with the controller's SFC "
        "Catalog Manager. See docs/security-functions.md.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("-c", "--config", type=Path, required=True, help="TOML configuration")
    p.add_argument("--host", help="listen address; overrides [server] host")
    p.add_argument("--port", type=int, help="listen port (0 = any free port)")
    p.add_argument("--state-dir", type=Path, help="overrides [server] state_dir")
    p.add_argument("--ready-file", metavar="PATH",
                   help="write the bound port to PATH once the server accepts connections")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    p.add_argument("--log-format", choices=["text", "json"], default=None,
                   help="text (default) or json (= --log-json), as the other daemons")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from nsf_agent.dms.server import Dms

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"i2nsf-dms: {exc}", file=sys.stderr)
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
