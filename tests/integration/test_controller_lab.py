"""The controller end to end: two real agents (`i2nsf-agent run`, userspace ESP) in gateway
namespaces, the controller (`i2nsf-controller serve`) in a management namespace, real SSH.

One lab per module (start-up costs seconds); every test leaves the controller with no
policies and both agents running. Lifetimes are short (soft 3 s, hard 8 s), so the
controller rekeys every ~2.7 s throughout.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lxml import etree

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (network namespaces, TUN, raw sockets)"),
    pytest.mark.root,
    pytest.mark.slow,
]

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
IK = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
ETH_P_ALL = 0x0003
ALL_KEYS: set[str] = set()  # every key seen in the controller's store during the module


@pytest.fixture(scope="module")
def gl() -> Iterator[Any]:
    from gateway_lab import gateway_lab

    with gateway_lab("i2c", soft=3, hard=8) as lab:
        yield lab


# ---- helpers --------------------------------------------------------------------------------


def poll(pred: Any, timeout: float, what: str) -> Any:
    from gateway_lab import poll as _poll

    return _poll(pred, timeout, what)


def policy_state(gl: Any, name: str) -> etree._Element | None:
    return gl.policy_state(name)  # type: ignore[no-any-return]


def status(gl: Any, name: str) -> str | None:
    p = policy_state(gl, name)
    return None if p is None else p.findtext(f"{{{FP}}}status")


def session_state(gl: Any, nsf: str) -> str | None:
    m = gl.connect()
    try:
        data = etree.fromstring(m.get(filter=("subtree", f'<flow-protection xmlns="{FP}"><nsfs>'
                                              f"<nsf><name>{nsf}</name></nsf></nsfs>"
                                              "</flow-protection>")).xml.encode())
    finally:
        m.close_session()
    return data.findtext(f".//{{{FP}}}session/{{{FP}}}state")


def agent_running(gl: Any, side: str) -> bytes:
    m = gl.connect(side)
    try:
        return m.get_config("running").data_xml.encode()
    finally:
        m.close_session()


def entries(xml: bytes, kind: str = "sad-entry") -> set[str]:
    root = etree.fromstring(xml)
    return {e.findtext(f"{{{IK}}}name") or "" for e in root.iter(f"{{{IK}}}{kind}")}


def ping(gl: Any, count: int = 3, interval: str = "0.2") -> subprocess.CompletedProcess[str]:
    from nsf_agent.userspace.lab import HOST_B

    return gl.lab.run(gl.lab.host_a, ["ping", "-n", "-c", str(count), "-i", interval, "-W", "2",
                                      HOST_B], timeout=120)


def edit(gl: Any, body: str, op: str = "merge") -> None:
    m = gl.connect()
    try:
        m.edit_config(target="running", default_operation=op,
                      config=f'<config xmlns="{NC}"><flow-protection xmlns="{FP}">{body}'
                      "</flow-protection></config>")
    finally:
        m.close_session()


def policy_xml(name: str = "g2g", extra: str = "", a_prefix: str = "", b_prefix: str = "",
               profile: str = "lab") -> str:
    ap = f"<prefix>{a_prefix}</prefix>" if a_prefix else ""
    bp = f"<prefix>{b_prefix}</prefix>" if b_prefix else ""
    return (f"<policy><name>{name}</name><endpoint-a><nsf>gwa</nsf>{ap}</endpoint-a>"
            f"<endpoint-b><nsf>gwb</nsf>{bp}</endpoint-b><crypto-profile>{profile}"
            f"</crypto-profile>{extra}</policy>")


def apply_policy(gl: Any, name: str = "g2g", extra: str = "") -> None:
    edit(gl, f"<policies>{policy_xml(name, extra)}</policies>")


def delete_policy(gl: Any, name: str = "g2g") -> None:
    edit(gl, f'<policies><policy xmlns:nc="{NC}" nc:operation="remove"><name>{name}</name>'
         "</policy></policies>")


def wait_clean(gl: Any) -> None:
    """No policy left on the controller and no controller entry left on either agent."""
    poll(lambda: policy_state(gl, "g2g") is None, 30, "the policy to be gone")
    for side in ("a", "b"):
        poll(lambda side=side: not entries(agent_running(gl, side), "sad-entry")
             and not entries(agent_running(gl, side), "spd-entry"), 30,
             f"agent {side} to hold no SPD/SAD entries")


def collect_keys(gl: Any) -> None:
    db = gl.workdir / "controller" / "controller.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        for (keys,) in con.execute("SELECT keys FROM sa"):
            import json

            for v in json.loads(keys).values():
                if v:
                    ALL_KEYS.add(v)
    finally:
        con.close()


def capture_socket(gl: Any) -> socket.socket:
    s = gl.lab.socket_in(gl.lab.gw_a, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((gl.lab.gw_link_a, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(s.recv(65536))
        except BlockingIOError:
            return out


class Notifications:
    """A subscription to an agent's notification stream (sadb-expire etc.)."""

    def __init__(self, gl: Any, side: str) -> None:
        self.m = gl.connect(side)
        self.m.create_subscription()

    def drain(self) -> list[etree._Element]:
        out = []
        while True:
            n = self.m.take_notification(block=False)
            if n is None:
                return out
            out.append(etree.fromstring(n.notification_xml.encode()))

    def close(self) -> None:
        self.m.close_session()


