"""The SFC controller end to end: real agents (sfc applier, userspace NSH/GRE data path) in
classifier/SFF namespaces, the controller over real SSH NETCONF, SF instances behind F's
proxies registered through the i2nsf-sfc-catalog RPCs, traffic from real hosts, and the
NSH paths decoded by tshark on the wire.

One lab per module. The SF namespaces are the proxy contract's routed bump in the wire
(plain forwarding); the real security functions are exercised by the use-case tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                       or shutil.which("tshark") is None,
                       reason="needs root, iproute2 and tshark (namespaces, raw sockets)"),
    pytest.mark.root,
    pytest.mark.slow,
]

from tests.integration.sfc_ctl_lab import (  # noqa: E402
    Capture,
    SfcControllerLab,
    poll,
    sfc_controller_lab,
    tshark_nsh,
)

TYPES = """<sf-types><sf-type><name>ids</name></sf-type>
<sf-type><name>anti-spoofing</name></sf-type><sf-type><name>firewall</name></sf-type>
<sf-type><name>dpi</name></sf-type></sf-types>"""
TRUST = """<trust-levels>
<trust-level><name>trusted</name><source-prefix>198.51.100.0/28</source-prefix></trust-level>
<trust-level><name>untrusted</name><source-prefix>198.51.100.16/28</source-prefix>
</trust-level></trust-levels>"""
CHAINS = """<chains>
<chain><name>light</name><sf-type>ids</sf-type></chain>
<chain><name>deep</name><sf-type>anti-spoofing</sf-type><sf-type>firewall</sf-type>
<sf-type>dpi</sf-type></chain></chains>
<policies>
<policy><name>trusted</name><match><trust-level>trusted</trust-level></match>
<chain>light</chain></policy>
<policy><name>untrusted</name><match><trust-level>untrusted</trust-level></match>
<chain>deep</chain></policy></policies>"""
UNTRUSTED_SRC = "198.51.100.20"


@pytest.fixture(scope="module")
def lab() -> Iterator[SfcControllerLab]:
    with sfc_controller_lab(sfs=4) as lab:
        subprocess.run(["ip", "-n", lab.net.host_a, "addr", "add", f"{UNTRUSTED_SRC}/24",
                        "dev", "eth0"], check=True)
        m = lab.connect()
        try:
            lab.configure(m, lab.forwarders_xml() + TYPES)
            for i, (name, t) in enumerate((("ids-1", "ids"), ("as-1", "anti-spoofing"),
                                           ("fw-1", "firewall"), ("dpi-1", "dpi"))):
                lab.register(m, i, name, t)
        finally:
            m.close_session()
        yield lab


@pytest.fixture
def m(lab: SfcControllerLab) -> Iterator[Any]:
    m = lab.connect()
    yield m
    with contextlib.suppress(Exception):  # a test may have closed it (controller restart)
        m.close_session()


def _ping(lab: SfcControllerLab, src: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return lab.net.run(lab.net.host_a, ["ping", "-c", str(count), "-i", "0.05", "-W", "1",
                                        "-I", src, "203.0.113.10"])


def _active(lab: SfcControllerLab, m: Any, *chains: str) -> dict[str, dict[str, str]]:
    return poll(lambda: (p := lab.paths(m)) and all(
        p.get(c, {}).get("status") == "active" for c in chains) and p, 20,
        f"paths {chains} active")


def test_trust_levels_take_their_own_paths(lab: SfcControllerLab, m: Any, tmp_path: Path
                                           ) -> None:
    """Seed §5.2: trusted sources → the light chain (IDS only), untrusted → anti-spoofing,
    firewall, DPI. The capture between C and F shows each source on its own SPI; between F
    and E each path arrives with SI = 255 - its length (every SF visited)."""
    lab.configure(m, TRUST + CHAINS, inventory=False)
    p = _active(lab, m, "light", "deep")
    light, deep = int(p["light"]["spi"]), int(p["deep"]["spi"])
    assert light != deep
    cap_cf = Capture(lab.net.f, "c", tmp_path / "cf.pcap")
    cap_fe = Capture(lab.net.f, "e", tmp_path / "fe.pcap")
    try:
        r1 = _ping(lab, "198.51.100.10")
        r2 = _ping(lab, UNTRUSTED_SRC)
    finally:
        time.sleep(0.2)  # let tcpdump flush the last packets it has seen
        rows_cf = tshark_nsh(cap_cf.stop())
        rows_fe = tshark_nsh(cap_fe.stop())
    assert r1.returncode == 0, r1.stdout + r1.stderr
    assert r2.returncode == 0, r2.stdout + r2.stderr
    by_src = {(src, spi, si) for src, spi, si in rows_cf}
    assert ("198.51.100.10", light, 255) in by_src
    assert (UNTRUSTED_SRC, deep, 255) in by_src
    assert not any(src == UNTRUSTED_SRC and spi == light for src, spi, _ in rows_cf)
    ends = {(src, spi, si) for src, spi, si in rows_fe}
    assert ("198.51.100.10", light, 254) in ends  # one SF
    assert (UNTRUSTED_SRC, deep, 252) in ends  # three SFs


@pytest.mark.parametrize("body, why", [
    (CHAINS.replace("<sf-type>dpi</sf-type></chain>",
                    "<sf-type>dpi</sf-type><sf-type>ddos</sf-type></chain>"),
     "ddos"),  # not a configured type: libyang's leafref check
    (CHAINS.replace("<sf-type>dpi</sf-type></chain>",
                    "<sf-type>dpi</sf-type><sf-type>ips</sf-type></chain>"),
     "no instance of type 'ips'"),
    ("<spi-range-start>100</spi-range-start><spi-range-end>100</spi-range-end>" + CHAINS,
     "SPI exhaustion"),
    (CHAINS + """<reclassification><rule><name>loop</name><from-sf-type>ids</from-sf-type>
     <inspection-result>x</inspection-result><to-chain>light</to-chain></rule>
     </reclassification>""", "cyclic re-classification: light -> light"),
])
def test_bad_policies_are_refused_and_nothing_is_pushed(lab: SfcControllerLab, m: Any,
                                                        body: str, why: str) -> None:
    from ncclient.operations import RPCError

    lab.configure(m, TRUST + CHAINS, inventory=False)
    _active(lab, m, "light", "deep")
    before = {n: lab.agent_running(n) for n in ("c", "f")}
    extra = TYPES.replace("</sf-types>", "<sf-type><name>ips</name></sf-type></sf-types>")
    with pytest.raises(RPCError) as ei:
        lab.configure(m, extra + TRUST + body, inventory=False)
    assert why in str(ei.value), ei.value
    assert {n: lab.agent_running(n) for n in ("c", "f")} == before
    run = m.get_config(source="running").xml
    assert "spi-range-end>100<" not in run and "<name>loop</name>" not in run


def test_controller_restart_keeps_paths_and_pushes_nothing(lab: SfcControllerLab, m: Any
                                                           ) -> None:
    lab.configure(m, TRUST + CHAINS, inventory=False)
    before_paths = _active(lab, m, "light", "deep")
    before = {n: lab.agent_running(n) for n in ("c", "f", "e")}
    m.close_session()
    assert lab.controller is not None
    lab.controller.stop()
    lab.controller.start()
    m2 = lab.connect()
    try:
        after_paths = _active(lab, m2, "light", "deep")
        assert {k: v["spi"] for k, v in after_paths.items()} == {
            k: v["spi"] for k, v in before_paths.items()}
        inst = lab.sfc_state(m2)
        names = {e.text for e in inst.iter("{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}name")}
        assert {"ids-1", "as-1", "fw-1", "dpi-1"} <= names  # the catalog survived
        assert {n: lab.agent_running(n) for n in ("c", "f", "e")} == before
        assert _ping(lab, UNTRUSTED_SRC).returncode == 0
    finally:
        m2.close_session()


NSF_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"


def _agent_edit(lab: SfcControllerLab, node: str, entries: str) -> None:
    """Change an agent's table behind the controller's back (another NETCONF client)."""
    a = lab.connect_agent(node)
    try:
        a.edit_config(target="running", config=(
            f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
            f'<sfc xmlns="{NSF_NS}"><forwarder><table>{entries}</table></forwarder></sfc>'
            "</config>"))
    finally:
        a.close_session()


def _stat(lab: SfcControllerLab, m: Any, name: str) -> int:
    root = lab.sfc_state(m)
    v = root.findtext(f".//{{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}}statistics/"
                      f"{{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}}{name}")
    return int(v or 0)


def test_table_miss_is_answered_within_10_ms(lab: SfcControllerLab, m: Any) -> None:
    """Seed §4.5 pull: C lost its entry for the light path's first hop; the held packet
    goes on once the controller's answer arrives."""
    lab.configure(m, TRUST + CHAINS, inventory=False)
    light = int(_active(lab, m, "light", "deep")["light"]["spi"])
    before = _stat(lab, m, "table-misses-answered")
    _agent_edit(lab, "c", f'<entry xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" '
                f'nc:operation="delete"><spi>{light}</spi><si>255</si></entry>')
    assert f"<entry><spi>{light}</spi><si>255</si>" not in lab.agent_running("c")
    r = _ping(lab, "198.51.100.10", count=1)
    assert r.returncode == 0, r.stdout + r.stderr
    poll(lambda: _stat(lab, m, "table-misses-answered") > before, 5, "the miss answered")
    us = _stat(lab, m, "last-miss-answer-time")
    print(f"\ntable miss: answer sent {us / 1000:.2f} ms after the notification arrived")
    assert 0 < us <= 10_000
    assert f"<entry><spi>{light}</spi><si>255</si>" in lab.agent_running("c")


