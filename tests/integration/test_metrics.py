"""Prometheus /metrics of a real controller process and real agents (SSH, NETCONF, null
data plane): the values follow real events — sessions opening, a policy becoming active,
its SAs, transactions and their latency histogram, a rekey, a removal."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from ctlproc import ControllerProcess
from ncharness import NC_NS, PASSWORD, AgentThread

from netconf_core.metrics import MetricsConfig
from netconf_core.polling import wait_until

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"


def scrape(port: int) -> dict[str, float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out = {}
    for line in r.text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    agents: dict[str, AgentThread] = {}
    ctl = None
    try:
        for n in ("m1", "m2"):
            agents[n] = AgentThread(tmp_path / n, metrics=MetricsConfig(port=0)).start()
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        (tmp_path / "ctl-work").mkdir()
        ctl = ControllerProcess(tmp_path / "ctl-work", restconf=False).start()
        yield {"agents": agents, "ctl": ctl, "tmp": tmp_path}
    finally:
        if ctl is not None:
            ctl.stop()
        for a in agents.values():
            a.stop()


def _inventory(env: dict[str, Any]) -> str:
    nsfs = ""
    for i, (name, a) in enumerate(env["agents"].items(), start=1):
        key = asyncssh.read_private_key(str(env["tmp"] / name / "ssh_host_ed25519_key"))
        nsfs += (f"<nsf><name>{name}</name><management><address>127.0.0.1</address>"
                 f"<port>{a.port}</port><username>admin</username>"
                 f"<password-file>{env['tmp'] / 'pw'}</password-file>"
                 f"<host-key>{key.export_public_key().decode().strip()}</host-key>"
                 f"</management><data-plane-address>192.0.2.{i}</data-plane-address>"
                 f"<protected-prefix>10.{i}.0.0/16</protected-prefix></nsf>")
    return (f'<config xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>{nsfs}</nsfs>'
            "<crypto-profiles><crypto-profile><name>p</name><lifetime-soft><time>300</time>"
            "</lifetime-soft><lifetime-hard><time>600</time></lifetime-hard>"
            "</crypto-profile></crypto-profiles><policies><policy><name>pm</name>"
            "<endpoint-a><nsf>m1</nsf></endpoint-a><endpoint-b><nsf>m2</nsf></endpoint-b>"
            "<crypto-profile>p</crypto-profile></policy></policies></flow-protection></config>")


def test_metrics_follow_real_events(env: dict[str, Any]) -> None:
    ctl: ControllerProcess = env["ctl"]
    a1: AgentThread = env["agents"]["m1"]
    a1_port = a1.agent._metrics_http.port  # type: ignore[union-attr]
    assert ctl.metrics_port is not None
    before = scrape(ctl.metrics_port)
    assert before.get('i2nsf_controller_policies{status="active"}') == 0
    assert before.get("i2nsf_controller_sas") == 0
    a_before = scrape(a1_port)
    assert a_before["i2nsf_agent_sad_entries"] == 0

    with ctl.netconf() as m:
        m.edit_config(target="running", config=_inventory(env))
        during = scrape(ctl.metrics_port)
        assert during["i2nsf_controller_netconf_sessions"] >= 1

    def active() -> dict[str, float] | None:
        s = scrape(ctl.metrics_port)
        return s if s.get('i2nsf_controller_policies{status="active"}') == 1 else None

    after = wait_until(active, 30, "policy pm to be active in /metrics")
    assert after['i2nsf_controller_nsf_sessions{state="connected"}'] == 2
    assert after["i2nsf_controller_sas"] >= 2  # a2b and b2a, on both NSFs
    assert after["i2nsf_controller_installs_done_total"] >= 1
    ok = 'i2nsf_controller_transaction_seconds_count{outcome="ok"}'
    assert after[ok] >= 1
    assert after['i2nsf_controller_transaction_seconds_sum{outcome="ok"}'] > 0
    assert after["i2nsf_controller_netconf_sessions_total"] > \
        before["i2nsf_controller_netconf_sessions_total"]
    # the agent: the controller's session, the SAD entries it installed
    agent = scrape(a1_port)
    assert agent["i2nsf_agent_netconf_sessions"] >= 1
    assert agent["i2nsf_agent_sad_entries"] == 2 and agent["i2nsf_agent_spd_entries"] == 2
    assert agent["i2nsf_agent_netconf_rpcs_total"] > a_before["i2nsf_agent_netconf_rpcs_total"]

    # a rekey is counted once done
    with ctl.netconf() as m:
        m.dispatch(_rekey("pm"))
    wait_until(lambda: scrape(ctl.metrics_port).get("i2nsf_controller_rekeys_done_total", 0)
               > after.get("i2nsf_controller_rekeys_done_total", 0), 30, "rekey counted")
    # removal: the policy and its SAs go, the agents' SAD empties
    with ctl.netconf() as m:
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><flow-protection xmlns="{FP}">'
            '<policies><policy nc:operation="delete"><name>pm</name></policy></policies>'
            "</flow-protection></config>"))
    wait_until(lambda: scrape(a1_port)["i2nsf_agent_sad_entries"] == 0, 30, "SAs removed")
    final = wait_until(lambda: (s := scrape(ctl.metrics_port))["i2nsf_controller_sas"] == 0
                       and s, 30, "controller SAs 0")
    assert final["i2nsf_controller_deletes_done_total"] >= 1
    assert sum(v for k, v in final.items() if k.startswith("i2nsf_controller_policies{")) == 0


def _rekey(name: str) -> Any:
    from lxml import etree

    el = etree.Element(f"{{{FP}}}rekey-policy", nsmap={None: FP})
    etree.SubElement(el, f"{{{FP}}}policy").text = name
    return el
