"""Edits that only change leaf values are checked value by value (libyang's type check) when
no constraint reads those leaves; the verdict must always be the one a full parse and
validation gives. A small module with every kind of dependency (must, when, unique,
leafref) is edited at random, side by side with a datastore that never builds incrementally.
"""

from __future__ import annotations

import random
from pathlib import Path

import libyang
import pytest
from datastore_oracle import assert_trees_match_texts, count_rebuilds, edit_both
from lxml import etree

from netconf_core.datastore import Datastores
from netconf_core.dependencies import expression_names, referenced_names
from netconf_core.errors import RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
NS = "urn:example:deps"

MODULE = """
module deps {
  yang-version 1.1;
  namespace "urn:example:deps";
  prefix d;
  container top {
    list item {
      key name;
      unique "tag";
      leaf name { type string; }
      leaf free { type uint8; }
      leaf limit { type uint8; default 100; }
      leaf used { type uint8; must ". <= ../limit"; }
      leaf tag { type string { length "1..4"; } }
      leaf peer { type leafref { path "../../item/name"; } }
      leaf mode { type enumeration { enum a; enum b; } default a; }
      container extra {
        when "../mode = 'b'";
        leaf x { type uint8; default 1; }
        leaf y { type uint8; }
      }
    }
  }
}
"""

OPAQUE = MODULE.replace('must ". <= ../limit";', 'must "count(../*) > 1";')


def make_schema(tmp: Path, text: str) -> YangSchema:
    (tmp / "deps.yang").write_text(text)
    ctx = libyang.Context(str(tmp))
    ctx.load_module("deps")
    return YangSchema(ctx)


@pytest.fixture
def schema(tmp_path: Path) -> YangSchema:
    return make_schema(tmp_path, MODULE)


def leaf(schema: YangSchema, *names: str):  # type: ignore[no-untyped-def]
    sn = None
    for n in names:
        sn = schema.lookup(sn, f"{{{NS}}}{n}")
    return sn


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return count_rebuilds(monkeypatch)


def test_expression_names() -> None:
    assert expression_names("../mode = 'tunnel'", False) == {"mode"}
    assert expression_names(". >= ../start", True) == {"start"}
    assert expression_names("current()/../x = 1.5", False) == {"x"}
    assert expression_names("../auth[.='a' or .='b']", False) == {"auth", "or"}
    assert expression_names("'..' = ../x", False) == {"x"}  # literals are not paths
    for opaque in ("count(../*) > 1", "../a//b", "count(..) > 1", ". != ''",
                   "current() = 'x'", "text() = 'a'", "deref(.)/../x", "child::x"):
        assert expression_names(opaque, False) is None, opaque


def test_which_leaves_change_in_place(schema: YangSchema, tmp_path: Path) -> None:
    item = ("top", "item")
    assert schema.value_in_place(leaf(schema, *item, "free"))
    assert schema.value_in_place(leaf(schema, *item, "extra", "y"))
    for name in ("limit", "tag", "mode"):  # named by a must, a unique, a when
        assert not schema.value_in_place(leaf(schema, *item, name)), name
    assert not schema.value_in_place(leaf(schema, *item, "used"))  # has a must of its own
    assert not schema.value_in_place(leaf(schema, *item, "peer"))  # leafref
    assert not schema.value_in_place(leaf(schema, *item, "name"))  # a leafref path names it
    other = tmp_path / "opaque"
    other.mkdir()
    opaque = make_schema(other, OPAQUE)
    assert referenced_names(opaque.ctx) is None
    assert not opaque.value_in_place(leaf(opaque, *item, "free"))


def cfg(body: str) -> etree._Element:
    return etree.fromstring(f'<config xmlns="{NC}" xmlns:nc="{NC}"><top xmlns="{NS}">{body}'
                            "</top></config>".encode())


LEAVES = {
    "free": ["0", "7", "+8", "255", "256", "x"],
    "limit": ["5", "50", "200"],
    "used": ["3", "60", "150"],
    "tag": ["a", "b", "abcd", "abcde"],
    "peer": ["i0", "i1", "i5"],
    "mode": ["a", "b", "c"],
}


def random_edit(rnd: random.Random) -> str:
    name = f"i{rnd.randrange(4)}"
    k = rnd.randrange(7)
    if k == 0:
        return f'<item nc:operation="remove"><name>{name}</name></item>'
    if k == 1:
        return (f"<item><name>{name}</name><extra><y>{rnd.choice(['1', '2', '300'])}</y>"
                "</extra></item>")
    if k == 2:  # only a leaf nothing reads
        return f"<item><name>{name}</name><free>{rnd.choice(LEAVES['free'])}</free></item>"
    if k == 3:  # an entry with every leaf nothing reads
        return (f'<item nc:operation="replace"><name>{name}</name><free>1</free>'
                "<mode>b</mode><extra><y>1</y></extra></item>")
    leaves = rnd.sample(sorted(LEAVES), rnd.randrange(1, 3))
    return f"<item><name>{name}</name>" + "".join(
        f"<{n}>{rnd.choice(LEAVES[n])}</{n}>" for n in leaves) + "</item>"


@pytest.mark.parametrize("target", ["running", "candidate"])
def test_values_in_place_give_full_validation_verdicts(
        schema: YangSchema, counted: dict[str, int], target: str) -> None:
    inc, ref = Datastores(schema), Datastores(schema)
    rnd = random.Random(20261124)
    for _ in range(500):
        body = random_edit(rnd)
        edit_both(inc, ref, counted, target, lambda body=body: cfg(body), body)
        assert_trees_match_texts(inc)
        if target == "candidate" and rnd.random() < 0.2:
            inc.commit()
            ref.commit()
    assert counted["values_only"] > 30, counted  # the value-by-value path really ran
    assert counted["used"] > counted["values_only"]


def test_a_value_edit_that_breaks_nothing_else_is_checked_by_type(
        schema: YangSchema, counted: dict[str, int]) -> None:
    ds = Datastores(schema)
    ds.edit_config("running", cfg("<item><name>i0</name><free>1</free><used>5</used></item>"))
    ds.edit_config("running", cfg("<item><name>i0</name><free>2</free></item>"))
    assert counted["values_only"] == 1
    before = ds.serialize("running")
    with pytest.raises(RpcError) as err:
        ds.edit_config("running", cfg("<item><name>i0</name><free>256</free></item>"))
    assert err.value.error_tag == "invalid-value"
    assert ds.serialize("running") == before
    with pytest.raises(RpcError):  # limit is read by used's must: validated in full
        ds.edit_config("running", cfg("<item><name>i0</name><limit>4</limit></item>"))
    assert ds.serialize("running") == before
    assert counted["values_only"] == 1


def test_ikeless_rekey_values_change_in_place() -> None:
    schema = YangSchema(create_context(["ietf-i2nsf-ikeless"]))
    config = ("ipsec-ikeless", "sad", "sad-entry", "ipsec-sa-config")
    ns = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
    sn = None
    for n in config:
        sn = schema.lookup(sn, f"{{{ns}}}{n}")
    for name, expected in (("spi", True), ("anti-replay-window-size", True),
                           ("mode", False), ("protocol-parameters", False)):
        assert schema.value_in_place(schema.lookup(sn, f"{{{ns}}}{name}")) is expected, name
