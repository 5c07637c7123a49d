"""The agent's kernel events and SADB_GETSPI end to end over NETCONF, on a kernel with ESP
(`make test-kernel` runs it in the VM): an in-process agent whose xfrm applier drives a
network namespace, and an ncclient subscriber. A soft time lifetime arrives as sadb-expire,
traffic without an SA as sadb-acquire, and i2nsf-sadb:allocate-spi leaves a larval state
that the SAD entry with that SPI completes (and that a failed commit gives back)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager
from ncclient.operations.rpc import RPCError

from netconf_core.schema import YangSchema
from nsf_agent.agent import Agent
from nsf_agent.appliers.xfrm import XfrmApplier
from nsf_agent.sadb import NS as SADB_NS
from nsf_agent.xfrm.iptext import ip_xfrm, parse_states

from .conftest import sh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "integration"))
from ncharness import AgentThread, ikeless_config, sad_entry, spd_entry

IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{IKELESS}}}"


class XfrmAgent(AgentThread):
    """AgentThread whose applier is the kernel one, on `netns`."""

    def __init__(self, state_dir: Path, netns: str) -> None:
        super().__init__(state_dir)
        self.applier = XfrmApplier(netns, state_dir)  # type: ignore[assignment]
        self.agent = Agent(self.agent.config, appliers=[self.applier])


@pytest.fixture
def agent(netns: str, tmp_path: Path) -> Iterator[XfrmAgent]:
    # The VM's own loopback (where the agent listens) starts down.
    if "UP" not in subprocess.run(["ip", "-o", "link", "show", "lo"], capture_output=True,
                                  text=True).stdout.split(">")[0]:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    a = XfrmAgent(state, netns)
    try:
        yield a.start()
    finally:
        a.stop()


@pytest.fixture
def schema(agent: XfrmAgent) -> YangSchema:
    """The agent's own schema (ietf-i2nsf-ikeless and i2nsf-sadb), to check notifications."""
    return agent.server.schema


@pytest.fixture
def m(agent: XfrmAgent) -> Iterator[manager.Manager]:
    with agent.connect() as mgr:
        mgr.create_subscription()
        yield mgr


def take(m: manager.Manager, tag: str, schema: YangSchema, timeout: float = 30.0
         ) -> etree._Element:
    """The next notification `tag` (ikeless namespace) the subscriber receives, checked
    against the YANG schema; others (netconf-config-change, ...) are passed over."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        n = m.take_notification(block=True, timeout=min(left, 1.0))
        if n is None:
            continue
        body = next(c for c in etree.fromstring(n.notification_xml.encode())
                if isinstance(c.tag, str) and not c.tag.endswith("eventTime"))
        if body.tag == Q + tag:
            schema.validate_notification(body)
            return body
    raise AssertionError(f"no {tag} notification within {timeout} s")


def sad_with_lifetime(name: str, spi: int, soft_s: int, hard_s: int) -> str:
    xml = sad_entry(name, spi)
    return xml.replace(
        "</esp-sa>",
        f"</esp-sa><sa-lifetime-hard><time>{hard_s}</time></sa-lifetime-hard>"
        f"<sa-lifetime-soft><time>{soft_s}</time><action>replace</action></sa-lifetime-soft>")


def test_soft_lifetime_arrives_as_sadb_expire(m: manager.Manager, netns: str,
                                              schema: YangSchema) -> None:
    m.edit_config(target="running", config=ikeless_config(
        spd=spd_entry("out-pol"), sad=sad_with_lifetime("sa-soft", 0x3001, 2, 30)))
    (st,) = parse_states(ip_xfrm(netns, "state"))
    assert st["spi"] == 0x3001 and st["lifetime"]["soft_add_seconds"] == 2
    n = take(m, "sadb-expire", schema, timeout=20)
    assert n.findtext(Q + "ipsec-sa-name") == "sa-soft"
    assert n.findtext(Q + "soft-lifetime-expire") == "true"
    # A soft expiry leaves the SA in place (the hard one, 30 s, would remove it).
    assert [s["spi"] for s in parse_states(ip_xfrm(netns, "state"))] == [0x3001]


def test_traffic_without_sa_arrives_as_sadb_acquire(m: manager.Manager, netns: str,
                                                    schema: YangSchema) -> None:
    sh(netns, "ip", "link", "set", "lo", "up")
    sh(netns, "ip", "link", "add", "dummy0", "type", "dummy")
    sh(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "dummy0")
    sh(netns, "ip", "link", "set", "dummy0", "up")
    sh(netns, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2")
    spd = """<spd-entry><name>gw-out</name><direction>outbound</direction><reqid>77</reqid>
