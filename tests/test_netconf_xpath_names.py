"""Unprefixed XPath names (issue 14.4): resolved in the parent step's module, at the top by
the one module whose tree has the path, ambiguous names refused."""

from __future__ import annotations

import shutil

import libyang
import pytest

from netconf_core.errors import RpcError
from netconf_core.xpath_names import resolve
from netconf_core.yang_context import create_context, yang_dir


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> libyang.Context:
    d = tmp_path_factory.mktemp("xp") / "yang"
    shutil.copytree(yang_dir(), d)
    (d / "xa@2026-12-04.yang").write_text(
        'module xa { namespace "urn:xa"; prefix xa; container top { leaf x { type string; } '
        "list e { key k; leaf k { type string; } leaf v { type int8; } } } }")
    (d / "xb@2026-12-04.yang").write_text(
        'module xb { namespace "urn:xb"; prefix xb; container top { container y { '
        "leaf z { type string; } } } container only { leaf x { type string; } } }")
    return create_context(["xa", "xb"], base=d)


def _ns(expr: str, ctx: libyang.Context) -> set[str]:
    _, ns = resolve(expr, {}, ctx)
    return {u for p, u in ns.items() if p != "_ncdata"}


def test_names_follow_their_parent_and_the_path(ctx: libyang.Context) -> None:
    assert _ns("/only/x", ctx) == {"urn:xb"}
    assert _ns("/top/x", ctx) == {"urn:xa"}          # only xa's top has x
    assert _ns("/top/y/z", ctx) == {"urn:xb"}
    assert _ns("/top/e[k='a' and v > 2]/v", ctx) == {"urn:xa"}
    assert _ns("count(/only/x) > 0 or /top/x = 'q'", ctx) == {"urn:xb", "urn:xa"}
    expr, _ = resolve("/top/e[k='a']/v | /only/x", {}, ctx)
    assert expr.count("_ncdata:data") == 2  # each absolute path starts at <data>
    # a module name as prefix needs no declaration; text() and attributes stay as they are
    expr, ns = resolve("/xa:top/e/k/text()", {}, ctx)
    assert ns["xa"] == "urn:xa" and expr.endswith("text()")


def test_ambiguous_and_invalid_names(ctx: libyang.Context) -> None:
    for bad in ("/top", "/top[x='1']", "/nope:top", "/top/e[", "/only/x]"):
        with pytest.raises(RpcError) as ei:
            resolve(bad, {}, ctx)
        assert ei.value.error_tag == "invalid-value", bad
