"""Issue #24.3: with a transport-mode policy between two gateways (userspace data path), the
gateway's own traffic to its peer leaves from the address the SA protects (the TUN has no
address: its route carries the SA's local address as preferred source), so pings are
answered; transport mode between networks is refused with an rpc-error."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from test_userspace_applier import Gateway

from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces, TUN and raw sockets",
)

IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
K_AB, K_BA = "c4" * 20, "d5" * 20


def transport_config(side: str, lplen: int = 32) -> etree._Element:
    from nsf_agent.userspace.lab import GW_A, GW_B

    local, remote = (GW_A, GW_B) if side == "a" else (GW_B, GW_A)
    out_spi, in_spi = (0x3001, 0x4002) if side == "a" else (0x4002, 0x3001)
    out_key, in_key = (K_AB, K_BA) if side == "a" else (K_BA, K_AB)

    def hexkey(h: str) -> str:
        return ":".join(h[i:i + 2] for i in range(0, len(h), 2))

    ts = (f"<traffic-selector><local-prefix>{local}/{lplen}</local-prefix>"
          f"<remote-prefix>{remote}/32</remote-prefix></traffic-selector>")

    def spd(name: str, direction: str, reqid: int) -> str:
        return f"""<spd-entry><name>{name}</name><direction>{direction}</direction>
          <reqid>{reqid}</reqid><ipsec-policy-config>{ts}<processing-info>
          <action>protect</action><ipsec-sa-cfg><mode>transport</mode><esp-algorithms>
          <encryption><id>1</id><algorithm-type>20</algorithm-type>
          <key-length>128</key-length></encryption></esp-algorithms></ipsec-sa-cfg>
          </processing-info></ipsec-policy-config></spd-entry>"""

    def sad(name: str, reqid: int, spi: int, key: str) -> str:
        return f"""<sad-entry><name>{name}</name><reqid>{reqid}</reqid><ipsec-sa-config>
          <spi>{spi}</spi>{ts}<mode>transport</mode><esp-sa><encryption>
          <encryption-algorithm>20</encryption-algorithm><key>{hexkey(key)}</key>
          </encryption></esp-sa></ipsec-sa-config></sad-entry>"""

    return etree.fromstring(
        f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS}"><spd>'
        + spd("out", "outbound", 2) + spd("in", "inbound", 1) + "</spd><sad>"
        + sad("sa-out", 2, out_spi, out_key) + sad("sa-in", 1, in_spi, in_key)
        + "</sad></ipsec-ikeless></config>")


@pytest.fixture
def gws(tmp_path: Path) -> Iterator[tuple]:
    from nsf_agent.userspace.lab import Lab, unique_prefix

    lab = Lab(unique_prefix("i2tm"))
    gs: list[Gateway] = []
    try:
        lab.build(gro=False)
        schema = YangSchema(create_context())
        gs = [Gateway(schema, lab.gw_a, tmp_path / "a"), Gateway(schema, lab.gw_b, tmp_path / "b")]
        yield lab, gs[0], gs[1]
    finally:
        for g in gs:
            g.stop(datapath=True)
        lab.destroy()


def test_gateway_traffic_leaves_from_the_protected_address(gws) -> None:
    from nsf_agent.userspace.lab import GW_A, GW_B

    lab, a, b = gws
    ping = ["ping", "-c", "2", "-i", "0.2", "-W", "2", GW_B]
    assert lab.run(lab.gw_a, ping).returncode == 0  # before any policy
    a.ds.edit_config("running", transport_config("a"))
    b.ds.edit_config("running", transport_config("b"))
    route = lab.run(lab.gw_a, ["ip", "route", "show", "table", "4303"]).stdout
    assert f"{GW_B} dev i2us0" in route and f"src {GW_A}" in route, route
    r = lab.run(lab.gw_a, ping)
    assert r.returncode == 0, r.stdout + r.stderr  # 0/2 answered before the fix

    def packets(g: Gateway, name: str) -> int:
        q = f"{{{IKELESS}}}"
        for e in g.ds.get_state().iter(q + "sad-entry"):
            if e.findtext(q + "name") == name:
                return int(e.findtext(f".//{q}sa-lifetime-current/{q}packets") or 0)
        return -1

    assert packets(a, "sa-out") >= 2 and packets(b, "sa-in") >= 2  # it went through ESP
    assert packets(a, "sa-in") >= 2


def test_transport_mode_between_networks_is_refused(gws) -> None:
    _, a, _ = gws
    before = a.ds.serialize("running")
    with pytest.raises(RpcError) as ei:
        a.ds.edit_config("running", transport_config("a", lplen=24))
    assert ei.value.error_tag == "invalid-value"
    assert "transport mode protects traffic between two hosts" in ei.value.message
    assert a.ds.serialize("running") == before
