"""`python -m nsf_agent.sfc.fastpath build|check`: compile into the cache / report availability."""

import sys

from . import build
from .fastpath import FastPath


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "check"
    if cmd == "build":
        try:
            print(build.object_path())
        except build.BuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if cmd == "check":
        ok, why = FastPath.available()
        print(why)
        return 0 if ok else 1
    print("usage: python -m nsf_agent.sfc.fastpath build|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
