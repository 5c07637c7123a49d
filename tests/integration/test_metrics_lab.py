"""/metrics of real agents (userspace ESP data path) and the controller in the namespace lab:
SA packet and byte counters move with real traffic through the tunnel (a ping between the
hosts behind the gateways), a rekey is counted and shows up as new SAs."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from netconf_core.polling import wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces, TUN and raw sockets")


@pytest.fixture(scope="module")
def gl() -> Iterator[Any]:
    from gateway_lab import gateway_lab

    with gateway_lab("mtr", soft=30, hard=60, metrics=True) as lab:
        yield lab


def scrape(gl: Any, where: str) -> dict[str, float]:
    from gateway_lab import METRICS_PORT, MGMT

    from nsf_agent.userspace.lab import in_netns

    host = "127.0.0.1" if where == "controller" else MGMT[where][1]
    with in_netns(gl.mgmt), httpx.Client(timeout=10) as c:
        r = c.get(f"http://{host}:{METRICS_PORT}/metrics")
    assert r.status_code == 200
    out = {}
    for line in r.text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def total(s: dict[str, float], name: str) -> float:
    return sum(v for k, v in s.items() if k.startswith(name + "{"))


def ping(gl: Any, count: int) -> None:
    from nsf_agent.userspace.lab import HOST_B

    r = gl.lab.run(gl.lab.host_a, ["ping", "-n", "-c", str(count), "-i", "0.05", "-W", "2",
                                   HOST_B], timeout=60)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout


def _replay_one(gl: Any) -> float:
    """Capture one ESP packet gwA sends during a ping and put it on the wire again;
    returns gwB's replay drops before."""
    import socket

    from nsf_agent.userspace.lab import GW_A

    before = total(scrape(gl, "b"), "i2nsf_agent_sa_replay_dropped_total")
    s = gl.lab.socket_in(gl.lab.gw_a, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    try:
        s.bind((gl.lab.gw_link_a, 0))
        s.settimeout(5)
        ping(gl, 3)
        src = socket.inet_aton(GW_A)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = s.recv(65536)
            ip = frame[14:]
            if len(ip) > 20 and ip[9] == 50 and ip[12:16] == src:  # ESP from gwA
                s.send(frame)
                return before
        raise AssertionError("no ESP packet from gwA captured")
    finally:
        s.close()


def test_sa_counters_follow_traffic(gl: Any) -> None:
    r = gl.cli("policy", "apply", "g2g", "-a", "gwa", "-b", "gwb", "--profile", "lab",
               "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    ctl = scrape(gl, "controller")
    assert ctl['i2nsf_controller_policies{status="active"}'] == 1
    assert ctl["i2nsf_controller_sas"] >= 4
    assert ctl['i2nsf_controller_nsf_sessions{state="connected"}'] == 2
    assert ctl['i2nsf_controller_transaction_seconds_count{outcome="ok"}'] >= 1

    a0, b0 = scrape(gl, "a"), scrape(gl, "b")
    assert a0["i2nsf_agent_sad_entries"] == 2 and a0["i2nsf_agent_spd_entries"] >= 2
    ping(gl, 20)
    a1, b1 = scrape(gl, "a"), scrape(gl, "b")
    # 20 echo requests out of gwA and 20 replies into it (and the mirror on gwB)
    for before, after in ((a0, a1), (b0, b1)):
        assert total(after, "i2nsf_agent_sa_packets_total") - \
            total(before, "i2nsf_agent_sa_packets_total") >= 40
        assert total(after, "i2nsf_agent_sa_bytes_total") - \
            total(before, "i2nsf_agent_sa_bytes_total") >= 40 * 84
        assert total(after, "i2nsf_agent_sa_replay_dropped_total") == 0
        assert total(after, "i2nsf_agent_sa_failed_total") == 0
        # per-reason drops (i2nsf-sadb), per SA and for the whole NSF: present, and zero
        assert any(k.startswith("i2nsf_agent_sa_drops_total{") for k in after)
        assert any(k.startswith("i2nsf_agent_drops_total{") for k in after)
        assert total(after, "i2nsf_agent_sa_drops_total") == 0

    # a replayed ESP packet (captured on gwA's link, sent again) is dropped by gwB and
    # counted as a replay drop of that SA
    replay_drops = _replay_one(gl)
    wait_until(lambda: total(scrape(gl, "b"), "i2nsf_agent_sa_replay_dropped_total")
               >= replay_drops + 1, 10, "the replayed packet counted as a replay drop")
    b2 = scrape(gl, "b")
    assert b2.get('i2nsf_agent_drops_total{reason="replay"}', 0) + total(
        b2, "i2nsf_agent_sa_drops_total") >= 1

    names0 = {k for k in a1 if k.startswith("i2nsf_agent_sa_packets_total{")}
    r = gl.cli("policy", "rekey", "g2g", "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    ctl2 = scrape(gl, "controller")
    assert ctl2["i2nsf_controller_rekeys_done_total"] > ctl.get(
        "i2nsf_controller_rekeys_done_total", 0)
    ping(gl, 5)
    a2 = scrape(gl, "a")
    names2 = {k for k in a2 if k.startswith("i2nsf_agent_sa_packets_total{")}
    assert names2 - names0, "the rekey's new SAs show up with their own counters"
