"""SFC controller benchmark: policy → path set-up, rebalancing after a new instance, and
table-miss answers, each next to a baseline measured in the same run.

1. Set-up: 10 agents (real `i2nsf-agent` processes serving i2nsf-sfc-nsf, validating with
   libyang, the null applier: what is measured is the controller and NETCONF, not packet
   work) as 10 SFFs (one also classifier), 30 registered instances, 10 chains of 3 types,
   100 SFC policies committed in one edit-config → time until every path is `active` on
   every agent (two all-or-nothing transactions over the 10 agents: entries, then
   classifier). Baseline: the same final per-agent configurations written directly by a
   client, one plain edit-config per agent, all 10 in parallel (no validation across agents,
   no confirmed commit).
2. Rebalance: one more instance registers → time until the agents hold the new weights.
   Baseline: as in 1, the direct write of the changed configurations.
3. Table miss (needs root: the namespace lab with real data paths): an SFF's entry is
   deleted behind the controller's back, a packet misses, the controller answers; the answer
   latency (notification arrival → answer written) over N misses, against the 10 ms target
   and a plain edit-config round trip of the same entry from a client.

    python bench/sfc_controller.py [--misses 20]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lxml import etree  # noqa: E402

from netconf_core.auth import hash_password  # noqa: E402
from tests.integration.sfc_ctl_lab import (  # noqa: E402
    ADMIN_PASSWORD,
    CAT,
    NC,
    SFCP,
    Daemon,
    write_key,
)

BIN = Path(sys.executable).parent
NSFS = 10
TYPES = ("firewall", "ids", "dpi", "ddos", "anti-spoofing")
NSF_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"
FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"


def _manager(port: int, user: str, **kw: Any) -> Any:
    import ncclient.transport.session as nc_session
    from ncclient import manager

    nc_session.TICK = 0.001
    return manager.connect(host="127.0.0.1", port=port, username=user, hostkey_verify=False,
                           allow_agent=False, look_for_keys=False, timeout=60, **kw)


class Farm:
    """The controller and NSFS agents on loopback ports, in a work directory."""

    def __init__(self, work: Path, base_port: int) -> None:
        self.work = work
        self.base = base_port
        self.key = work / "id"
        self.pub = write_key(self.key)
        self.host_keys: dict[int, str] = {}
        self.daemons: list[Daemon] = []

    def start(self) -> None:
        for i in range(1, NSFS + 1):
            st = self.work / f"agent-{i}"
            st.mkdir(mode=0o700)
            self.host_keys[i] = write_key(st / "ssh_host_ed25519_key")
            cfg = self.work / f"agent-{i}.toml"
            cfg.write_text(
                f'[server]\nhost = "127.0.0.1"\nport = {self.base + i}\nstate_dir = "{st}"\n\n'
                '[yang]\nmodules = ["ietf-i2nsf-ikec", "ietf-i2nsf-ike", "ietf-i2nsf-ikeless",'
                ' "i2nsf-sfc-nsf"]\n\n[dataplane]\nappliers = ["null"]\n\n'
                f'[[users]]\nname = "controller"\nauthorized_keys = ["{self.pub}"]\n')
            self.daemons.append(Daemon(
                f"agent {i}", "", [str(BIN / "i2nsf-agent"), "run", "-c", str(cfg),
                                   "--ready-file", str(self.work / f"a{i}.ready")],
                self.work / f"agent-{i}.log", self.work / f"a{i}.ready"))
        st = self.work / "controller"
        cfg = self.work / "controller.toml"
        cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.base}\nstate_dir = "{st}"\n\n'
            "[controller]\nconfirm_timeout = 30\n\n"
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(ADMIN_PASSWORD)}"\n')
        self.daemons.append(Daemon(
            "controller", "", [str(BIN / "i2nsf-controller"), "serve", "-c", str(cfg),
                               "--ready-file", str(self.work / "c.ready"),
                               "--log-level", "DEBUG"],
            self.work / "controller.log", self.work / "c.ready"))
        for d in self.daemons:
            _start_here(d)

    def stop(self) -> None:
        for d in self.daemons:
            d.stop(5)

    def controller(self) -> Any:
        return _manager(self.base, "admin", password=ADMIN_PASSWORD)

    def agent(self, i: int) -> Any:
        return _manager(self.base + i, "controller", key_filename=str(self.key))

    def locator(self, i: int) -> str:
        return f"192.0.2.{i}"

    def inventory(self) -> str:
        return "".join(
            f"<nsf><name>sff{i}</name><management><address>127.0.0.1</address>"
            f"<port>{self.base + i}</port><username>controller</username>"
            f"<private-key-file>{self.key}</private-key-file>"
            f"<host-key>{self.host_keys[i]}</host-key></management>"
            f"<data-plane-address>{self.locator(i)}</data-plane-address>"
            "<dataplane>userspace</dataplane></nsf>" for i in range(1, NSFS + 1))

    def base_config(self) -> str:
        fwd = "".join(
            f"<forwarder><name>sff{i}</name><sff-id>{i}</sff-id>"
            f"<locator>{self.locator(i)}</locator>"
            + ("<classifier>true</classifier><ingress-interface>eth0</ingress-interface>"
               if i == 1 else "") + "</forwarder>" for i in range(1, NSFS + 1))
        types = "".join(f"<sf-type><name>{t}</name></sf-type>" for t in TYPES)
        return (f'<config xmlns="{NC}"><flow-protection xmlns="{FP}"><nsfs>{self.inventory()}'
                f'</nsfs></flow-protection><sfc xmlns="{SFCP}"><forwarders>{fwd}</forwarders>'
                f"<sf-types>{types}</sf-types></sfc></config>")

    def register(self, m: Any, name: str, t: str, host: int) -> None:
        m.dispatch(etree.fromstring(
            f'<register-instance xmlns="{CAT}"><name>{name}</name><type>{t}</type>'
            f"<dms>bench</dms><host>sff{host}</host><locator><address>{self.locator(host)}"
            f"</address></locator><interfaces><to-sf>{name[:10]}i</to-sf>"
            f"<from-sf>{name[:10]}o</from-sf><sf-mac>02:00:00:00:00:{host:02x}</sf-mac>"
            "</interfaces><capacity>10000</capacity></register-instance>"))


def _start_here(d: Daemon) -> None:
    """Daemon.start without a namespace."""
    d.ready_file.unlink(missing_ok=True)
    logf = open(d.log_path, "ab")  # noqa: SIM115 - handed to the child
    d.proc = subprocess.Popen(d.cmd, stdout=logf, stderr=subprocess.STDOUT,
                              start_new_session=True)
    logf.close()
    deadline = time.monotonic() + 60
    while not d.ready_file.exists():
        if d.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{d.name} did not start:\n{d.log_path.read_text()[-2000:]}")
        time.sleep(0.05)


def chains_and_policies(n_policies: int) -> str:
    chains = "".join(
        f"<chain><name>c{k}</name>" + "".join(
            f"<sf-type>{TYPES[(k + j) % len(TYPES)]}</sf-type>" for j in range(3))
        + "</chain>" for k in range(10))
    pols = "".join(
        f"<policy><name>p{k}</name><priority>{k}</priority><match><destination-prefix>"
        f"203.0.{k // 250}.{k % 250}/32</destination-prefix></match><chain>c{k % 10}</chain>"
        "</policy>" for k in range(n_policies))
    return (f'<config xmlns="{NC}"><sfc xmlns="{SFCP}"><chains>{chains}</chains>'
            f"<policies>{pols}</policies></sfc></config>")


def _state(m: Any) -> etree._Element:
    data = m.get(filter=("subtree", f'<sfc-state xmlns="{SFCP}"/>')).data_ele
    st = data.find(f"{{{SFCP}}}sfc-state")
    return st if st is not None else etree.Element(f"{{{SFCP}}}sfc-state")


def _wait(pred: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        time.sleep(0.02)


def _agent_configs(farm: Farm) -> dict[int, bytes]:
    out = {}
    for i in range(1, NSFS + 1):
        a = farm.agent(i)
        try:
            data = a.get_config(source="running", filter=(
                "subtree", f'<sfc xmlns="{NSF_NS}"/>')).data_ele
            out[i] = etree.tostring(data[0])
        finally:
            a.close_session()
    return out


def _direct_push(farm: Farm, cfgs: dict[int, bytes], clear_first: bool) -> float:
    """Baseline: each agent's configuration written by a plain client, all in parallel."""
    sessions = {i: farm.agent(i) for i in cfgs}
    try:
        if clear_first:
            for a in sessions.values():
                a.edit_config(target="running", config=(
                    f'<config xmlns="{NC}"><sfc xmlns="{NSF_NS}" xmlns:nc="{NC}" '
                    'nc:operation="remove"/></config>'))

        def one(i: int) -> None:
            root = etree.fromstring(cfgs[i])
            root.set(f"{{{NC}}}operation", "replace")
            sessions[i].edit_config(target="running", config=(
                f'<config xmlns="{NC}">' + etree.tostring(root).decode() + "</config>"))

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(cfgs)) as ex:
            list(ex.map(one, cfgs))
        return time.perf_counter() - t0
    finally:
        for a in sessions.values():
            a.close_session()