def hard_expiries(notes: list[etree._Element]) -> list[str]:
    return [n.findtext(f".//{{{IK}}}ipsec-sa-name") or "" for n in notes
            if n.find(f".//{{{IK}}}sadb-expire") is not None
            and n.findtext(f".//{{{IK}}}soft-lifetime-expire") == "false"]


# ---- tests ------------------------------------------------------------------------------------


def test_policy_protects_traffic_with_controller_spis(gl: Any) -> None:
    cap = capture_socket(gl)
    try:
        apply_policy(gl)
        poll(lambda: status(gl, "g2g") == "active", 30, "policy g2g active")
        drain(cap)
        r = ping(gl, 5)
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout
        frames = drain(cap)
        collect_keys(gl)
        p = policy_state(gl, "g2g")
        assert p is not None
        # every SPI the controller ever used for this policy (the schedule may have rekeyed)
        spis = {int(s.findtext(f"{{{FP}}}spi") or 0) for s in p.iter(f"{{{FP}}}sa")}
        db = gl.workdir / "controller" / "controller.db"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        spis |= {r[0] for r in con.execute("SELECT spi FROM sa")}
        con.close()
    finally:
        cap.close()
    ip = [f[14:] for f in frames if f[12:14] == b"\x08\x00"]
    assert len(ip) >= 10, "expected the pings (both ways) on the gateway link"
    protos = {pkt[9] for pkt in ip}
    assert protos == {50}, f"gw link carried non-ESP IPv4: protocols {protos}"
    seen = {int.from_bytes(pkt[(pkt[0] & 0xF) * 4:][:4], "big") for pkt in ip}
    assert seen <= spis, f"SPIs on the wire {seen} not allocated by the controller {spis}"
    assert len(seen) >= 2
    # both NSFs hold the policy's SPD entries
    for side in ("a", "b"):
        assert {"fp/g2g/0/out", "fp/g2g/0/in"} <= entries(agent_running(gl, side), "spd-entry")

    # deleted → gone on both NSFs
    delete_policy(gl)
    wait_clean(gl)
    assert ping(gl, 1).returncode != 0


