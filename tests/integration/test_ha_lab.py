"""HA acceptance (#21): two controller processes (`python -m controller.cli serve`, active and
standby) on a real PostgreSQL server in the management namespace, two real agents
(userspace ESP) in gateway namespaces, lifetimes soft 3 s / hard 8 s so that rekeys run all
the time, a continuous ping through the tunnel.

Each trial kills the active (SIGKILL) while a rekey is under way; the standby must take over
within lease + 2 s, the killed one comes back as the new standby. Last, the active is paused
(SIGSTOP, a partition): the standby takes over and rekeys; after SIGCONT the old one exits
(status 75) without having touched anything. Afterwards: no SA reached
its hard lifetime (the agents' sadb-expire notifications), no SPI was ever given to two SAs,
the store and both NSFs hold the same SAs, and the ping kept going.

HA_TRIALS (default 10) sets the number of trials. Marked `soak` (10 trials: ~75 s), so
`make test` skips it; `make test-soak` (CI: .ci/run) runs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (network namespaces, TUN, raw sockets)"),
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.soak,  # 10 trials take ~75 s: make test-soak (tests/conftest.py)
]

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
IK = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
ROOT = Path(__file__).resolve().parents[2]
TTL = 1.5
PORTS = {"ctl-a": 8300, "ctl-b": 8301}


def _lab_classes() -> Any:
    from gateway_lab import ADMIN_PASSWORD, Daemon, GatewayLab

    class HaLab(GatewayLab):  # type: ignore[misc]
        """GatewayLab with PostgreSQL and two controllers in the management namespace."""

        dsn: str = ""
        controllers: dict[str, Any]

        def setup_controllers(self) -> None:
            from netconf_core.auth import hash_password

            self.controllers = {}
            dsn_file = self.workdir / "pg.dsn"
            dsn_file.write_text(self.dsn + "\n")
            os.chmod(dsn_file, 0o600)
            for name, port in PORTS.items():
                st = self.workdir / name
                cfg = self.workdir / f"{name}.toml"
                cfg.write_text(
                    f'[server]\nhost = "127.0.0.1"\nport = {port}\nstate_dir = "{st}"\n\n'
                    "[controller]\nrekey_grace = 1.0\nreconnect_min = 0.2\n"
                    "reconnect_max = 2.0\nretry_max = 2.0\nconfirm_timeout = 30\n\n"
                    f'[store]\nbackend = "postgres"\ndsn_file = "{dsn_file}"\n\n'
                    f'[ha]\nlease_ttl = {TTL}\nadvertise = "127.0.0.1:{port}"\n\n'
                    f'[[users]]\nname = "admin"\n'
                    f'password_hash = "{hash_password(ADMIN_PASSWORD)}"\n')
                self.controllers[name] = Daemon(
                    name, self.mgmt,
                    ["env", f"PYTHONPATH={ROOT}", sys.executable, "-m", "controller.cli",
                     "serve", "-c", str(cfg), "--ready-file",
                     str(self.workdir / f"{name}.ready"), "--log-level", "DEBUG"],
                    self.workdir / f"{name}.log", self.workdir / f"{name}.ready")

        def destroy(self) -> None:
            for d in getattr(self, "controllers", {}).values():
                with contextlib.suppress(Exception):
                    d.stop(5)
            super().destroy()

        def nc(self, name: str) -> Any:
            import ncclient.transport.session as nc_session
            from ncclient import manager

            from nsf_agent.userspace.lab import in_netns

            nc_session.TICK = 0.001
            with in_netns(self.mgmt):
                return manager.connect(host="127.0.0.1", port=PORTS[name], username="admin",
                                       password=ADMIN_PASSWORD, hostkey_verify=False,
                                       allow_agent=False, look_for_keys=False, timeout=30)

    return HaLab


@pytest.fixture(scope="module")
def hl() -> Iterator[Any]:
    from nsf_agent.userspace.lab import unique_prefix
    from tests.pgserver import pg_server, skip_reason

    why = skip_reason()
    if why:
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="i2nsf-ha-"))
    lab = _lab_classes()(unique_prefix("iha"), work, soft=3, hard=8)
    stack = contextlib.ExitStack()
    try:
        work.mkdir(parents=True, exist_ok=True)
        from gateway_lab import write_key

        lab.client_pub = write_key(work / "controller_id_ed25519")
        lab.build()
        pg = stack.enter_context(pg_server(netns=lab.mgmt))
        lab.dsn = pg.dsn()
        for side in ("a", "b"):
            lab.setup_agent(side)
            lab.agents[side].start()
        lab.setup_controllers()
        lab.controllers["ctl-a"].start()
        poll(lambda: accepts_edits(lab, "ctl-a"), 20, "ctl-a to become active")
        lab.controllers["ctl-b"].start()
        yield lab
    finally:
        lab.destroy()
        stack.close()
        if not os.environ.get("HA_KEEP"):  # HA_KEEP=1: keep the daemons' logs
            shutil.rmtree(work, ignore_errors=True)


def poll(pred: Any, timeout: float, what: str) -> Any:
    from gateway_lab import poll as _poll

    return _poll(pred, timeout, what)


def edit(hl: Any, name: str, config: str) -> None:
    m = hl.nc(name)
    try:
        m.edit_config(target="running", config=config)
    finally:
        m.close_session()


def accepts_edits(hl: Any, name: str) -> bool:
    from ncclient.operations.rpc import RPCError

    try:
        edit(hl, name, f'<config xmlns="{NC}"/>')
        return True
    except RPCError:
        return False


def lease(hl: Any) -> tuple[str, int] | None:
    import psycopg

    from nsf_agent.userspace.lab import in_netns

    with in_netns(hl.mgmt):
        conn = psycopg.connect(hl.dsn, connect_timeout=5)
    with conn:
        row = conn.execute("SELECT address, epoch FROM lease").fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


def store_sas(hl: Any) -> set[tuple[str, int]]:
    import psycopg

    from nsf_agent.userspace.lab import in_netns

    with in_netns(hl.mgmt):
        conn = psycopg.connect(hl.dsn, connect_timeout=5)
    with conn:
        return {(f"fp/{p}/{f}/{'a2b' if a else 'b2a'}/{g}", int(s)) for p, f, a, g, s in
                conn.execute("SELECT policy, flow, a2b, generation, spi FROM sa")}


def policy(hl: Any, name: str) -> tuple[str | None, int]:
    m = hl.nc(name)
    try:
        data = etree.fromstring(m.get(filter=("subtree", f'<flow-protection-state xmlns="{FP}"/>'
                                              )).xml.encode())
    finally:
        m.close_session()
    for p in data.iter(f"{{{FP}}}policy"):
        if p.findtext(f"{{{FP}}}name") == "g2g":
            return p.findtext(f"{{{FP}}}status"), int(p.findtext(f"{{{FP}}}generation") or 0)
    return None, -1


def agent_sas(hl: Any, side: str) -> set[tuple[str, int]]:
    m = hl.connect(side)
    try:
        root = etree.fromstring(m.get_config("running").data_xml.encode())
    finally:
        m.close_session()
    return {(e.findtext(f"{{{IK}}}name") or "", int(e.findtext(f".//{{{IK}}}spi") or 0))
            for e in root.iter(f"{{{IK}}}sad-entry")}


def test_kill_active_during_rekeys(hl: Any) -> None:
    from test_controller_lab import Notifications, hard_expiries

    from nsf_agent.userspace.lab import HOST_B

    trials = int(os.environ.get("HA_TRIALS", "10"))
    active, standby = "ctl-a", "ctl-b"
    notes = [Notifications(hl, s) for s in ("a", "b")]
    edit(hl, active, hl.inventory_xml())
    poll(lambda: policy(hl, active)[0] == "active", 30, "policy active")
    spis: dict[str, int] = {}  # every SA name seen → its SPI

    def record() -> None:
        for side in ("a", "b"):
            for n, spi in agent_sas(hl, side):
                assert spis.setdefault(n, spi) == spi, f"{n} changed SPI"

    ping = hl.lab.popen(hl.lab.host_a, ["ping", "-n", "-i", "0.05", "-W", "1", HOST_B],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    takeovers: list[float] = []
    try:
        for _ in range(trials):
            record()
            _, gen = policy(hl, active)
            poll(lambda gen=gen, act=active: (st := policy(hl, act))[0] == "rekeying"
                 or st[1] > gen, 20, "a rekey to start")
            before = lease(hl)
            assert before is not None and before[0] == f"127.0.0.1:{PORTS[active]}"
            hl.controllers[active].kill()
            t0 = time.monotonic()
            poll(lambda sb=standby: accepts_edits(hl, sb), TTL + 2, f"{standby} to take over")
            takeovers.append(time.monotonic() - t0)
            assert lease(hl) == (f"127.0.0.1:{PORTS[standby]}", before[1] + 1)
            hl.controllers[active].start()  # back as the standby
            active, standby = standby, active
            poll(lambda act=active: policy(hl, act)[0] == "active", 20, "policy active again")
            # Trials are independent: the next kill comes after the new active finished a
            # rekey of its own (two fail-overs within one SA's soft-to-hard gap of 5 s are
            # beyond what this lab's lifetimes allow, see docs/ha.md)
            poll(lambda act=active, g=gen: policy(hl, act)[1] >= g + 2, 20,
                 "a rekey completed by the new active")
        # a partitioned old leader: SIGSTOP the active, the standby takes over and rekeys;
        # after SIGCONT the old one is fenced (touches nothing) and exits with status 75
        paused = hl.controllers[active]
        paused.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        poll(lambda sb=standby: accepts_edits(hl, sb), TTL + 2, f"{standby} to take over")
        takeovers.append(time.monotonic() - t0)
        active, standby = standby, active
        _, gen = policy(hl, active)
        poll(lambda act=active, g=gen: policy(hl, act)[1] >= g + 1, 20,
             "a rekey by the new active while the old one is paused")
        epoch = lease(hl)
        paused.signal(signal.SIGCONT)
        assert paused.proc is not None
        assert paused.proc.wait(15) == 75
        assert lease(hl) == epoch and accepts_edits(hl, active)
        paused.start()  # back as the standby
        record()
        _, gen = policy(hl, active)
        poll(lambda: policy(hl, active)[1] >= gen + 2, 30, "rekeys after the last take-over")
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=10)
    for n in notes:
        expired = hard_expiries(n.drain())
        n.close()
        assert expired == [], f"SAs reached their hard lifetime: {expired}"
    record()
    by_spi: dict[tuple[str, int], str] = {}
    for name, spi in spis.items():
        key = (name.split("/")[3], spi)  # direction, SPI: one destination each
        assert by_spi.setdefault(key, name) == name, f"SPI {spi:#x} reused: {name}, " \
            f"{by_spi[key]}"

    def agree() -> bool:
        st = store_sas(hl)
        return agent_sas(hl, "a") == st == agent_sas(hl, "b")
    poll(agree, 20, "store and both NSFs to hold the same SAs")
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out
    sent, got = int(m.group(1)), int(m.group(2))
    print(f"HA: {trials} kills + 1 pause, take-overs {max(takeovers):.2f} s max / "
          f"{sum(takeovers) / len(takeovers):.2f} s mean (lease {TTL} s); ping lost "
          f"{sent - got} of {sent}; {len(spis)} SAs, no SPI reused")
    assert max(takeovers) <= TTL + 2
    assert sent - got <= 40 * trials // 4, out  # never down for long (see docs/ha.md)