def bench_setup(n_policies: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="i2nsf-sfcbench-"))
    farm = Farm(work, 18300 + (os.getpid() % 500) * 20)
    try:
        farm.start()
        m = farm.controller()
        m.edit_config(target="running", config=farm.base_config())
        k = 0
        for t in TYPES:  # 6 per type (each of a type's 6 chain hops gets its own)
            for j in range(6):
                k += 1
                farm.register(m, f"{t}-{j}", t, 1 + k % NSFS)
        q = f"{{{SFCP}}}"
        _wait(lambda: any(e.findtext(q + "kind") == "paths-pushed"
                          for e in _state(m).findall(q + "event")), 60)  # sessions up

        def all_active(n: int) -> bool:
            st = _state(m)
            ps = st.findall(q + "path")
            return len(ps) == n and all(p.findtext(q + "status") == "active" for p in ps)

        t0 = time.perf_counter()
        m.edit_config(target="running", config=chains_and_policies(n_policies))
        t_commit = time.perf_counter() - t0
        try:
            _wait(lambda: all_active(10), 60)
        except TimeoutError:
            st = _state(m)
            for p in st.findall(q + "path"):
                print(p.findtext(q + "chain"), p.findtext(q + "status"),
                      p.findtext(q + "error-message"))
            for e in st.findall(q + "event")[-10:]:
                print(e.findtext(q + "kind"), e.findtext(q + "detail"))
            raise
        setup = time.perf_counter() - t0
        pushed = [e.findtext(q + "detail") for e in _state(m).findall(q + "event")
                  if e.findtext(q + "kind") == "paths-pushed"]
        print(f"  (controller: {pushed[-1] if pushed else '?'})")
        cfgs = _agent_configs(farm)
        base = _direct_push(farm, cfgs, clear_first=True)
        rules = etree.fromstring(cfgs[1]).findall(f".//{{{NSF_NS}}}rule")
        entries = sum(len(etree.fromstring(c).findall(f".//{{{NSF_NS}}}entry"))
                      for c in cfgs.values())
        print(f"set-up: {n_policies} policies, 10 chains, {NSFS} SFFs "
              f"({len(rules)} classifier rules, {entries} SFF entries): "
              f"commit {t_commit * 1000:.0f} ms, all paths active "
              f"{setup * 1000:.0f} ms; baseline direct write {base * 1000:.0f} ms; "
              f"ratio {setup / base:.2f}")
        # the controller must put back what the baseline overwrote (same content): resync
        m.dispatch(etree.fromstring(f'<resync-sfc xmlns="{SFCP}"/>'))
        time.sleep(0.5)
        # rebalance: a 7th firewall instance on sff3
        before = _agent_configs(farm)

        def pushes() -> list[tuple[int, str]]:
            return [(int(e.findtext(q + "sequence") or 0), e.findtext(q + "detail") or "")
                    for e in _state(m).findall(q + "event")
                    if e.findtext(q + "kind") == "paths-pushed"]

        last = max((n for n, _d in pushes()), default=0)
        t0 = time.perf_counter()
        farm.register(m, "firewall-new", "firewall", 3)

        def holds_new() -> bool:
            a = farm.agent(3)
            try:
                x = a.get_config(source="running", filter=(
                    "subtree", f'<sfc xmlns="{NSF_NS}"><proxies/></sfc>')).data_xml
                return "firewall-new" in x
            finally:
                a.close_session()

        _wait(holds_new)
        t_first = time.perf_counter() - t0
        # every step over (an SFF gaining a next hop switches one step after the one that
        # gave sff3 its proxy): the controller's paths-pushed event for this change
        _wait(lambda: any(n > last for n, _d in pushes()))
        rebalance = time.perf_counter() - t0
        print(f"  (sff3 held the new proxy after {t_first * 1000:.0f} ms; controller: "
              f"{next(d for n, d in pushes() if n > last)})")
        after = _agent_configs(farm)
        changed = {i: c for i, c in after.items() if c != before[i]}
        base = _direct_push(farm, changed, clear_first=False) if changed else float("nan")
        print(f"rebalance after a new instance: {rebalance * 1000:.0f} ms to the agents "
              f"({len(changed)} changed); baseline direct write {base * 1000:.0f} ms; "
              f"ratio {rebalance / base:.2f}")
        m.close_session()
    finally:
        farm.stop()
        if os.environ.get("SFC_BENCH_KEEP"):
            print(f"  (kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench_misses(n: int) -> None:
    from tests.integration.sfc_ctl_lab import sfc_controller_lab
    from tests.integration.test_sfc_controller import (
        CHAINS,
        TRUST,
        _agent_edit,
        _ping,
        _stat,
    )
    from tests.integration.test_sfc_controller import (
        NSF_NS as NS2,
    )
    from tests.integration.test_sfc_controller import (
        TYPES as T2,
    )

    with sfc_controller_lab(sfs=4) as lab:
        m = lab.connect()
        lab.configure(m, lab.forwarders_xml() + T2)
        for i, (name, t) in enumerate((("ids-1", "ids"), ("as-1", "anti-spoofing"),
                                       ("fw-1", "firewall"), ("dpi-1", "dpi"))):
            lab.register(m, i, name, t)
        lab.configure(m, TRUST + CHAINS, inventory=False)
        q = f"{{{SFCP}}}"
        _wait(lambda: all(p.findtext(q + "status") == "active"
                          for p in _state(m).findall(q + "path")) and len(
            _state(m).findall(q + "path")) == 2)
        light = next(int(p.findtext(q + "spi") or 0) for p in _state(m).findall(q + "path")
                     if p.findtext(q + "chain") == "light")
        sent, rtt = [], []
        entry = (f"<entry><spi>{light}</spi><si>255</si><next-hop><locator>192.0.2.2"
                 "</locator><kind>sff</kind><weight>100</weight></next-hop></entry>")
        for _ in range(n):
            done = _stat(lab, m, "table-misses-answered")
            _agent_edit(lab, "c", f'<entry xmlns:nc="{NC}" nc:operation="delete"><spi>{light}'
                        "</spi><si>255</si></entry>")
            _ping(lab, "198.51.100.10", count=1)
            _wait(lambda d=done: _stat(lab, m, "table-misses-answered") > d, 10)
            sent.append(_stat(lab, m, "last-miss-answer-time") / 1000)
            # baseline: the same one-entry edit-config round trip from a client
            a = lab.connect_agent("c")
            try:
                t0 = time.perf_counter()
                a.edit_config(target="running", config=(
                    f'<config xmlns="{NC}"><sfc xmlns="{NS2}"><forwarder><table>{entry}'
                    "</table></forwarder></sfc></config>"))
                rtt.append((time.perf_counter() - t0) * 1000)
            finally:
                a.close_session()
        m.close_session()
    if not sent:
        return
    p50, p99 = statistics.median(sent), sorted(sent)[max(0, int(len(sent) * 0.99) - 1)]
    b50 = statistics.median(rtt)
    print(f"table miss ({n} misses): answer sent p50 {p50:.2f} ms, max {max(sent):.2f} ms "
          f"(p99 {p99:.2f}); target 10 ms: ratio p50/target {p50 / 10:.3f}; baseline client "
          f"edit-config round trip p50 {b50:.2f} ms, ratio {p50 / b50:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--policies", type=int, default=100)
    p.add_argument("--misses", type=int, default=20)
    args = p.parse_args()
    bench_setup(args.policies)
    if os.geteuid() == 0 and shutil.which("ip"):
        bench_misses(args.misses)
    else:
        print("table miss: skipped (needs root for the namespace lab)")


if __name__ == "__main__":
    main()
