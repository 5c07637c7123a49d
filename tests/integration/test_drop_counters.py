"""Issue #24.4: every reason the userspace data path drops an inbound ESP packet is counted on
its own in `get` (i2nsf-sadb sa-drops and sadb-statistics), a wrong next header is not a
received packet, unknown SPIs are shown, and RFC 9061's packet-dropped/failed mean replays /
outside the window. Crafted packets are sent from gateway A's namespace to gateway B's data
path over a raw ESP socket."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from test_userspace_applier import KEY_AB, Gateway, side_config

from netconf_core.polling import wait_until
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent.userspace.esp import SaState, build_ip_packet
from nsf_agent.userspace.model import Direction, EncAlg, Mode, SaConfig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces, TUN and raw sockets",
)

IK = "{urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless}"
SB = "{urn:i2nsf-sdn:yang:i2nsf-sadb}"


@pytest.fixture
def gw_b(tmp_path: Path) -> Iterator[tuple]:
    from nsf_agent.userspace.lab import Lab, unique_prefix

    lab = Lab(unique_prefix("i2dc"))
    g: Gateway | None = None
    try:
        lab.build(gro=False)
        schema = YangSchema(create_context([*IPSEC_MODULES, "i2nsf-sadb"]))
        g = Gateway(schema, lab.gw_b, tmp_path / "b")
        g.ds.edit_config("running", side_config("b"))
        yield lab, g, schema
    finally:
        if g is not None:
            g.stop(datapath=True)
        lab.destroy()


def sender_sa() -> SaState:
    """Gateway A's outbound SA as B expects it (spi 0x1001, KEY_AB)."""
    from nsf_agent.userspace.lab import GW_A, GW_B

    return SaState(SaConfig(name="x", spi=0x1001, direction=Direction.OUTBOUND,
                            src=ipaddress.ip_address(GW_A), dst=ipaddress.ip_address(GW_B),
                            mode=Mode.TUNNEL, enc_alg=EncAlg.AES_GCM_16,
                            enc_key=bytes.fromhex(KEY_AB), reqid=1))


def counters(g: Gateway, schema: YangSchema) -> tuple[dict[str, int], dict[str, int]]:
    data = g.ds.get_state()
    # the state is what YANG says (names and types of every leaf)
    for top in data:  # (the <data> wrapper is NETCONF's, not a YANG node)
        schema.ctx.parse_data_mem(etree.tostring(top).decode(), "xml", strict=True,
                                  parse_only=True).free()
    sa: dict[str, int] = {}
    for e in data.iter(IK + "sad-entry"):
        if e.findtext(IK + "name") == "sa-in":
            st = e.find(IK + "ipsec-sa-state")
            sa["packets"] = int(st.findtext(f"{IK}sa-lifetime-current/{IK}packets"))
            sa["packet-dropped"] = int(st.findtext(f"{IK}replay-stats/{IK}packet-dropped"))
            sa["failed"] = int(st.findtext(f"{IK}replay-stats/{IK}failed"))
            for leaf in st.find(SB + "sa-drops"):
                sa[etree.QName(leaf).localname] = int(leaf.text)
    glob = {etree.QName(leaf).localname: int(leaf.text)
            for leaf in data.find(SB + "sadb-statistics")}
    return sa, glob


def test_each_drop_reason_is_counted_apart(gw_b) -> None:
    from nsf_agent.userspace.lab import GW_B, HOST_A, HOST_B

    lab, g, schema = gw_b
    tx = sender_sa()
    inner = build_ip_packet(ipaddress.ip_address(HOST_A), ipaddress.ip_address(HOST_B), 17,
                            b"\x30\x39\x00\x09\x00\x0c\x00\x00data")
    good = tx.seal(inner, 4)  # seq 1
    bad_icv = bytearray(tx.seal(inner, 4))  # seq 2, tag broken
    bad_icv[-1] ^= 1
    wrong_nh = tx.seal(inner[20:], 6)  # seq 3: authentic, but TCP is no tunnel payload
    unknown = b"\x00\x00\x99\x99" + good[4:]
    tx.seq = 10
    far = tx.seal(inner, 4)  # seq 11
    tx.seq = 200
    top = tx.seal(inner, 4)  # seq 201: the window (64) now starts at 138
    tx.seq = 10
    left = tx.seal(inner, 4)  # seq 11 again... left of the window once 201 arrived
    s = lab.socket_in(lab.gw_a, socket.AF_INET, socket.SOCK_RAW, 50)
    try:
        for pkt in (good, good, bytes(bad_icv), wrong_nh, unknown, far, top, left):
            s.sendto(pkt, (GW_B, 0))
    finally:
        s.close()

    def arrived() -> bool:
        sa, glob = counters(g, schema)
        return glob.get("unknown-spi", 0) >= 1 and sa.get("packets", 0) >= 3 \
            and sa.get("failed", 0) >= 1
    wait_until(arrived, 10, "the crafted packets at gateway B", interval=0.05)
    sa, glob = counters(g, schema)
    assert sa["packets"] == 3  # good, far, top: the wrong next header is not a packet
    assert sa["wrong-next-header"] == 1
    assert sa["integrity-failed"] == 1
    assert sa["replay"] == 2  # the duplicate and the one left of the window
    assert sa["packet-dropped"] == 2 and sa["failed"] == 1  # RFC 9061: replays / window
    assert sa["bad-padding"] == 0 and sa["malformed"] == 0
    assert glob["unknown-spi"] == 1
    assert glob["integrity-failed"] == 1 and glob["wrong-next-header"] == 1
    assert glob["replay"] == 2



def test_kernel_drop_counters_are_served(tmp_path: Path) -> None:
    """The xfrm applier serves the namespace's /proc/net/xfrm_stat as sadb-statistics (Linux
    counts drops per namespace; counting itself is checked on a kernel with ESP, in
    tests/kernel/test_applier_drops.py)."""
    import secrets
    import subprocess

    from nsf_agent.appliers.xfrm import XfrmApplier

    ns = f"i2dk-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    ap = None
    try:
        ap = XfrmApplier(ns, state_dir=tmp_path)
        got = {etree.QName(x).localname: int(x.text) for x in ap.state(etree.Element("d"))[0]}
        assert set(got) == {"unknown-spi", "integrity-failed", "replay", "wrong-next-header",
                            "malformed", "policy-violation", "no-sa", "discarded",
                            "sequence-overflow"}
    finally:
        if ap is not None:
            ap.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