def test_loop_is_fixed_by_a_resync(lab: SfcControllerLab, m: Any) -> None:
    """Seed §4.5 last paragraph: two SFFs whose tables drifted into a loop (C and F send the
    end of the light path to each other); TTL expiry is reported, the controller rewrites
    every agent, traffic flows again."""
    from tests.integration.sfc_ctl_lab import LOCATOR

    lab.configure(m, TRUST + CHAINS, inventory=False)
    light = int(_active(lab, m, "light", "deep")["light"]["spi"])
    good = {n: lab.agent_running(n) for n in ("c", "f")}
    for node, to in (("c", "f"), ("f", "c")):
        _agent_edit(lab, node, f'<entry xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" '
                    f'nc:operation="replace"><spi>{light}</spi><si>254</si><next-hop>'
                    f"<locator>{LOCATOR[to]}</locator><kind>sff</kind></next-hop></entry>")
    _ping(lab, "198.51.100.10", count=1)  # loops until its NSH TTL runs out
    poll(lambda: any(k == "path-resync" for k, _ in lab.events(m)), 10, "the loop handled")
    kinds = [k for k, _ in lab.events(m)]
    assert "loop-detected" in kinds
    poll(lambda: {n: lab.agent_running(n) for n in ("c", "f")} == good, 10,
         "agents rewritten")
    r = _ping(lab, "198.51.100.10", count=2)
    assert r.returncode == 0, r.stdout + r.stderr


