"""The libyang tree built incrementally (copy of the old tree + changed list entries) must
equal a full parse of the edited tree, edit after edit, and must not hide any error."""

from __future__ import annotations

import random

import pytest
from datastore_oracle import assert_trees_match_texts, count_rebuilds, edit_both
from lxml import etree

from netconf_core.datastore import Datastores
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context(["ietf-i2nsf-ikeless"]))


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    return count_rebuilds(monkeypatch)


def cfg(body: str) -> etree._Element:
    return etree.fromstring(
        f'<config xmlns="{NC}" xmlns:nc="{NC}"><ipsec-ikeless xmlns="{IKELESS}">{body}'
        "</ipsec-ikeless></config>".encode())


def sad_entry(name: str, spi: int, extra: str = "", op: str = "") -> str:
    return (f"<sad><sad-entry{op}><name>{name}</name><reqid>{spi % 7 + 1}</reqid>"
            f"<ipsec-sa-config><spi>{spi}</spi>{extra}<traffic-selector>"
            "<local-prefix>198.51.100.1/32</local-prefix><remote-prefix>198.51.100.2/32"
            "</remote-prefix><inner-protocol>any</inner-protocol></traffic-selector>"
            "<protocol-parameters>esp</protocol-parameters><mode>transport</mode>"
            "</ipsec-sa-config></sad-entry></sad>")


def spd_entry(name: str, ports: list[int], op: str = "") -> str:
    rp = "".join(f"<remote-ports><start>{p}</start><end>{p + 5}</end></remote-ports>"
                 for p in ports)
    return (f"<spd><spd-entry{op}><name>{name}</name><direction>outbound</direction>"
            "<reqid>1</reqid><ipsec-policy-config><traffic-selector>"
            "<local-prefix>10.0.0.1/32</local-prefix><remote-prefix>10.0.0.2/32</remote-prefix>"
            f"<inner-protocol>6</inner-protocol>{rp}</traffic-selector><processing-info>"
            "<action>bypass</action></processing-info></ipsec-policy-config></spd-entry></spd>")


# New values for leaves an entry may have already (libyang changes them in place): other
# types, non-canonical and invalid forms, and the leaves that `when` conditions read.
LEAF_VALUES = [
    ("spi", ["300", "+301", "0302", "4294967295", "4294967296", "-1", "x"]),
    ("ext-seq-num", ["true", "false", "yes"]),
    ("anti-replay-window-size", ["32", " 64 ", "128"]),
    ("traffic-selector/local-prefix",
     ["198.51.100.7/32", "2001:db8::1/128", "2001:DB8::2/128", "300.1.1.1/32"]),
    ("traffic-selector/inner-protocol", ["any", "6", "17", "256", "tcp"]),
    ("mode", ["transport", "tunnel"]),
    ("protocol-parameters", ["esp", "ah"]),
    ("esp-sa/encryption/key", ["0a:0b", "0A:0B", "zz"]),
]


def leaf_edit(name: str, leaf: str, value: str) -> str:
    inner = f"<{leaf.rpartition('/')[2]}>{value}</{leaf.rpartition('/')[2]}>"
    for part in reversed(leaf.split("/")[:-1]):
        inner = f"<{part}>{inner}</{part}>"
    return (f"<sad><sad-entry><name>{name}</name><ipsec-sa-config>{inner}</ipsec-sa-config>"
            "</sad-entry></sad>")


TUNNEL = ("<tunnel><local>192.0.2.1</local><remote>192.0.2.2</remote></tunnel>")


def random_edit(rnd: random.Random) -> str:
    name = f"e{rnd.randrange(8)}"
    k = rnd.randrange(12)
    if k >= 10:
        leaf, values = rnd.choice(LEAF_VALUES)
        body = leaf_edit(name, leaf, rnd.choice(values))
        if k == 11:  # two leaves of one entry
            leaf2, values2 = rnd.choice(LEAF_VALUES)
            extra = leaf_edit(name, leaf2, rnd.choice(values2))
            body = body.replace("</ipsec-sa-config>", extra.split("<ipsec-sa-config>")[1]
                                .split("</ipsec-sa-config>")[0] + "</ipsec-sa-config>")
        if "<mode>tunnel" in body and rnd.random() < 0.5:
            body = body.replace("</ipsec-sa-config>", TUNNEL + "</ipsec-sa-config>")
        return body
    if k == 0:
        return f'<sad><sad-entry nc:operation="remove"><name>{name}</name></sad-entry></sad>'
    if k == 1:
        return sad_entry(name, rnd.randrange(256, 10_000), op=' nc:operation="replace"')
    if k == 2:
        return (f"<sad><sad-entry><name>{name}</name><ipsec-sa-config><spi>"
                f"{rnd.randrange(256, 10_000)}</spi></ipsec-sa-config></sad-entry></sad>")
    if k == 3:
        return (f"<sad><sad-entry><name>{name}</name><ipsec-sa-config>"
                '<anti-replay-window-size nc:operation="remove"/></ipsec-sa-config>'
                "</sad-entry></sad>")
    if k == 4:
        return spd_entry(name, rnd.sample(range(1, 60_000, 7), rnd.randrange(0, 3)))
    if k == 5:
        return (f"<spd><spd-entry><name>{name}</name><ipsec-policy-config><traffic-selector>"
                f'<remote-ports nc:operation="remove"><start>{rnd.choice([1, 8, 15])}</start>'
                f"<end>{rnd.choice([6, 13, 20])}</end></remote-ports></traffic-selector>"
                "</ipsec-policy-config></spd-entry></spd>")
    if k == 6:
        return f'<spd><spd-entry nc:operation="remove"><name>{name}</name></spd-entry></spd>'
    if k == 7:  # two entries in one edit, one of them invalid half of the time
        bad = "<anti-replay-window-size>99999999999</anti-replay-window-size>" \
            if rnd.random() < 0.5 else ""
        return sad_entry(name, rnd.randrange(256, 10_000)) + sad_entry(
            f"x{rnd.randrange(3)}", rnd.randrange(256, 10_000), extra=bad)
    if k == 8:  # duplicate SPI across entries, rejected by the model's must/unique rules
        return sad_entry(name, 4242)
    return sad_entry(name, rnd.randrange(256, 10_000),
                     extra=f"<anti-replay-window-size>{rnd.choice([32, 64])}"
                           "</anti-replay-window-size>")


@pytest.mark.parametrize("target", ["running", "candidate"])
def test_incremental_equals_full_parse(schema: YangSchema, counted: dict[str, int],
                                       target: str) -> None:
    inc, ref = Datastores(schema), Datastores(schema)
    rnd = random.Random(20261123)
    errors: list[str] = []
    for _ in range(600):
        body = random_edit(rnd)
        outcome = edit_both(inc, ref, counted, target, lambda body=body: cfg(body), body)
        if outcome is not None:
            errors.append(outcome[0])
        assert_trees_match_texts(inc)
        if target == "candidate" and rnd.random() < 0.2:
            inc.commit()
            ref.commit()
            assert inc.serialize("running") == ref.serialize("running")
            assert_trees_match_texts(inc)
    print("incremental builds", counted["used"], "errors", len(errors), set(errors),
          "values changed in place", counted["values"], "verbatim", counted["verbatim"])
    assert errors
    assert counted["used"] > 100  # the incremental path really ran
    assert counted["values"] > 50  # and so did changing leaf values in place
    assert counted["verbatim"] > 20  # and taking the edited tree's text as it is
