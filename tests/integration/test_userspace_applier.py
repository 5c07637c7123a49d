"""The userspace applier end to end below NETCONF: RFC 9061 ikeless configuration through the
datastore layer into the userspace ESP data path on two gateways, with real traffic between
hosts behind them, lifetime notifications, bad input and an agent restart."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.polling import wait_until
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent.appliers.userspace import UserspaceApplier

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces, TUN and raw sockets",
)

IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{IKELESS}}}"
KEY_AB = "a1" * 20
KEY_BA = "b2" * 20


def side_config(side: str, soft_bytes: int = 0, enc_alg: int = 20,
                key_ab: str = KEY_AB) -> etree._Element:
    from nsf_agent.userspace.lab import GW_A, GW_B, NET_A, NET_B

    local, remote = (GW_A, GW_B) if side == "a" else (GW_B, GW_A)
    lnet, rnet = (NET_A, NET_B) if side == "a" else (NET_B, NET_A)
    out_spi, in_spi = (0x1001, 0x2002) if side == "a" else (0x2002, 0x1001)
    out_key, in_key = (key_ab, KEY_BA) if side == "a" else (KEY_BA, key_ab)

    def hexkey(h: str) -> str:
        return ":".join(h[i:i + 2] for i in range(0, len(h), 2))

    def spd(name: str, direction: str, reqid: int) -> str:
        return f"""<spd-entry><name>{name}</name><direction>{direction}</direction>
          <reqid>{reqid}</reqid><ipsec-policy-config><traffic-selector>
          <local-prefix>{lnet}</local-prefix><remote-prefix>{rnet}</remote-prefix>
          </traffic-selector><processing-info><action>protect</action><ipsec-sa-cfg>
          <mode>tunnel</mode><esp-algorithms><encryption><id>1</id>
          <algorithm-type>20</algorithm-type><key-length>128</key-length></encryption>
          </esp-algorithms><tunnel><local>{local}</local><remote>{remote}</remote></tunnel>
          </ipsec-sa-cfg></processing-info></ipsec-policy-config></spd-entry>"""

    def sad(name: str, reqid: int, spi: int, key: str, soft: str, alg: int = 20) -> str:
        return f"""<sad-entry><name>{name}</name><reqid>{reqid}</reqid><ipsec-sa-config>
          <spi>{spi}</spi><traffic-selector><local-prefix>{lnet}</local-prefix>
          <remote-prefix>{rnet}</remote-prefix></traffic-selector><mode>tunnel</mode>
          <esp-sa><encryption><encryption-algorithm>{alg}</encryption-algorithm>
          <key>{hexkey(key)}</key></encryption></esp-sa>{soft}
          <tunnel><local>{local}</local><remote>{remote}</remote></tunnel>
          </ipsec-sa-config></sad-entry>"""

    soft = (f"<sa-lifetime-soft><bytes>{soft_bytes}</bytes></sa-lifetime-soft>"
            if soft_bytes else "")
    xml = (f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS}"><spd>'
           + spd("out", "outbound", 2) + spd("in", "inbound", 1) + "</spd><sad>"
           + sad("sa-out", 2, out_spi, out_key, soft, enc_alg) + sad("sa-in", 1, in_spi, in_key, "")
           + "</sad></ipsec-ikeless></config>")
    return etree.fromstring(xml)


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context())


class Gateway:
    def __init__(self, schema: YangSchema, netns: str, state: Path) -> None:
        self.netns, self.state, self.schema = netns, state, schema
        self.notes: list[etree._Element] = []
        self.start()

    def start(self) -> None:
        self.applier = UserspaceApplier(self.state, netns=self.netns, tun="i2us0")
        self.applier.bind(self.notes.append)
        self.ds = Datastores(self.schema, [self.applier], state_dir=self.state)
        self.ds.reconcile()

    def stop(self, datapath: bool = False) -> None:
        self.applier.close(stop_datapath=datapath)


@pytest.fixture
def lab(schema: YangSchema, tmp_path: Path) -> Iterator[tuple]:
    from nsf_agent.userspace.lab import Lab, unique_prefix

    lab = Lab(unique_prefix("i2ap"))
    gws: list[Gateway] = []
    try:
        lab.build(gro=False)
        gws = [Gateway(schema, lab.gw_a, tmp_path / "a"), Gateway(schema, lab.gw_b, tmp_path / "b")]
        yield lab, gws[0], gws[1]
    finally:
        for g in gws:
            g.stop(datapath=True)
        lab.destroy()


def ping(lab, count: int = 3) -> bool:
    from nsf_agent.userspace.lab import HOST_B

    r = lab.run(lab.host_a, ["ping", "-c", str(count), "-i", "0.2", "-W", "2", HOST_B])
    return r.returncode == 0


def sa_bytes(gw: Gateway, name: str) -> int:
    data = gw.ds.get_state()
    for e in data.iter(Q + "sad-entry"):
        if e.findtext(Q + "name") == name:
            return int(e.findtext(f".//{Q}sa-lifetime-current/{Q}bytes") or 0)
    return -1


def poll(pred, timeout: float, what: str) -> None:
    wait_until(pred, timeout, what, interval=0.05)


def test_tunnel_carries_traffic_and_reports_state(lab) -> None:
    lab, a, b = lab
    assert not ping(lab, 1)  # nothing configured: the gateways do not route the prefixes
    a.ds.edit_config("running", side_config("a"))
    b.ds.edit_config("running", side_config("b"))
    assert ping(lab)
    assert sa_bytes(a, "sa-out") > 0
    assert sa_bytes(b, "sa-in") > 0


def test_bad_change_is_refused_and_traffic_keeps_flowing(lab) -> None:
    lab, a, b = lab
    a.ds.edit_config("running", side_config("a"))
    b.ds.edit_config("running", side_config("b"))
    assert ping(lab, 1)
    before = a.ds.serialize("running")
    # AES-CCM is valid RFC 9061 but the userspace data path does not implement it.
    with pytest.raises(RpcError) as ei:
        a.ds.edit_config("running", side_config("a", enc_alg=16, key_ab="c3" * 19))
    assert "userspace data path supports" in ei.value.message
    assert ei.value.path and "sad-entry[name='sa-out']" in ei.value.path
    assert a.ds.serialize("running") == before
    assert ping(lab, 2)


def test_soft_byte_lifetime_notifies(lab) -> None:
    lab, a, b = lab
    a.ds.edit_config("running", side_config("a", soft_bytes=300))
    b.ds.edit_config("running", side_config("b"))
    assert ping(lab, 5)

    def expired() -> bool:
        return any(n.tag == Q + "sadb-expire" and n.findtext(Q + "ipsec-sa-name") == "sa-out"
                   and n.findtext(Q + "soft-lifetime-expire") == "true" for n in a.notes)

    poll(expired, 10, "a soft sadb-expire for sa-out")
    for n in a.notes:
        a.schema.validate_notification(n)


def test_agent_restart_reattaches_without_interrupting(lab) -> None:
    lab, a, b = lab
    a.ds.edit_config("running", side_config("a"))
    b.ds.edit_config("running", side_config("b"))
    assert ping(lab, 1)
    pid = a.applier.proc.pid if a.applier.proc else None
    a.stop(datapath=False)
    a.start()
    assert a.applier.proc is None  # reattached to the running data path, no new process
    assert pid is not None and Path(f"/proc/{pid}").exists()
    assert ping(lab, 2)
    out = subprocess.run(["ip", "-n", lab.gw_a, "link", "show", "i2us0"], capture_output=True)
    assert out.returncode == 0