def test_agent_restart_keeps_paths(lab: SfcControllerLab, m: Any) -> None:
    """An SFF agent restarted (its data path outlives it by design and is re-attached): it
    comes back with what it held, the controller's new session resyncs it, traffic on both
    paths flows again."""
    lab.configure(m, TRUST + CHAINS, inventory=False)
    _active(lab, m, "light", "deep")
    before = lab.agent_running("f")
    agent = lab.agents["f"]
    agent.stop()
    agent.start()
    poll(lambda: lab.agent_running("f") == before, 20, "F back with its tables")
    for src in ("198.51.100.10", UNTRUSTED_SRC):
        r = poll(lambda s=src: _ping(lab, s, count=1).returncode == 0, 20, f"ping from {src}")
        assert r
    assert {v["status"] for v in lab.paths(m).values()} == {"active"}


def test_cli_shows_paths_and_instances(lab: SfcControllerLab, m: Any) -> None:
    import json
    import sys

    from tests.integration.sfc_ctl_lab import ADMIN_PASSWORD, CTL_PORT

    lab.configure(m, TRUST + CHAINS, inventory=False)
    p = _active(lab, m, "light", "deep")
    key = lab.workdir / "controller" / "ssh_host_ed25519_key.pub"
    if not key.exists():
        import asyncssh

        key.write_text(asyncssh.read_private_key(str(key.with_suffix(""))).export_public_key()
                       .decode())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", lab.mgmt, sys.executable, "-m", "controller.cli",
             "--port", str(CTL_PORT), "--user", "admin", "--host-key-file", str(key), *args],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "I2NSF_PASSWORD": ADMIN_PASSWORD})

    r = cli("sfc", "paths", "--json")
    assert r.returncode == 0, r.stderr
    paths = {x["chain"]: x for x in json.loads(r.stdout)}
    assert paths["deep"]["spi"] == int(p["deep"]["spi"]) and paths["deep"]["status"] == "active"
    assert len(paths["deep"]["hops"]) == 3
    r = cli("sfc", "instances")
    assert r.returncode == 0 and "fw-1" in r.stdout and "firewall" in r.stdout, r.stderr
    r = cli("sfc", "table")
    assert r.returncode == 0 and "terminate" in r.stdout, r.stderr


