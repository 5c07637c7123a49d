"""Controller scale: provisioning rate, rekey rate and session count against many agents.

Setup (all on 127.0.0.1, in separate processes so that each is measured on its own):
  * an agent farm: up to 1,000 NETCONF servers (the shared server core with the null
    applier, one per port, no persistence) spread over one process per core (agent i in
    process i mod k; in a deployment each agent has a machine of its own), public key login;
  * the controller: `i2nsf-controller serve`, as in production (SQLite store, WAL, FULL sync);
  * this script: an ncclient client of the controller's northbound, like any user.

Phases
  1. provisioning: N site-pair policies across 50 agents in one edit-config; time until
     every policy is `active` (both NSFs committed) → policies/s, time to full protection;
  2. rekeys: 1,000 more policies (3,000 in all), then lifetimes cut to soft 2 s (a rekey
     due every 1.8 s per policy: ~1,667 rekeys/s offered, more than the target, so that the
     rate sustained is the controller's capacity) / hard 30 s;
     count completed rekeys (generation increments) over a window, less the policies the
     controller had to re-create (a rekey that would have finished after the hard lifetime;
     not make-before-break) → make-before-break rekeys/s sustained. A hard lifetime close
     to the soft one (`--rekey-hard 6`) measures how often the controller falls back to
     re-creation when it cannot keep up, not how fast it rekeys;
  3. sessions: add the remaining agents to the inventory (1,000 in all); time until every
     session is up; the controller's RSS.

Targets: ≥ 500 policies/s with 50 agents; ≥ 1,000 rekeys/s; 1,000 sessions in ≤ 60 s with
RSS ≤ 1 GiB. Usage: `python bench/controller_scale.py [--policies N] [--sessions S]`.

`--store postgres` (#21, docs/ha.md): the controller uses a PostgreSQL store (a real server
started for the run, as the tests do: tests/pgserver.py) with its leadership lease, as one
instance of an HA pair would; compare with a run on the default SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
Q = f"{{{FP}}}"
PASSWORD = "bench-pw"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---- the agent farm (child process) ---------------------------------------------------------


async def farm(n: int, workdir: Path, ident: int) -> None:
    from netconf_core.applier import NullApplier
    from netconf_core.auth import User, UserDb
    from netconf_core.datastore import Datastores
    from netconf_core.features import set_features
    from netconf_core.schema import YangSchema
    from netconf_core.server import NetconfServer, ServerConfig
    from netconf_core.ssh import SshConfig, SshTransport
    from netconf_core.yang_context import IPSEC_MODULES, create_context
    from nsf_agent.agent import NETCONF_FEATURES, PROTOCOL_MODULES

    ctx = create_context([*PROTOCOL_MODULES, *IPSEC_MODULES])
    set_features(ctx, "ietf-netconf", list(NETCONF_FEATURES))
    schema = YangSchema(ctx)
    users = UserDb([User("controller", None,
                         [(workdir / "client_key.pub").read_text().strip()])])
    loop = asyncio.get_running_loop()
    ports = []
    for _ in range(n):
        srv = NetconfServer(schema, ServerConfig(confirm_timeout=60))
        srv.bind_loop(loop)
        srv.attach(Datastores(schema, [NullApplier(keep=0)]))
        ssh = SshTransport(srv, users, SshConfig(host="127.0.0.1", port=0,
                                                 host_key_path=workdir / "farm_host_key"))
        await ssh.start()
        ports.append(ssh.port)
    tmp = workdir / f"farm-{ident}.json.tmp"
    tmp.write_text(json.dumps(ports))
    tmp.rename(workdir / f"farm-{ident}.json")
    stop = asyncio.Event()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()


# ---- helpers ----------------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB."""
    cur = peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU used by the controller and the agent farm over a phase: tells which one is the
    bottleneck (a process using ~1 s of CPU per second of wall time is saturated)."""

    def __init__(self, ctl: int, farm: list[int]) -> None:
        self.pids = (ctl, *farm)
        self.start()

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = [cpu_s(p) for p in self.pids]
        self.me0 = time.process_time()

    def used(self) -> tuple[float, float]:
        """CPU seconds (controller, agent farm) since `start`."""
        ctl, *farms = (cpu_s(p) - c for p, c in zip(self.pids, self.c0, strict=True))
        return ctl, sum(farms)

    def report(self) -> str:
        wall = time.monotonic() - self.t0
        ctl, *farms = (cpu_s(p) - c for p, c in zip(self.pids, self.c0, strict=True))
        farm = sum(farms)
        me = time.process_time() - self.me0
        return (f"  CPU over {wall:.1f} s: controller {ctl:.1f} s ({ctl / wall:.0%}), "
                f"agent farm ({len(farms)} processes) {farm:.1f} s ({farm / wall:.0%}), "
                f"this client {me:.1f} s")


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float, what: str,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            tail = ""
            if log is not None and log.exists():  # the work directory goes with the exit
                tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{what} exited with {proc.returncode}{tail}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.05)


class Client:
    """ncclient session to the controller's northbound."""

    def __init__(self, port: int) -> None:
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001
        self.m = manager.connect(host="127.0.0.1", port=port, username="admin",
                                 password=PASSWORD, hostkey_verify=False, allow_agent=False,
                                 look_for_keys=False, timeout=600)

    def edit(self, body: str) -> None:
        self.m.edit_config(target="running", config=f'<config xmlns="{NC}"><flow-protection '
                           f'xmlns="{FP}">{body}</flow-protection></config>')

    def policies(self) -> list[tuple[str, int]]:
        # the whole container (a plain selection: no per-node filtering on the server)
        filt = f'<flow-protection-state xmlns="{FP}"/>'
        d = etree.fromstring(self.m.get(filter=("subtree", filt)).data_xml.encode())
        return [(p.findtext(Q + "status") or "", int(p.findtext(Q + "generation") or 0))
                for p in d.iter(Q + "policy")]

    def next_generations(self, seen: int, timeout: float = 120.0
                         ) -> tuple[float, int, list[tuple[str, int]]]:
        """Poll (0.25 s between gets) until the sum of the policies' generations differs from
        `seen`: (when it was seen — the middle of that get —, the new sum, the policies).
        Not back to back: a `get` of thousands of policies' state keeps the controller's
        loop busy for a good part of its round trip, and a client asking without pause
        slows down the very waves it is timing."""
        deadline = time.monotonic() + timeout
        while True:
            t = time.monotonic()
            st = self.policies()
            g = sum(g for _, g in st)
            if g != seen or time.monotonic() > deadline:
                return (t + time.monotonic()) / 2, g, st
            time.sleep(0.25)

    def sessions(self) -> dict[str, int]:
        filt = f'<flow-protection xmlns="{FP}"><nsfs/></flow-protection>'
        d = etree.fromstring(self.m.get(filter=("subtree", filt)).data_xml.encode())
        out: dict[str, int] = {}
        for s in d.iter(f"{Q}state"):
            out[s.text or ""] = out.get(s.text or "", 0) + 1
        return out