def test_bad_input_is_refused_and_nothing_pushed(gl: Any) -> None:
    from ncclient.operations.rpc import RPCError

    before = {s: agent_running(gl, s) for s in ("a", "b")}
    m = gl.connect()
    ctl_before = m.get_config("running").data_xml
    cases = {
        "unknown NSF": "<policies><policy><name>x</name><endpoint-a><nsf>gwa</nsf></endpoint-a>"
                       "<endpoint-b><nsf>nowhere</nsf></endpoint-b><crypto-profile>lab"
                       "</crypto-profile></policy></policies>",
        "overlapping selectors": "<policies>" + policy_xml("p1") + policy_xml(
            "p2", a_prefix="198.51.100.128/25") + "</policies>",
        "invalid lifetimes": "<policies>" + policy_xml(
            "p3", extra="<lifetime-soft><time>20</time></lifetime-soft>") + "</policies>",
        "invalid profile lifetimes": "<crypto-profiles><crypto-profile><name>bad</name>"
                                     "<lifetime-soft><time>9</time></lifetime-soft>"
                                     "<lifetime-hard><time>5</time></lifetime-hard>"
                                     "</crypto-profile></crypto-profiles>",
        "duplicate names": "<policies>" + policy_xml("dup") + policy_xml("dup") + "</policies>",
    }
    messages = {}
    try:
        for what, body in cases.items():
            with pytest.raises(RPCError) as ei:
                m.edit_config(target="running", config=f'<config xmlns="{NC}">'
                              f'<flow-protection xmlns="{FP}">{body}</flow-protection></config>')
            messages[what] = str(ei.value)
        # "create" of an existing name
        m.edit_config(target="running", config=f'<config xmlns="{NC}"><flow-protection '
                      f'xmlns="{FP}"><policies>{policy_xml("dup")}</policies></flow-protection>'
                      "</config>")
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=f'<config xmlns="{NC}" xmlns:nc="{NC}">'
                          f'<flow-protection xmlns="{FP}"><policies><policy nc:operation='
                          f'"create"><name>dup</name></policy></policies></flow-protection>'
                          "</config>")
        assert ei.value.tag == "data-exists"
        delete_policy(gl, "dup")
        assert m.get_config("running").data_xml == ctl_before
    finally:
        m.close_session()
    assert "nowhere" in messages["unknown NSF"]
    assert "overlaps" in messages["overlapping selectors"]
    assert "soft time lifetime" in messages["invalid lifetimes"]
    wait_clean(gl)
    for s in ("a", "b"):
        assert entries(agent_running(gl, s)) == entries(before[s]) == set()


def test_second_nsf_unreachable_leaves_first_unchanged(gl: Any) -> None:
    before = agent_running(gl, "a")
    gl.agents["b"].stop()
    try:
        poll(lambda: session_state(gl, "gwb") in ("disconnected", "connecting"), 20,
             "gwb session down")
        apply_policy(gl)
        poll(lambda: status(gl, "g2g") == "failed", 20, "status failed")
        p = policy_state(gl, "g2g")
        assert p is not None and "gwb" in (p.findtext(f"{{{FP}}}error-message") or "")
        assert agent_running(gl, "a") == before
        assert ping(gl, 1).returncode != 0
    finally:
        gl.agents["b"].start()
    # the agent is back: the controller reconnects, retries, the tunnel comes up
    poll(lambda: status(gl, "g2g") == "active", 30, "policy active after gwb returned")
    assert ping(gl, 3).returncode == 0
    delete_policy(gl)
    wait_clean(gl)


def test_agent_restart_with_lost_config_is_resynced(gl: Any) -> None:
    apply_policy(gl)
    poll(lambda: status(gl, "g2g") == "active", 30, "policy active")
    assert ping(gl, 2).returncode == 0
    gl.agents["b"].stop()
    st = gl.agent_state("b")
    for f in ("running.xml", "running.journal", "startup.xml"):  # the NSF lost its config
        (st / f).unlink(missing_ok=True)
    gl.agents["b"].start()
    poll(lambda: {"fp/g2g/0/out", "fp/g2g/0/in"} <= entries(agent_running(gl, "b"),
                                                             "spd-entry"),
         30, "resync of gwb's SPD entries")
    poll(lambda: ping(gl, 1).returncode == 0, 30, "traffic after resync")
    delete_policy(gl)
    wait_clean(gl)


def test_rekey_under_continuous_ping_loses_nothing(gl: Any) -> None:
    from nsf_agent.userspace.lab import HOST_B

    notes = [Notifications(gl, s) for s in ("a", "b")]
    apply_policy(gl)
    poll(lambda: status(gl, "g2g") == "active", 30, "policy active")
    start_gen = int(policy_state(gl, "g2g").findtext(f"{{{FP}}}generation") or 0)  # type: ignore[union-attr]
    proc = gl.lab.popen(gl.lab.host_a, ["ping", "-n", "-i", "0.05", "-W", "1", HOST_B],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def enough() -> bool:
            collect_keys(gl)
            p = policy_state(gl, "g2g")
            return p is not None and int(p.findtext(f"{{{FP}}}generation") or 0) >= start_gen + 5
        poll(enough, 40, "five rekeys")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m.group(1)), int(m.group(2))
    assert sent >= 100
    assert got == sent, f"lost {sent - got} of {sent} packets during rekeys"
    # old SAs are removed: eventually each NSF holds exactly the live generation
    def only_live() -> bool:
        p = policy_state(gl, "g2g")
        gen = p.findtext(f"{{{FP}}}generation") if p is not None else None
        want = {f"fp/g2g/0/a2b/{gen}", f"fp/g2g/0/b2a/{gen}"}
        return all(entries(agent_running(gl, s)) == want for s in ("a", "b"))
    poll(only_live, 20, "only the live generation on both NSFs")
    for n in notes:
        assert hard_expiries(n.drain()) == []
        n.close()
    delete_policy(gl)
    wait_clean(gl)


