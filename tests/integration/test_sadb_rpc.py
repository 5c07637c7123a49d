"""i2nsf-sadb:allocate-spi (SADB_GETSPI) over NETCONF on this host: an in-process agent in a
network namespace with the xfrm applier (the kernel's ALLOCSPI needs no ESP support, so the
larval state is real here) or the userspace applier (a random reserved SPI), driven by
ncclient. The SPI is in range and taken; bad input is an rpc-error that changes nothing."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager
from ncclient.operations.rpc import RPCError
from ncharness import AgentThread, ikeless_config, sad_entry, spd_entry

from netconf_core.applier import Applier
from nsf_agent.agent import Agent
from nsf_agent.sadb import NS as SADB_NS
from nsf_agent.xfrm.iptext import ip_xfrm, parse_states

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for a network namespace",
)


class ApplierAgent(AgentThread):
    """AgentThread serving a real applier instead of the null one."""

    def __init__(self, state_dir: Path, applier: Applier) -> None:
        super().__init__(state_dir)
        self.applier = applier  # type: ignore[assignment]
        self.agent = Agent(self.agent.config, appliers=[applier])


def allocate_spi(m: manager.Manager, src: str, dst: str, **opts: object) -> int:
    body = "".join(f"<{k.replace('_', '-')}>{v}</{k.replace('_', '-')}>"
                   for k, v in opts.items())
    reply = m.dispatch(etree.fromstring(
        f'<allocate-spi xmlns="{SADB_NS}"><source-address>{src}</source-address>'
        f"<destination-address>{dst}</destination-address>{body}</allocate-spi>"))
    spi = etree.fromstring(reply.xml.encode()).findtext(f".//{{{SADB_NS}}}spi")
    assert spi is not None, reply.xml
    return int(spi)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"i2s-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture(params=["xfrm", "userspace"])
def agent(request: pytest.FixtureRequest, netns: str, tmp_path: Path) -> Iterator[ApplierAgent]:
    state = tmp_path / "agent"
    state.mkdir(mode=0o700)
    applier: Applier
    if request.param == "xfrm":
        from nsf_agent.appliers.xfrm import XfrmApplier

        applier = XfrmApplier(netns, state_dir=state)
    else:
        from nsf_agent.appliers.userspace import UserspaceApplier

        applier = UserspaceApplier(state, netns=netns, tun="i2sp0")
    a = ApplierAgent(state, applier)
    try:
        a.start()
        yield a
    finally:
        a.stop()
        proc = getattr(applier, "proc", None)
        if proc is not None and proc.poll() is None:  # the userspace data path process
            proc.kill()
            proc.wait(10)


def larval_spis(netns: str) -> set[int]:
    return {s["spi"] for s in parse_states(ip_xfrm(netns, "state"))
            if s["dst"] == "198.51.100.2" and not s.get("algos")}


def test_allocate_spi_in_range_and_reserved(agent: ApplierAgent, netns: str) -> None:
    with agent.connect() as m:
        assert any(SADB_NS in c for c in m.server_capabilities)
        spis = [allocate_spi(m, "198.51.100.1", "198.51.100.2", min_spi=0x4000,
                             max_spi=0x40FF) for _ in range(5)]
        assert all(0x4000 <= s <= 0x40FF for s in spis)
        assert len(set(spis)) == 5  # each allocation is a different, reserved SPI
        # The whole range but one SPI is taken → that one; then none is left.
        lo = spis[0]
        with pytest.raises(RPCError) as ei:
            allocate_spi(m, "198.51.100.1", "198.51.100.2", min_spi=lo, max_spi=lo)
        assert ei.value.tag == "resource-denied"
        assert "no unused esp SPI" in ei.value.message
        if agent.applier.name == "userspace":
            # Another destination has its own SPI space (recent Linux kernels instead keep
            # allocated SPIs unique per protocol across destinations).
            assert allocate_spi(m, "198.51.100.1", "198.51.100.3", min_spi=lo,
                                max_spi=lo) == lo
        v6 = allocate_spi(m, "2001:db8::1", "2001:db8::2", mode="tunnel", reqid=9)
        assert 256 <= v6 <= 0xFFFFFFFF
        if agent.applier.name == "xfrm":
            assert set(spis) <= larval_spis(netns)  # the kernel holds the larval states
            (st,) = [s for s in parse_states(ip_xfrm(netns, "state"))
                     if s["dst"] == "2001:db8::2"]
            assert (st["spi"], st["reqid"], st["mode"]) == (v6, 9, "tunnel")


@pytest.mark.parametrize("inp, tag, text", [
    ({"src": "198.51.100.1", "dst": "2001:db8::2"}, "invalid-value", "different address"),
    ({"src": "198.51.100.1", "dst": "198.51.100.2", "min_spi": 5000, "max_spi": 4000},
     "invalid-value", "greater than max-spi"),
    ({"src": "198.51.100.1", "dst": "198.51.100.2", "min_spi": 17}, "invalid-value", "range"),
    ({"src": "198.51.100.x", "dst": "198.51.100.2"}, "invalid-value", "198.51.100.x"),
    ({"src": "198.51.100.1", "dst": "198.51.100.2", "protocol": "comp"}, "invalid-value",
     "comp"),
    ({"src": "198.51.100.1", "dst": "198.51.100.2", "reqid": 2**32}, "invalid-value",
     "reqid"),
])
def test_bad_input_is_an_rpc_error(agent: ApplierAgent, netns: str, inp: dict, tag: str,
                                   text: str) -> None:
    if agent.applier.name == "userspace" and "reqid" in inp:
        pytest.skip("a 64-bit reqid is fine for the userspace data path")
    before = ip_xfrm(netns, "state")
    with agent.connect() as m:
        opts = {k: v for k, v in inp.items() if k not in ("src", "dst")}
        with pytest.raises(RPCError) as ei:
            allocate_spi(m, inp["src"], inp["dst"], **opts)
        assert ei.value.tag == tag, ei.value.message
        assert text in ei.value.message
    assert ip_xfrm(netns, "state") == before


def test_missing_destination_and_unknown_leaf(agent: ApplierAgent) -> None:
    with agent.connect() as m:
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<allocate-spi xmlns="{SADB_NS}"><source-address>198.51.100.1'
                "</source-address></allocate-spi>"))
        assert ei.value.tag == "data-missing"
        assert "destination-address" in ei.value.message
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<allocate-spi xmlns="{SADB_NS}"><source-address>198.51.100.1'
                "</source-address><destination-address>198.51.100.2</destination-address>"
                "<colour>blue</colour></allocate-spi>"))
        assert ei.value.tag == "unknown-element"


@pytest.mark.parametrize("agent", ["userspace"], indirect=True)
def test_userspace_ah_is_refused_and_sa_consumes_reservation(
        agent: ApplierAgent) -> None:
    """(The xfrm side, a larval SA completed by the SAD entry, needs ESP: tests/kernel.)"""
    with agent.connect() as m:
        with pytest.raises(RPCError) as ei:
            allocate_spi(m, "198.51.100.1", "198.51.100.2", protocol="ah")
        assert ei.value.tag == "operation-not-supported"
        spi = allocate_spi(m, "198.51.100.1", "198.51.100.2", min_spi=0x7000,
                           max_spi=0x7001)
        m.edit_config(target="running", config=ikeless_config(
            spd=spd_entry("sp1"), sad=sad_entry("sa1", spi)))
        assert [e.spi for e in agent.applier._cfg.sad] == [spi]  # type: ignore[attr-defined]
        # Held by the SA and no longer reserved: the other SPI of the range is the only one.
        other = 0x7001 if spi == 0x7000 else 0x7000
        assert allocate_spi(m, "198.51.100.1", "198.51.100.2", min_spi=0x7000,
                            max_spi=0x7001) == other
        with pytest.raises(RPCError) as ei:
            allocate_spi(m, "198.51.100.1", "198.51.100.2", min_spi=0x7000, max_spi=0x7001)
        assert ei.value.tag == "resource-denied"
