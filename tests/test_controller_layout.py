"""The controller's layers (issue 15, docs/architecture.md): one-way dependencies, no import
circles, small modules.

    nsf_agent  ←  netconf_core (incl. netconf_core.i2nsf, the shared vocabulary)  →  controller
    controller.core  ←  controller.ipsec, controller.sfc

The import graph is read from the source with `ast` (every import, also those inside
functions and `TYPE_CHECKING` blocks: a lazy import is still a dependency), and the runtime
check imports each package in a fresh interpreter and looks at what got loaded.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 650  # "modules under ~600 lines"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    """Modules `path` imports (absolute names; `from pkg import mod` counts as pkg.mod when
    pkg.mod is a module of the tree)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    files = {_module_name(p): p for pkg in packages for p in (ROOT / pkg).rglob("*.py")}
    return {m: {i for i in _imports(p, m) if i in files and i != m} for m, p in files.items()}


GRAPH = _graph(("controller", "netconf_core", "nsf_agent"))


def _deps(prefix: str) -> dict[str, set[str]]:
    return {m: d for m, d in GRAPH.items() if m == prefix or m.startswith(prefix + ".")}


def _bad(prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{m} imports {d}" for m, deps in _deps(prefix).items() for d in deps
                  if any(d == f or d.startswith(f + ".") for f in forbidden))


def test_graph_sees_the_packages() -> None:
    # guard against a graph that checks nothing (a broken walk would pass every test)
    assert "controller.ipsec.translate" in GRAPH["controller.ipsec.service"] | {
        d for m in ("controller.ipsec.batching", "controller.ipsec.events")
        for d in GRAPH[m]}
    assert "controller.core.store" in GRAPH["controller.ipsec.service"]
    assert "netconf_core.i2nsf.algorithms" in GRAPH["nsf_agent.ikeless"]
    assert "netconf_core.i2nsf.proposals" in GRAPH["nsf_agent.ike.translate"]
    assert "controller.sfc" in GRAPH


def test_controller_never_imports_the_agent() -> None:
    assert _bad("controller", ("nsf_agent",)) == []


def test_controller_does_not_even_name_the_agent_package() -> None:
    # (issue 15's acceptance: `grep -rn nsf_agent controller/` finds nothing)
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "controller").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if "nsf_agent" in line]
    assert hits == []


def test_the_agent_never_imports_the_controller() -> None:
    assert _bad("nsf_agent", ("controller",)) == []


def test_shared_package_imports_neither_side() -> None:
    assert _bad("netconf_core", ("controller", "nsf_agent")) == []


def test_core_never_imports_a_service() -> None:
    assert _bad("controller.core", ("controller.ipsec", "controller.sfc", "controller.cli",
                                    "controller.server", "controller.config")) == []


def test_services_do_not_import_each_other_or_the_wiring() -> None:
    assert _bad("controller.ipsec", ("controller.sfc", "controller.cli", "controller.server",
                                     "controller.config")) == []
    assert _bad("controller.sfc", ("controller.ipsec", "controller.cli", "controller.server",
                                   "controller.config")) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_the_controller() -> None:
    assert _cycles(_deps("controller")) == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_controller_modules_are_small() -> None:
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "controller").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


@pytest.mark.parametrize(("module", "must_not_load"), [
    ("controller.core", ("controller.ipsec", "controller.sfc", "nsf_agent")),
    ("controller.core.engine", ("controller.ipsec", "controller.sfc", "nsf_agent")),
    ("controller.ipsec.service", ("controller.sfc", "nsf_agent")),
    ("controller.sfc", ("controller.ipsec", "nsf_agent")),
    ("controller.server", ("nsf_agent",)),
    ("controller.cli", ("nsf_agent",)),
    ("netconf_core.i2nsf.proposals", ("controller", "nsf_agent")),
    ("nsf_agent.ikeless", ("controller",)),
    ("nsf_agent.ike.translate", ("controller",)),
])
def test_each_package_imports_alone(module: str, must_not_load: tuple[str, ...]) -> None:
    code = (f"import sys, {module}\n"
            "print('\\n'.join(sorted(sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=60, check=True).stdout.split()
    assert module in out
    assert [m for m in out if any(m == p or m.startswith(p + ".") for p in must_not_load)] == []
