"""Two controller processes on one real PostgreSQL server with real agents (SSH NETCONF on
127.0.0.1, null data plane; no root needed) (#21): the first is elected, the second is a
standby that refuses changes naming the active, serves operational state from the store
and follows the active's configuration (get-config); kill -9 of the active → the standby
takes over within lease + 2 s and rekeys with the next epoch, which the NSFs then hold;
a paused (SIGSTOP) active is fenced: after SIGCONT it touches neither store nor NSFs and
exits."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from controller.core.fence import FENCE_NS
from netconf_core.polling import wait_until
from tests.integration.ctlproc import ControllerProcess
from tests.integration.ncharness import NC_NS, PASSWORD, AgentThread, names
from tests.integration.test_controller_netconf import PROFILE, nsf_xml, policy
from tests.pgserver import PgServer, fresh_dsn

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"
TTL = 1.0


class HaController(ControllerProcess):
    def __init__(self, workdir: Path, dsn_file: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir, restconf=False, metrics=False, extra=(
            f'[store]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n'
            f'[ha]\nlease_ttl = {TTL}\nadvertise = "{name}"\n'))
        self.name = name

    def edit(self, body: str) -> None:
        with self.netconf() as m:
            m.edit_config(target="running", config=f'<config xmlns="{NC_NS}">'
                          f'<flow-protection xmlns="{FP}">{body}</flow-protection></config>')

    def status(self, pol: str) -> tuple[str | None, str | None]:
        with self.netconf() as m:
            st = etree.fromstring(m.get(filter=("subtree", f'<flow-protection-state '
                                                f'xmlns="{FP}"/>')).data_xml.encode())
        for p in st.iter(Q + "policy"):
            if p.findtext(Q + "name") == pol:
                return p.findtext(Q + "status"), p.findtext(Q + "generation")
        return None, None

    def rekey(self, pol: str) -> str:
        with self.netconf() as m:
            reply = m.dispatch(etree.fromstring(
                f'<rekey-policy xmlns="{FP}"><policy>{pol}</policy></rekey-policy>'))
        return etree.fromstring(reply.xml.encode()).findtext(f".//{Q}generation") or ""

    def config_policies(self) -> list[str]:
        with self.netconf() as m:
            cfg = etree.fromstring(m.get_config(source="running").data_xml.encode())
        return [p.findtext(Q + "name") or "" for p in cfg.iter(Q + "policy")]

    def accepts_edits(self) -> bool:
        try:
            self.edit("")
            return True
        except RPCError:
            return False


def lease_row(dsn: str) -> tuple[str, int] | None:
    with psycopg.connect(dsn) as c:
        row = c.execute("SELECT address, epoch FROM lease").fetchone()
    return None if row is None else (row[0], int(row[1]))


def fence_epoch(agent: AgentThread) -> int | None:
    run = etree.fromstring(agent.snapshot()["running"])
    el = run.find(f".//{{{FENCE_NS}}}epoch")
    return None if el is None else int(el.text or 0)


@pytest.fixture
def lab(tmp_path: Path, pg: PgServer) -> Iterator[dict[str, Any]]:
    dsn = fresh_dsn(pg)
    dsn_file = tmp_path / "pg.dsn"
    dsn_file.write_text(dsn + "\n")
    os.chmod(dsn_file, 0o600)
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    agents: dict[str, AgentThread] = {}
    ctls: list[HaController] = []
    try:
        for n in ("s1", "s2"):
            agents[n] = AgentThread(tmp_path / n).start()
        yield {"dsn": dsn, "dsn_file": dsn_file, "agents": agents, "tmp": tmp_path,
               "ctls": ctls}
    finally:
        for c in ctls:
            if c.proc is not None and c.proc.poll() is None:
                os.kill(c.proc.pid, signal.SIGCONT)
            c.stop()
        for a in agents.values():
            a.stop()


def test_failover_and_fencing(lab: dict[str, Any]) -> None:
    dsn, agents = lab["dsn"], lab["agents"]

    def ctl(name: str) -> HaController:
        c = HaController(lab["tmp"] / name, lab["dsn_file"], name).start()
        lab["ctls"].append(c)
        return c

    a = ctl("ctl-a")
    wait_until(a.accepts_edits, 15, "ctl-a to become active")
    assert lease_row(dsn) == ("ctl-a", 1)
    b = ctl("ctl-b")
    with pytest.raises(RPCError) as exc:
        b.edit("")
    assert exc.value.tag == "operation-not-supported"
    assert "standby" in exc.value.message and "ctl-a (epoch 1)" in exc.value.message

    a.edit("<nsfs>" + nsf_xml(lab, "s1", 1) + nsf_xml(lab, "s2", 2) + "</nsfs>" + PROFILE
           + policy("x", "s1", "s2"))
    wait_until(lambda: a.status("x")[0] == "active", 20, "policy x active on ctl-a")
    assert b.status("x") == a.status("x")  # the standby reads state from the store
    wait_until(lambda: b.config_policies() == ["x"], 5 * TTL,
               "the standby's get-config to follow the active's configuration")
    assert fence_epoch(agents["s1"]) == fence_epoch(agents["s2"]) == 1
    sad_before = set(names(agents["s1"].snapshot()["running"], "sad-entry"))

    # kill -9 the active: the standby takes over within lease + 2 s
    assert a.proc is not None
    a.proc.kill()
    t0 = time.monotonic()
    wait_until(lambda: lease_row(dsn) == ("ctl-b", 2), TTL + 2, "ctl-b elected")
    wait_until(b.accepts_edits, TTL + 2 - (time.monotonic() - t0), "ctl-b to accept edits")
    took = time.monotonic() - t0
    assert took <= TTL + 2, took
    print(f"failover (kill -9): {took:.2f} s with lease {TTL} s")
    # right after a take-over the status may be "stale" until the NSFs were checked
    wait_until(lambda: b.status("x")[0] == "active", 10, "policy x active on ctl-b")
    gen = b.rekey("x")
    wait_until(lambda: b.status("x") == ("active", gen), 20, "rekey by ctl-b")
    assert fence_epoch(agents["s1"]) == fence_epoch(agents["s2"]) == 2
    sad_after = set(names(agents["s1"].snapshot()["running"], "sad-entry"))
    assert sad_after != sad_before and all(n.endswith(f"/{gen}") for n in sad_after)

    # a paused active is fenced: ctl-a comes back as standby, ctl-b is stopped (SIGSTOP)
    a2 = ctl("ctl-a2")
    wait_until(lambda: lease_row(dsn) is not None and a2.status("x")[0] == "active", 15,
               "ctl-a2 up as standby")
    assert b.proc is not None
    os.kill(b.proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    wait_until(lambda: lease_row(dsn) == ("ctl-a2", 3), TTL + 2, "ctl-a2 elected")
    wait_until(a2.accepts_edits, TTL + 2 - (time.monotonic() - t0) + 0.5, "ctl-a2 active")
    gen2 = a2.rekey("x")
    wait_until(lambda: a2.status("x") == ("active", gen2), 20, "rekey by ctl-a2")
    assert fence_epoch(agents["s1"]) == fence_epoch(agents["s2"]) == 3
    snap = {n: ag.snapshot()["running"] for n, ag in agents.items()}
    os.kill(b.proc.pid, signal.SIGCONT)
    wait_until(lambda: b.proc.poll() is not None, 10, "the fenced ctl-b to exit")  # type: ignore[union-attr]
    assert {n: ag.snapshot()["running"] for n, ag in agents.items()} == snap
    assert lease_row(dsn) == ("ctl-a2", 3) and a2.status("x") == ("active", gen2)
    log = b.log.read_text()
    assert "lost the leadership lease" in log or "not renewed in time" in log
    assert b.proc.returncode == 75  # non-zero: Restart=on-failure brings it back

    # a standby that never led stops cleanly, and leaves the lease alone
    c = ctl("ctl-c")
    wait_until(lambda: c.config_policies() == ["x"], 5 * TTL, "ctl-c up as standby")
    assert c.proc is not None
    c.stop()
    assert c.proc.returncode == 0 and "Traceback" not in c.log.read_text()
    assert lease_row(dsn) == ("ctl-a2", 3) and a2.accepts_edits()