def test_acquire_creates_sas_on_demand(gl: Any) -> None:
    apply_policy(gl, extra="<ikeless><on-demand>true</on-demand></ikeless>")
    for side in ("a", "b"):
        poll(lambda side=side: {"fp/g2g/0/out", "fp/g2g/0/in"} <= entries(
            agent_running(gl, side), "spd-entry"), 20, f"SPD entries on {side}")
    assert entries(agent_running(gl, "a")) == set()
    assert policy_state(gl, "g2g").findtext(f"{{{FP}}}sa") is None  # type: ignore[union-attr]
    # traffic → sadb-acquire on gwA → the controller creates the SAs
    poll(lambda: ping(gl, 1).returncode == 0, 30, "ping through SAs created on demand")
    assert status(gl, "g2g") in ("active", "rekeying")
    assert entries(agent_running(gl, "a")) >= {"fp/g2g/0/a2b/0", "fp/g2g/0/b2a/0"} or (
        len(entries(agent_running(gl, "a"))) >= 2)
    delete_policy(gl)
    wait_clean(gl)


def test_controller_sigkill_and_restart_resumes_schedule(gl: Any) -> None:
    from nsf_agent.userspace.lab import HOST_B

    notes = [Notifications(gl, s) for s in ("a", "b")]
    apply_policy(gl)
    poll(lambda: status(gl, "g2g") == "active", 30, "policy active")
    proc = gl.lab.popen(gl.lab.host_a, ["ping", "-n", "-i", "0.05", "-W", "1", HOST_B],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ctl = gl.controller
        for _ in range(3):
            # kill mid-schedule: right after a rekey step started
            gen = int(policy_state(gl, "g2g").findtext(f"{{{FP}}}generation") or 0)  # type: ignore[union-attr]
            poll(lambda gen=gen: status(gl, "g2g") == "rekeying" or int(
                policy_state(gl, "g2g").findtext(f"{{{FP}}}generation") or 0) > gen,  # type: ignore[union-attr]
                 20, "a rekey to start")
            ctl.signal(signal.SIGKILL)
            ctl.proc.wait(10)
            time.sleep(0)  # restart at once; the SAs' hard lifetime is 8 s
            ctl.start()
            poll(lambda: status(gl, "g2g") == "active", 30, "policy active after restart")
        gen = int(policy_state(gl, "g2g").findtext(f"{{{FP}}}generation") or 0)  # type: ignore[union-attr]
        # the schedule goes on: two more rekeys past the last restart, beyond the hard lifetime
        poll(lambda: int(policy_state(gl, "g2g").findtext(f"{{{FP}}}generation") or 0)  # type: ignore[union-attr]
             >= gen + 3, 30, "rekeys after the restart")
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
    for n in notes:
        expired = hard_expiries(n.drain())
        n.close()
        assert expired == [], f"SAs reached their hard lifetime: {expired}"
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    # The acceptance point is that no SA reaches its hard lifetime (checked above). A kill
    # in the middle of a two-NSF transaction can cost a short burst while the restarted
    # controller cancels the leftover confirmed commit and resyncs both NSFs (seen: up to
    # 11 packets = 0.55 s, in about one run of four); the tunnel must never be down for
    # longer than 2 s (40 packets at 50 ms).
    lost = int(m.group(1)) - int(m.group(2))
    assert lost <= 40, out
    collect_keys(gl)
    delete_policy(gl)
    wait_clean(gl)


def test_keys_never_in_logs(gl: Any) -> None:
    collect_keys(gl)
    assert len(ALL_KEYS) >= 4
    logs = [gl.workdir / "controller.log", gl.workdir / "agent-a.log",
            gl.workdir / "agent-b.log", *gl.workdir.glob("agent-*/datapath.log")]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    assert "DEBUG" in text  # the controller logged at DEBUG level
    for k in ALL_KEYS:
        colon = ":".join(k[i:i + 2] for i in range(0, len(k), 2))
        assert k not in text and colon not in text, "a key reached a log file"
