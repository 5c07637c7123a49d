"""`i2nsf-agent`: start the NSF agent."""

from __future__ import annotations

import argparse
import sys

from netconf_core import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-agent",
        description="I2NSF NSF agent: a NETCONF server applying RFC 9061 configuration "
        "to this host's IPsec data plane.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("i2nsf-agent: the NETCONF server is not built yet (see the NETCONF core issue).",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
