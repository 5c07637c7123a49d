"""The xfrm applier end to end below NETCONF: RFC 9061 ikeless edits through the datastore
layer into a network namespace's kernel SPD, checked against `ip xfrm policy show`."""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent.appliers.xfrm import PRIORITY_BASE, XfrmApplier, port_blocks
from nsf_agent.ikeless import PortRange
from nsf_agent.xfrm.iptext import ip_xfrm, parse_policies

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc9061"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{IKELESS}}}"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to create network namespaces",
)


def test_port_blocks_cover_exactly_the_range() -> None:
    for start, end in [(23, 23), (0, 65535), (1000, 1999), (1, 1024), (65535, 65535)]:
        covered = set()
        for port, mask in port_blocks(PortRange(start, end)):
            size = (~mask & 0xFFFF) + 1 if mask else 65536
            covered |= set(range(port, port + size))
        assert covered == set(range(start, end + 1))


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context())


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"i2a-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def ds(schema: YangSchema, netns: str, tmp_path: Path) -> Iterator[Datastores]:
    ap = XfrmApplier(netns, state_dir=tmp_path)
    store = Datastores(schema, [ap], state_dir=tmp_path)
    yield store
    ap.close()


def example(without_sad: bool = True) -> etree._Element:
    root = etree.parse(str(DATA / "ikeless-g2g-gw1.xml")).getroot()
    if without_sad:
        root.remove(root.find(Q + "sad"))
    cfg = etree.Element(f"{{{NC_NS}}}config", nsmap={None: NC_NS})
    cfg.append(root)
    return cfg


def kernel(netns: str) -> list[dict]:
    return parse_policies(ip_xfrm(netns, "policy"))


def summary(netns: str) -> set[tuple]:
    out = set()
    for p in kernel(netns):
        sel = p["sel"]
        t = p.get("tmpl") or []
        out.add((
            p["dir"], sel["src"], sel["dst"], sel.get("proto"), sel.get("sport"),
            sel.get("dport"), p["action"], p["priority"],
            tuple((x["src"], x["dst"], x["mode"], x["reqid"]) for x in t),
        ))
    return out


EXPECTED = {
    # telnet discard: inbound, so IN and FWD, selector remote → local
    ("in", "203.0.113.0/24", "192.0.2.0/24", "tcp", None, 23, "block", PRIORITY_BASE, ()),
    ("fwd", "203.0.113.0/24", "192.0.2.0/24", "tcp", None, 23, "block", PRIORITY_BASE, ()),
    ("in", "203.0.113.0/24", "192.0.2.0/24", None, None, None, "allow", PRIORITY_BASE + 1,
     (("198.51.100.2", "198.51.100.1", "tunnel", 1),)),
    ("fwd", "203.0.113.0/24", "192.0.2.0/24", None, None, None, "allow", PRIORITY_BASE + 1,
     (("198.51.100.2", "198.51.100.1", "tunnel", 1),)),
    ("out", "192.0.2.0/24", "203.0.113.0/24", None, None, None, "allow", PRIORITY_BASE + 2,
     (("198.51.100.1", "198.51.100.2", "tunnel", 2),)),
}


def test_spd_entries_become_exactly_these_policies(ds: Datastores, netns: str) -> None:
    ds.edit_config("running", example())
    assert summary(netns) == EXPECTED


def test_delete_and_replace(ds: Datastores, netns: str) -> None:
    ds.edit_config("running", example())
    delete = etree.fromstring(
        f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS}"><spd>'
        f'<spd-entry xmlns:nc="{NC_NS}" nc:operation="delete">'
        "<name>in/tunnel/203.0.113.0-24/192.0.2.0-24/telnet</name></spd-entry>"
        "</spd></ipsec-ikeless></config>")
    ds.edit_config("running", delete)
    got = summary(netns)
    assert not any(p[6] == "block" for p in got)
    assert len(got) == 3
    # Replace the whole tree with nothing: the kernel SPD is empty again.
    ds.copy_config("running", etree.Element(f"{{{NC_NS}}}config"))
    assert kernel(netns) == []


def test_foreign_policies_are_left_alone(ds: Datastores, netns: str, tmp_path: Path,
                                        schema: YangSchema) -> None:
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "add", "src", "10.9.0.0/16", "dst",
                    "10.8.0.0/16", "dir", "out", "priority", "77", "action", "block"], check=True)
    ds.edit_config("running", example())
    ds.copy_config("running", etree.Element(f"{{{NC_NS}}}config"))
    left = kernel(netns)
    assert [p["priority"] for p in left] == [77]


def test_sa_on_kernel_without_esp_fails_cleanly(ds: Datastores, netns: str) -> None:
    ds.edit_config("running", example())
    before_kernel = summary(netns)
    before = ds.serialize("running")
    cfg = example(without_sad=False)
    has_esp = subprocess.run(
        ["ip", "-n", netns, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
         "proto", "esp", "spi", "0x1000", "mode", "tunnel", "aead", "rfc4106(gcm(aes))",
         "0x" + "11" * 20, "128"], capture_output=True).returncode == 0
    if has_esp:
        pytest.skip("this kernel has ESP; the VM tests cover SAs")
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg)
    assert "kernel lacks" in ei.value.message and "ESP" in ei.value.message
    assert "sad-entry" in (ei.value.path or "")
    assert ds.serialize("running") == before
    assert summary(netns) == before_kernel
    assert "src" not in ip_xfrm(netns, "state")


def test_failing_entry_rolls_back_the_whole_batch(ds: Datastores, netns: str) -> None:
    # A foreign policy that collides with the *last* SPD entry makes its NEWPOLICY fail
    # (EEXIST) after the others were sent: all of them must be undone.
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "add", "src", "192.0.2.0/24", "dst",
                    "203.0.113.0/24", "dir", "out", "priority", "5"], check=True)
    before = ds.serialize("running")
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", example())
    assert "out/tunnel/192.0.2.0-24/203.0.113.0-24" in ei.value.message
    assert ds.serialize("running") == before
    assert [p["priority"] for p in kernel(netns)] == [5]


def test_restart_reconciles(schema: YangSchema, netns: str, tmp_path: Path) -> None:
    ap = XfrmApplier(netns, state_dir=tmp_path)
    store = Datastores(schema, [ap], state_dir=tmp_path)
    store.edit_config("running", example())
    ap.close()
    # While the agent is down: one of our policies vanishes, a stray one of ours appears,
    # and a foreign one is added.
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "delete", "src", "192.0.2.0/24",
                    "dst", "203.0.113.0/24", "dir", "out"], check=True)
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "add", "src", "10.1.0.0/16", "dst",
                    "10.2.0.0/16", "dir", "in", "priority", str(PRIORITY_BASE + 40)], check=True)
    subprocess.run(["ip", "-n", netns, "xfrm", "policy", "add", "src", "10.3.0.0/16", "dst",
                    "10.4.0.0/16", "dir", "in", "priority", "9"], check=True)
    ap2 = XfrmApplier(netns, state_dir=tmp_path)
    store2 = Datastores(schema, [ap2], state_dir=tmp_path)
    store2.reconcile()
    got = summary(netns)
    ap2.close()
    ours = {p for p in got if p[7] >= PRIORITY_BASE}
    assert ours == EXPECTED
    assert {p[7] for p in got if p[7] < PRIORITY_BASE} == {9}


def test_edits_keep_copies_independent(ds: Datastores) -> None:
    cfg = example()
    snapshot = etree.tostring(cfg)
    ds.edit_config("running", copy.deepcopy(cfg))
    assert etree.tostring(cfg) == snapshot