<ipsec-policy-config><traffic-selector><local-prefix>192.0.2.0/24</local-prefix>
<remote-prefix>198.51.100.0/24</remote-prefix><inner-protocol>any</inner-protocol>
</traffic-selector><processing-info><action>protect</action><ipsec-sa-cfg><mode>tunnel</mode>
<esp-algorithms><encryption><id>1</id><algorithm-type>20</algorithm-type>
<key-length>128</key-length></encryption></esp-algorithms>
<tunnel><local>192.0.2.1</local><remote>192.0.2.2</remote></tunnel></ipsec-sa-cfg>
</processing-info></ipsec-policy-config></spd-entry>"""
    m.edit_config(target="running", config=ikeless_config(spd=spd_entry("other") + spd))
    sh(netns, sys.executable, "-c",
       "import socket\n"
       "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
       "s.setblocking(False)\n"
       "try:\n    s.sendto(b'x', ('198.51.100.7', 9))\n"
       "except OSError:\n    pass\n")
    n = take(m, "sadb-acquire", schema, timeout=20)
    assert n.findtext(Q + "ipsec-policy-name") == "gw-out"
    ts = n.find(Q + "traffic-selector")
    assert ts.findtext(Q + "remote-prefix") == "198.51.100.7/32"
    assert ts.findtext(Q + "local-prefix") == "192.0.2.1/32"


def allocate_spi(m: manager.Manager, lo: int, hi: int) -> int:
    reply = m.dispatch(etree.fromstring(
        f'<allocate-spi xmlns="{SADB_NS}"><source-address>198.51.100.1</source-address>'
        "<destination-address>198.51.100.2</destination-address>"
        f"<min-spi>{lo}</min-spi><max-spi>{hi}</max-spi><reqid>1</reqid></allocate-spi>"))
    return int(etree.fromstring(reply.xml.encode()).findtext(f".//{{{SADB_NS}}}spi"))


def by_spi(netns: str) -> dict[int, dict]:
    return {s["spi"]: s for s in parse_states(ip_xfrm(netns, "state"))}


def test_allocate_spi_then_sad_entry_completes_the_larval_state(
        m: manager.Manager, netns: str) -> None:
    spi = allocate_spi(m, 0x6000, 0x6FFF)
    assert 0x6000 <= spi <= 0x6FFF
    larval = by_spi(netns)[spi]
    assert (larval["src"], larval["dst"], larval["reqid"]) == ("198.51.100.1", "198.51.100.2", 1)
    assert not larval.get("algos")  # no keys yet
    m.edit_config(target="running", config=ikeless_config(
        spd=spd_entry("out-pol"), sad=sad_entry("sa-alloc", spi)))
    states = by_spi(netns)
    assert list(states) == [spi]  # completed in place, not a second state
    algos = states[spi]["algos"]
    assert algos["enc"]["key"] == bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert algos["auth-trunc"]["key"] == bytes.fromhex("1032547698badcfeefcdab8967452301" * 2)
    # Deleting the SAD entry removes the (now ordinary) SA.
    m.edit_config(target="running", config=ikeless_config(spd=spd_entry("out-pol")),
                  default_operation="replace")
    assert by_spi(netns) == {}


def test_failed_commit_gives_the_reservation_back(m: manager.Manager, netns: str) -> None:
    spi = allocate_spi(m, 0x7000, 0x7FFF)
    # A foreign SA the second entry collides with makes the kernel refuse the commit.
    sh(netns, "ip", "xfrm", "state", "add", "src", "198.51.100.1", "dst", "198.51.100.2",
       "proto", "esp", "spi", "0x8001", "mode", "transport",
       "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128")
    with pytest.raises(RPCError) as ei:
        m.edit_config(target="running", config=ikeless_config(
            spd=spd_entry("out-pol"),
            sad=sad_entry("sa-alloc", spi) + sad_entry("sa-clash", 0x8001)))
    assert "sa-clash" in str(ei.value)
    states = by_spi(netns)
    assert set(states) == {spi, 0x8001}
    assert not states[spi].get("algos")  # larval again, reserved for the next attempt
    m.edit_config(target="running", config=ikeless_config(
        spd=spd_entry("out-pol"), sad=sad_entry("sa-alloc", spi)))
    assert by_spi(netns)[spi]["algos"]["enc"]["name"] == "cbc(aes)"
