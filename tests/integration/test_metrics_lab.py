"""/metrics of real agents (userspace ESP data path) and the controller in the namespace lab:
SA packet and byte counters move with real traffic through the tunnel (a ping between the
hosts behind the gateways), a rekey is counted and shows up as new SAs."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

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