def test_catalog_rpcs_refuse_bad_registrations(lab: SfcControllerLab, m: Any) -> None:
    """i2nsf-sfc-catalog errors: another DMS's instance name (data-exists), removing another
    DMS's instance (access-denied), a load report naming an unknown instance (invalid-value,
    nothing recorded)."""
    from lxml import etree
    from ncclient.operations import RPCError

    from tests.integration.sfc_ctl_lab import CAT

    with pytest.raises(RPCError) as ei:
        lab.register(m, 0, "ids-1", "ids", dms="other-dms")
    assert ei.value.tag == "data-exists", ei.value
    with pytest.raises(RPCError) as ei:
        m.dispatch(etree.fromstring(f'<unregister-instance xmlns="{CAT}"><name>ids-1</name>'
                                    "<dms>other-dms</dms></unregister-instance>"))
    assert ei.value.tag == "access-denied"
    with pytest.raises(RPCError) as ei:
        m.dispatch(etree.fromstring(
            f'<report-load xmlns="{CAT}"><dms>lab-dms</dms>'
            "<instance><name>ids-1</name><packets-per-second>77</packets-per-second></instance>"
            "<instance><name>nope</name><packets-per-second>1</packets-per-second></instance>"
            "</report-load>"))
    assert ei.value.tag == "invalid-value" and "nope" in str(ei.value)
    st = lab.sfc_state(m)
    q = "{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}"
    ids = next(i for top in st.iter(q + "sfc-state") for i in top.findall(q + "instance")
               if i.findtext(q + "name") == "ids-1")
    assert ids.findtext(q + "load-pps") != "77"  # nothing recorded
    m.dispatch(etree.fromstring(
        f'<report-load xmlns="{CAT}"><dms>lab-dms</dms><instance><name>ids-1</name>'
        "<packets-per-second>77</packets-per-second></instance></report-load>"))
    st = lab.sfc_state(m)
    ids = next(i for top in st.iter(q + "sfc-state") for i in top.findall(q + "instance")
               if i.findtext(q + "name") == "ids-1")
    assert ids.findtext(q + "load-pps") == "77"


