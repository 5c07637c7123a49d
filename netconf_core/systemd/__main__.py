"""`python -m netconf_core.systemd {agent,controller,dms} [--dir D] [--print] [--force]`:
render and install a unit (the daemons' `install-unit` commands do the same for theirs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from netconf_core import systemd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netconf_core.systemd")
    p.add_argument("which", choices=sorted(systemd.UNITS))
    p.add_argument("--dir", type=Path, default=systemd.DEFAULT_DIR)
    p.add_argument("--print", action="store_true", dest="print_only")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    if a.print_only:
        print(systemd.render(a.which), end="")
        return 0
    try:
        path = systemd.install(a.which, a.dir, force=a.force)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