def nsf_xml(i: int, port: int, key: Path, host_key: str) -> str:
    return (f"<nsf><name>n{i}</name><management><address>127.0.0.1</address><port>{port}</port>"
            f"<username>controller</username><private-key-file>{key}</private-key-file>"
            f"<host-key>{host_key}</host-key></management>"
            f"<data-plane-address>198.18.{i // 250}.{i % 250 + 1}</data-plane-address></nsf>")


def policy(i: int, agents: int) -> str:
    a = i % agents
    b = (a + 1 + (i // agents) % (agents - 1)) % agents
    # pair i: a's /32 198.19.x.y <-> b's /32 198.20.x.y (RFC 2544 benchmarking space,
    # never routed here); no two pairs overlap
    x, y = divmod(i, 256)
    pa, pb = f"198.19.{x}.{y}/32", f"198.20.{x}.{y}/32"
    return (f"<policy><name>p{i}</name><endpoint-a><nsf>n{a}</nsf><prefix>{pa}</prefix>"
            f"</endpoint-a><endpoint-b><nsf>n{b}</nsf><prefix>{pb}</prefix></endpoint-b>"
            "<crypto-profile>bench</crypto-profile></policy>")


def profile(soft: int, hard: int) -> str:
    return (f"<crypto-profiles><crypto-profile><name>bench</name><lifetime-soft><time>{soft}"
            f"</time></lifetime-soft><lifetime-hard><time>{hard}</time></lifetime-hard>"
            "</crypto-profile></crypto-profiles>")


def recreated(log: Path) -> int:
    """Policies the controller re-created because a rekey finished too late (it logs a
    warning per wake-up with their number)."""
    n = 0
    for line in log.read_text(errors="replace").splitlines():
        if "policies re-created: hard lifetime passed" in line:
            n += int(line.split(" policies re-created")[0].rsplit(" ", 1)[-1])
    return n


def ratio(value: float, target: float, higher_better: bool = True) -> str:
    r = value / target if higher_better else target / value if value else float("inf")
    return f"{r:5.2f}x target ({'ok' if r >= 1 else 'MISSED'})"


# ---- the benchmark ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, default=50, help="agents for phases 1-2 (50)")
    ap.add_argument("--policies", type=int, default=2000, help="site-pair policies (2000)")
    ap.add_argument("--sessions", type=int, default=1000, help="agent sessions in phase 3")
    ap.add_argument("--rekey-policies", type=int, default=3000,
                    help="policies in phase 2, added to --policies first (3000: ~1,667 "
                         "rekeys/s offered, above the target, so that the sustained rate "
                         "measures capacity, not the offered load)")
    ap.add_argument("--rekey-window", type=float, default=30.0, help="seconds measured")
    ap.add_argument("--rekey-soft", type=int, default=2, help="phase 2 soft lifetime (2 s)")
    ap.add_argument("--rekey-hard", type=int, default=30, help="phase 2 hard lifetime (30 s)")
    ap.add_argument("--farm-procs", type=int, default=os.cpu_count() or 1,
                    help="processes the agent farm is spread over (default: one per core)")
    ap.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite",
                    help="the controller's store (default sqlite; postgres: a server is "
                         "started for the run)")
    ap.add_argument("--farm", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--farm-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    raise_fd_limit()
    if args.farm:
        asyncio.run(farm(args.farm, args.workdir, args.farm_id))
        return 0

    from controller.cli import main as _cli  # noqa: F401 - fail early if not installed
    from netconf_core.auth import hash_password

    work = Path(tempfile.mkdtemp(prefix="i2nsf-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    stack = contextlib.ExitStack()
    try:
        import asyncssh

        store_toml = ""
        if args.store == "postgres":
            from tests.pgserver import pg_server, skip_reason

            why = skip_reason()
            if why:
                raise SystemExit(f"--store postgres: {why}")
            pg = stack.enter_context(pg_server())
            (work / "pg.dsn").write_text(pg.dsn() + "\n")
            os.chmod(work / "pg.dsn", 0o600)
            store_toml = (f'[store]\nbackend = "postgres"\ndsn_file = "{work / "pg.dsn"}"\n\n'
                          '[ha]\nlease_ttl = 5.0\n\n')

        key = asyncssh.generate_private_key("ssh-ed25519")
        (work / "client_key").write_bytes(key.export_private_key())
        os.chmod(work / "client_key", 0o600)
        (work / "client_key.pub").write_text(key.export_public_key().decode())
        hk = asyncssh.generate_private_key("ssh-ed25519")
        (work / "farm_host_key").write_bytes(hk.export_private_key())
        os.chmod(work / "farm_host_key", 0o600)
        host_key = hk.export_public_key().decode().strip()

        n_srv = max(args.sessions, args.agents)
        k = max(1, min(args.farm_procs, n_srv))
        t0 = time.monotonic()
        fprof = os.environ.get("BENCH_FARM_PROFILE")
        farm_ps = []
        for ident in range(k):
            share = len(range(ident, n_srv, k))  # agent i lives in process i % k
            pre = ([sys.executable, "-m", "cProfile", "-o", f"{fprof}.{ident}"] if fprof
                   else [sys.executable])
            farm_ps.append(subprocess.Popen(
                [*pre, __file__, "--farm", str(share), "--farm-id", str(ident),
                 "--workdir", str(work)], stdout=subprocess.DEVNULL,
                stderr=open(work / f"farm-{ident}.log", "wb")))  # noqa: SIM115
        procs.extend(farm_ps)
        shares = []
        for ident, fp in enumerate(farm_ps):
            wait_file(work / f"farm-{ident}.json", fp, 300, "agent farm",
                      work / f"farm-{ident}.log")
            shares.append(json.loads((work / f"farm-{ident}.json").read_text()))
        ports = [shares[i % k][i // k] for i in range(n_srv)]
        print(f"agent farm: {n_srv} NETCONF servers in {k} processes up in "
              f"{time.monotonic() - t0:.1f} s")

        (work / "ctl.toml").write_text(
            f'[server]\nhost = "127.0.0.1"\nport = 0\nstate_dir = "{work / "ctl"}"\n\n'
            "[controller]\nrekey_grace = 0.2\nreconnect_min = 0.5\nreconnect_max = 5\n\n"
            + store_toml +
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(PASSWORD)}"\n')
        prof = os.environ.get("BENCH_PROFILE")  # a file: profile the controller into it
        cmd = ([sys.executable, "-m", "cProfile", "-o", prof, "-m", "controller.cli"] if prof
               else [str(Path(sys.executable).parent / "i2nsf-controller")])
        ctl_p = subprocess.Popen(
            [*cmd, "serve", "-c",
             str(work / "ctl.toml"), "--ready-file", str(work / "ctl.ready"),
             "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=open(work / "ctl.log", "wb"))  # noqa: SIM115
        procs.append(ctl_p)
        wait_file(work / "ctl.ready", ctl_p, 60, "controller", work / "ctl.log")
        c = Client(int((work / "ctl.ready").read_text()))
        if args.store == "postgres":  # the instance must first be elected (lease)
            deadline = time.monotonic() + 30
            while True:
                try:
                    c.edit("")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        print(f"store: {args.store}")
        results: dict[str, Any] = {}

        # -- phase 1: provisioning -------------------------------------------------------
        m, n = args.agents, args.policies
        c.edit("<nsfs>" + "".join(nsf_xml(i, ports[i], work / "client_key", host_key)
                                  for i in range(m)) + "</nsfs>" + profile(3240, 3600))
        deadline = time.monotonic() + 60
        while c.sessions().get("connected", 0) < m:
            if time.monotonic() > deadline:
                raise SystemExit(f"sessions: {c.sessions()}")
            time.sleep(0.2)
        body = "<policies>" + "".join(policy(i, m) for i in range(n)) + "</policies>"
        cpu = CpuMeter(ctl_p.pid, [p.pid for p in farm_ps])
        t0 = time.monotonic()
        c.edit(body)
        t_accept = time.monotonic() - t0
        while True:
            st = c.policies()
            active = sum(1 for s, _ in st if s == "active")
            if active == n:
                break
            if time.monotonic() - t0 > 300:
                raise SystemExit(f"only {active}/{n} policies active after 300 s")
            time.sleep(0.25)
        t_full = time.monotonic() - t0
        pps = n / t_full
        results["policies_per_s"] = pps
        results["time_to_full_protection_s"] = t_full
        print(f"\nphase 1: {n} policies across {m} agents")
        print(f"  commit accepted by the controller in {t_accept:.2f} s (validation, store)")
        print(f"  time to full protection          {t_full:8.2f} s")
        print(f"  policies/s                       {pps:8.0f}    {ratio(pps, 500)}")
        print(cpu.report())
        t0 = time.monotonic()
        c.policies()
        t_get = time.monotonic() - t0
        results["state_get_s"] = t_get
        print(f"  one get of all policies' state   {t_get:8.2f} s  (this bench polls every "
              "0.25 s; the controller's loop is busy meanwhile)")

        # -- phase 2: sustained rekeys ----------------------------------------------------
        if args.rekey_policies > n:  # an offered load above the target: measure capacity
            c.edit("<policies>" + "".join(policy(i, m) for i in range(n, args.rekey_policies))
                   + "</policies>")
            n = args.rekey_policies
            deadline = time.monotonic() + 300
            while sum(1 for s, _ in c.policies() if s == "active") < n:
                if time.monotonic() > deadline:
                    raise SystemExit("phase 2: the added policies did not become active")
                time.sleep(0.5)
        soft = args.rekey_soft  # lifetimes only: each policy rekeys now, then every 90 % soft
        c.edit(profile(soft, args.rekey_hard))
        time.sleep(4)  # let the first (simultaneous) wave pass; measure the steady state
        # Policies rekeyed together complete together: counting between two arbitrary
        # moments would be off by up to a whole wave. Measure from one completion seen to
        # another, the window apart (each seen to within one poll).
        t0, g0, _ = c.next_generations(sum(g for _, g in c.policies()))
        cpu.start()
        late0 = recreated(work / "ctl.log")
        time.sleep(args.rekey_window)
        t1, g1, st = c.next_generations(sum(g for _, g in c.policies()))
        late = recreated(work / "ctl.log") - late0
        rps = (g1 - g0 - late) / (t1 - t0)
        offered = n / (soft * 0.9)
        results["rekeys_per_s"] = rps
        results["recreated"] = late
        failed = sum(1 for s, _ in st if s == "failed")
        print(f"\nphase 2: {n} policies, soft lifetime {soft} s, hard {args.rekey_hard} s "
              f"(offered ~{offered:.0f} rekeys/s)")
        print(f"  generations completed in {t1 - t0:.0f} s {g1 - g0:8d}")
        print(f"  of which re-created (hard passed){late:8d}    (not make-before-break)")
        print(f"  make-before-break rekeys/s       {rps:8.0f}    {ratio(rps, 1000)}")
        print(f"  policies failed at the end       {failed:8d}")
        print(cpu.report())
        ctl_s, farm_s = cpu.used()
        done = max(1, g1 - g0)
        results["ctl_cpu_ms_per_rekey"] = ctl_s * 1000 / done
        results["farm_cpu_ms_per_rekey"] = farm_s * 1000 / done
        print(f"  CPU per rekey: controller {ctl_s * 1000 / done:.2f} ms, agents "
              f"{farm_s * 1000 / done:.2f} ms (the agents' share is paid on their own "
              "machines in a deployment)")
        c.edit(profile(3240, 3600))  # one more rekey each, then quiet: wait for it
        deadline = time.monotonic() + 300
        while any(s != "active" for s, _ in c.policies()) and time.monotonic() < deadline:
            time.sleep(0.5)

        # -- phase 3: 1,000 sessions ------------------------------------------------------
        s = args.sessions
        t0 = time.monotonic()
        c.edit("<nsfs>" + "".join(nsf_xml(i, ports[i], work / "client_key", host_key)
                                  for i in range(m, s)) + "</nsfs>")
        while True:
            up = c.sessions().get("connected", 0)
            if up >= s:
                break
            if time.monotonic() - t0 > 180:
                print(f"  only {up}/{s} sessions after 180 s")
                break
            time.sleep(0.25)
        t_up = time.monotonic() - t0
        cur, peak = rss_mib(ctl_p.pid)
        results.update(sessions=up, sessions_up_s=t_up, rss_mib=cur, rss_peak_mib=peak)
        print(f"\nphase 3: {s} agent sessions ({s - m} added at once)")
        print(f"  all sessions up in               {t_up:8.2f} s  "
              f"{ratio(t_up, 60, higher_better=False)}")
        print(f"  controller RSS (now / peak)      {cur:5.0f} / {peak:.0f} MiB  "
              f"{ratio(peak, 1024, higher_better=False)}")
        farm_rss = sum(rss_mib(p.pid)[0] for p in farm_ps)
        results["farm_rss_mib"] = farm_rss
        print(f"  agent farm RSS ({s} agents)       {farm_rss:5.0f} MiB")
        print("\n" + json.dumps({k: round(v, 2) for k, v in results.items()}))
        c.m.close_session()
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {work} (ctl.log, farm-*.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
