#!/usr/bin/env bash
# SFC-enabled I2NSF (seed 003) managed by the controller, on network namespaces:
# trust levels, dynamic path alternation with real security functions, a table miss.
# The scenario itself is examples/sfc_demo.py (read it top to bottom); everything it creates
# (namespaces, agents, controller, functions) is torn down at exit.
# Run as root: `make demo` (or `bash examples/sfc_use_cases.sh` after `make setup`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" != 0 ]; then echo "run as root (network namespaces, raw sockets)" >&2; exit 1; fi
[ -x "$ROOT/.venv/bin/python" ] || { echo "run 'make setup' first" >&2; exit 1; }
cd "$ROOT"
PYTHONPATH="$ROOT" exec "$ROOT/.venv/bin/python" examples/sfc_demo.py
