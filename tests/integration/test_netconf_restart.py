"""Crash safety: SIGKILL the agent process during a stream of commits, ≥ 20 times.

After each restart, running must be exactly the last acknowledged commit or the one in flight
when the process died (its reply may have been lost), and startup likewise for the
copy-config running → startup that follows each commit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

from lxml import etree
from ncclient.operations import RPCError
from ncclient.transport.errors import TransportError
from ncharness import (
    IKELESS_NS,
    PASSWORD,
    PASSWORD_HASH,
    connect,
    ikeless_config,
    spd_entry,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
KILLS = 20


def start_agent(cfg: Path, ready: Path) -> tuple[subprocess.Popen[bytes], int]:
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nsf_agent.cli", "run", "-c", str(cfg),
         "--ready-file", str(ready), "--log-level", "WARNING"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"agent exited: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        return ready.exists()

    wait_for(up, timeout=30, what="agent start")
    return proc, int(ready.read_text())


def spd_names(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [e.findtext(f"{{{IKELESS_NS}}}name") or ""
            for e in root.iter(f"{{{IKELESS_NS}}}spd-entry")]


def test_sigkill_during_commits(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\nstate_dir = "{state}"\n'
        f'[yang]\nmodules = ["ietf-i2nsf-ikeless"]\n'
        '[dataplane]\nappliers = ["null"]\naccept_unenforced = true\n'  # NETCONF only
        f'[[users]]\nname = "admin"\npassword_hash = "{PASSWORD_HASH}"\n'
    )
    ready = tmp_path / "ready"
    rng = random.Random(9061)
    acked_running: list[str] = []  # entry names of the last acknowledged commit
    acked_startup: list[str] = []
    inflight_running: list[str] = []  # the commit whose reply may have been lost
    inflight_startup: list[str] = []
    n = 0
    for round_ in range(KILLS):
        proc, port = start_agent(cfg, ready)
        try:
            m = connect(port, "admin", PASSWORD)
            running = spd_names(m.get_config("running").xml)
            startup = spd_names(m.get_config("startup").xml)
            assert running in (acked_running, inflight_running) if round_ else running == [], (
                f"round {round_}: running {running} is neither acked {acked_running} nor "
                f"in-flight {inflight_running}")
            assert startup in (acked_startup, inflight_startup) if round_ else startup == [], (
                f"round {round_}: startup {startup}")
            acked_running, acked_startup = running, startup
            inflight_running, inflight_startup = running, startup
            stop = threading.Event()

            def stream(m=m, stop=stop) -> None:  # type: ignore[no-untyped-def]
                nonlocal n, acked_running, acked_startup, inflight_running, inflight_startup
                while not stop.is_set():
                    n += 1
                    name = f"e{n}"
                    want = [*acked_running, name]  # spd-entry is ordered-by user
                    try:
                        m.edit_config(target="candidate", config=ikeless_config(spd_entry(name)))
                        inflight_running = want
                        m.commit()
                        acked_running = want
                        inflight_startup = want
                        m.copy_config(source="running", target="startup")
                        acked_startup = want
                    except (RPCError, TransportError, OSError, EOFError):
                        return
                    except Exception:  # ncclient raises assorted errors on a dead session
                        return

            t = threading.Thread(target=stream, daemon=True)
            t.start()
            # let some commits through, then kill at a random point
            done = n
            wait_for(lambda done=done: n >= done + rng.randint(1, 6), timeout=30,
                     what="commits")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            stop.set()
            t.join(timeout=30)
            assert not t.is_alive()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # a final clean start still serves the last state
    proc, port = start_agent(cfg, ready)
    try:
        with connect(port, "admin", PASSWORD) as m:
            assert spd_names(m.get_config("running").xml) in (acked_running, inflight_running)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert n > KILLS