def _udp(lab: SfcControllerLab, src: str, sport: int, n: int) -> None:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.host_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, sport))
    for _ in range(n):
        s.sendto(b"shared instance", ("203.0.113.10", 9100))
        time.sleep(0.002)
    s.close()


def test_one_instance_on_two_paths_does_not_loop(lab: SfcControllerLab, m: Any,
                                                 tmp_path: Path) -> None:
    """One firewall instance (fw-1) serves the first hop of two paths: the controller gives
    it two proxy entries on F (same veths and MAC), and each flow comes back on its own path
    — nothing looped or amplified (before the agent restored by flow state, 100 packets
    became 3200): every packet delivered exactly once, per-entry proxy counters = packets
    sent on that path, each flow leaves F on its own path's last SI."""
    from nsf_agent.userspace.lab import in_netns

    one_two = ("<chains><chain><name>one</name><sf-type>firewall</sf-type></chain>"
               "<chain><name>two</name><sf-type>firewall</sf-type><sf-type>dpi</sf-type>"
               "</chain></chains><policies><policy><name>trusted</name><match><trust-level>"
               "trusted</trust-level></match><chain>one</chain></policy><policy><name>"
               "untrusted</name><match><trust-level>untrusted</trust-level></match><chain>two"
               "</chain></policy></policies>")
    lab.configure(m, lab.forwarders_xml() + TYPES + TRUST + one_two, inventory=False,
                  replace=True)
    try:
        p = _active(lab, m, "one", "two")
        one, two = int(p["one"]["spi"]), int(p["two"]["spi"])
        px = poll(lambda: (x := lab.proxy_counters("f")) and {
            (v["spi"], v["si"]) for k, v in x.items() if k.startswith("fw-1")} == {
            (one, 255), (two, 255)} and x, 20, "two proxy entries of fw-1 on F")
        fw = {k: v for k, v in px.items() if k.startswith("fw-1")}
        assert len({v["to-sf-interface"] for v in fw.values()}) == 1  # one instance
        with in_netns(lab.net.host_b):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("203.0.113.10", 9100))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        cap_fe = Capture(lab.net.f, "e", tmp_path / "fe.pcap")
        try:
            _udp(lab, "198.51.100.10", 41001, 100)
            _udp(lab, UNTRUSTED_SRC, 41002, 100)
            got: dict[str, int] = {}
            rx.settimeout(1.0)
            with contextlib.suppress(TimeoutError, socket.timeout):
                while True:
                    _data, (src, _port) = rx.recvfrom(2048)
                    got[src] = got.get(src, 0) + 1
        finally:
            time.sleep(0.2)
            rows_fe = tshark_nsh(cap_fe.stop())
            rx.close()
        after = lab.proxy_counters("f")
        print(f"\nshared instance: delivered {got}; fw-1 entries "
              f"{ {k: (after[k]['to-sf'] - fw[k]['to-sf'], after[k]['from-sf'] - fw[k]['from-sf']) for k in fw} }")  # noqa: E501
        assert got == {"198.51.100.10": 100, UNTRUSTED_SRC: 100}  # each once, none looped
        for k, v in fw.items():
            sent = after[k]["to-sf"] - v["to-sf"]
            back = after[k]["from-sf"] - v["from-sf"]
            assert sent == back == 100, (k, sent, back)  # its own path's flow, no more
        ends: dict[tuple[str, int, int], int] = {}
        for src, spi, si in rows_fe:
            ends[(src, spi, si)] = ends.get((src, spi, si), 0) + 1
        assert ends == {("198.51.100.10", one, 254): 100, (UNTRUSTED_SRC, two, 253): 100}
    finally:
        lab.configure(m, lab.forwarders_xml() + TYPES + TRUST + CHAINS, inventory=False,
                      replace=True)
