"""The reference the datastore's short cuts are tested against: the same edit on a datastore
that always parses and validates the whole tree (incremental builds switched off)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from lxml import etree

import netconf_core.datastore as datastore
from netconf_core.datastore import Datastores
from netconf_core.errors import RpcError

Outcome = tuple[str, str, str | None] | None


def count_rebuilds(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the incremental builds and their kinds; `off` > 0 disables them (for the
    reference datastore)."""
    real = datastore.rebuild
    stats = {"off": 0, "used": 0, "values": 0, "values_only": 0, "verbatim": 0}

    def rebuild(*a: Any, **kw: Any) -> Any:
        if stats["off"]:
            return None
        built = real(*a, **kw)
        if built is not None:
            stats["used"] += 1
            stats["values"] += bool(a[3].values)
            stats["values_only"] += built.values_only
            stats["verbatim"] += built.verbatim
        return built

    monkeypatch.setattr(datastore, "rebuild", rebuild)
    return stats


def edit_both(inc: Datastores, ref: Datastores, stats: dict[str, int], target: str,
              config: Callable[[], etree._Element], what: str = "") -> Outcome:
    """The edit on both datastores (the reference without short cuts); asserts the same
    outcome (error tag, message and path) and the same resulting text, returns it. `what`
    names the edit in assertion messages."""
    outcome: list[Outcome] = []
    for ds, off in ((inc, 0), (ref, 1)):
        stats["off"] = off
        try:
            ds.edit_config(target, config())
            outcome.append(None)
        except RpcError as err:
            outcome.append((err.error_tag, err.message, err.path))
    stats["off"] = 0
    assert outcome[0] == outcome[1], what
    assert inc.serialize(target) == ref.serialize(target), what
    return outcome[0]


def assert_trees_match_texts(ds: Datastores) -> None:
    """What the datastore keeps beside each text says the same: the lxml tree it takes for
    the text without a compare serializes to it, and the libyang tree kept (and edited in
    place) prints it and equals a fresh parse of it down to the default nodes libyang adds."""
    for name in ("running", "candidate"):
        if ds._is_exact(name):
            assert datastore._clean_children_xml(ds._trees[name]) == ds._current_text(name)
        dn = ds._running_dn if name == "running" else ds._cand_dn
        if dn is None:
            continue
        text = (dn.print_mem("xml", with_siblings=True, pretty=False) or "").encode()
        assert text == ds._current_text(name), name
        fresh = ds.schema.parse_config_xml(text)
        assert fresh is not None
        try:
            assert dn.print_mem("xml", with_siblings=True, include_implicit_defaults=True) \
                == fresh.print_mem("xml", with_siblings=True,
                                   include_implicit_defaults=True), name
        finally:
            fresh.free()
