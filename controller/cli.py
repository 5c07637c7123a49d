"""`i2nsf-controller`: run and drive the I2NSF security controller."""

from __future__ import annotations

import argparse
import sys

from netconf_core import __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-controller",
        description="I2NSF security controller: provisions IPsec flow protection "
        "(RFC 9061) on NSF agents over NETCONF.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print("i2nsf-controller: not built yet (see the controller issue).", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
