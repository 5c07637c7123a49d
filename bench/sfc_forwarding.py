"""SFC forwarding: our userspace SFF against plain kernel forwarding and a bare Python loop.

Topology (one run, same veths for every case):  G ── D ── S
  * G (generator) sends as fast as it can for --seconds with sendmmsg;
  * D (device under test) forwards: (a) plain kernel IP forwarding of UDP packets;
    (b) a bare Python raw-socket GRE forwarder (recv, dict lookup on (SPI, SI), sendto) —
    the baseline; (c) our SFF data path (nsf_agent.sfc.datapath, table entry → next SFF);
  * S (sink) counts what arrives on its interface (kernel counters: no receiver process
    competes for the CPU); the packets are addressed past S, which drops them silently.
Inner packets of 64 B and 1400 B (plus NSH 24 + GRE 4 + outer IP 20 in (b) and (c)).
Added latency: probes paced at 1 kpps, one-way G → S (CLOCK_MONOTONIC is shared by the
namespaces), p50/p99 per case. Table miss: the first packet of a path the SFF does not
know waits for the entry; a controller stand-in answers the sff-table-miss event at once
through the sfc applier (libyang validation + commit) and we time the packet's extra delay.
3-SF chain: iperf3 TCP from host A to host B through classifier → SFF + 3 SFC proxies (one
SF namespace each) → SFF → host B (nsf_agent.sfc.lab), against the same hosts plainly routed.

Targets: (c) >= 1.0 x (b) pps; table-miss first-packet delay ≤ 5 ms; chain ≥ 300 Mbit/s.
The machine may be shared: the numbers are relative to the baselines measured alongside.
Usage: sudo python bench/sfc_forwarding.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from netconf_core.polling import wait_until  # noqa: E402
from nsf_agent.sfc import nsh  # noqa: E402
from nsf_agent.sfc.lab import SfcLab, mac_of  # noqa: E402
from nsf_agent.userspace.lab import sysctl, unique_prefix  # noqa: E402

G_D, D_G, D_G2 = "192.0.2.1", "192.0.2.2", "192.0.2.3"   # D_G: bare loop, D_G2: our SFF
D_S, S_D = "192.0.2.9", "192.0.2.10"
SINK = "192.0.2.77"        # past S: S has no such address and does not forward
SPI = 77
PY = sys.executable


def ip(ns: str | None, *args: str) -> None:
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True, capture_output=True)


class Line:
    """G ── D ── S."""

    def __init__(self) -> None:
        self.prefix = unique_prefix("i2sb")
        self.g, self.d, self.s = (f"{self.prefix}-{r}" for r in "gds")
        self.procs: list[subprocess.Popen[bytes]] = []

    def build(self) -> None:
        for ns in (self.g, self.d, self.s):
            ip(None, "netns", "add", ns)
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            ip(ns, "link", "set", "dev", "lo", "up")
        for n1, i1, a1, n2, i2, a2 in ((self.g, "d", G_D, self.d, "g", D_G),
                                       (self.d, "s", D_S, self.s, "d", S_D)):
            plen = "29" if a1 == G_D else "30"
            ip(None, "link", "add", "name", f"{self.prefix[:10]}t", "netns", n1, "type", "veth",
               "peer", "name", i2, "netns", n2)
            ip(n1, "link", "set", "dev", f"{self.prefix[:10]}t", "name", i1)
            ip(n1, "addr", "add", f"{a1}/{plen}", "dev", i1)
            ip(n2, "addr", "add", f"{a2}/{plen}", "dev", i2)
            ip(n1, "link", "set", "dev", i1, "up")
            ip(n2, "link", "set", "dev", i2, "up")
        sysctl(self.d, "net.ipv4.ip_forward", "1")
        ip(self.g, "route", "add", f"{SINK}/32", "via", D_G)
        ip(self.d, "route", "add", f"{SINK}/32", "via", S_D)
        ip(self.d, "neigh", "replace", S_D, "lladdr", mac_of(self.s, "d"), "dev", "s",
           "nud", "permanent")
        ip(self.d, "neigh", "replace", SINK, "lladdr", mac_of(self.s, "d"), "dev", "s",
           "nud", "permanent")
        ip(self.d, "addr", "add", f"{D_G2}/29", "dev", "g")
        for a in (D_G, D_G2):
            ip(self.g, "neigh", "replace", a, "lladdr", mac_of(self.d, "g"), "dev", "d",
               "nud", "permanent")

    def rx(self) -> int:
        out = subprocess.run(["ip", "-n", self.s, "-s", "-j", "link", "show", "dev", "d"],
                             check=True, capture_output=True, text=True).stdout
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    def popen(self, ns: str, code: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-c", textwrap.dedent(code)],
                             env=env, stdout=subprocess.PIPE)
        self.procs.append(p)
        return p

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for ns in (self.g, self.d, self.s):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def packet(kind: str, size: int) -> bytes:
    """What G sends: a UDP payload (kernel case) or GRE/NSH/IPv4/UDP (GRE cases)."""
    from scapy.layers.inet import IP, UDP

    inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / UDP(sport=1000, dport=2000)
                  / bytes(max(0, size - 28)))
    if kind == "kernel":
        return inner[28:]
    return nsh.encapsulate(nsh.Nsh(spi=SPI, si=255), inner)


GEN = """
import socket, sys, time
from nsf_agent.userspace import mmsg
from nsf_agent.sfc.datapath import _sockaddr
kind, dst, seconds, hexpkt = sys.argv[1:] if len(sys.argv) > 4 else {args}
pkt = bytes.fromhex(hexpkt)
if kind == "kernel":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((dst, 9))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sb = mmsg.SendBatch(s.fileno(), 64)
name = _sockaddr(dst if kind != "kernel" else "0.0.0.0")
pk, names = [pkt] * 64, [name] * 64
print("go", flush=True)
sent, end = 0, time.monotonic() + float(seconds)
while time.monotonic() < end:
    try:
        if kind == "kernel":
            for _ in range(64):
                s.send(pkt)
            sent += 64
        else:
            sent += sb.send(pk, names)
    except OSError:
        pass
print(sent, flush=True)
"""

BARE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
s.bind(("{locator}", 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
table = {{({spi}, 255): ("{nh}", 0)}}
print("up", flush=True)
while True:
    p = s.recv(65535)
    off = (p[0] & 15) * 4
    nh = table.get((int.from_bytes(p[off + 8:off + 11], "big"), p[off + 11]))
    if nh is not None:
        s.sendto(p[off:], nh)
"""


def offered(line: Line, kind: str, size: int, seconds: float, dst: str = D_G
            ) -> tuple[float, float]:
    """(pps delivered to S, pps offered by G)."""
    dst = SINK if kind == "kernel" else dst
    code = GEN.format(args=repr([kind, dst, str(seconds), packet(kind, size).hex()]))
    before = line.rx()
    g = line.popen(line.g, code)
    assert g.stdout is not None
    assert g.stdout.readline().strip() == b"go"
    t0 = time.monotonic()
    sent = int(g.stdout.readline())
    dt = time.monotonic() - t0
    g.wait()
    return (line.rx() - before) / dt, sent / dt


PROBE = """
import socket, struct, sys, time
kind, dst, n = sys.argv[1:] if len(sys.argv) > 3 else {args}
s = socket.socket(socket.AF_INET, socket.SOCK_RAW if kind != "kernel" else socket.SOCK_DGRAM,
                  47 if kind != "kernel" else 0)
pre = bytes.fromhex("{pre}")
print("go", flush=True)
for i in range(int(n)):
    p = pre + struct.pack("!Q", time.monotonic_ns())
    s.sendto(p, (dst, 9 if kind == "kernel" else 0))
    t = time.monotonic() + 0.001
    while time.monotonic() < t:
        pass
print("done", flush=True)
"""

SINKRX = """
import socket, struct, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind(("d", 0x0800))
s.settimeout(1)
print("up", flush=True)
lat = []
try:
    while True:
        f = s.recv(65535)
        now = time.monotonic_ns()
        if len(f) >= 22 and f[-12:-8] == b"PRBE":
            lat.append(now - struct.unpack("!Q", f[-8:])[0])
except socket.timeout:
    pass
print(" ".join(map(str, lat)), flush=True)
"""


def latency(line: Line, kind: str, n: int = 1000, gre_dst: str = D_G) -> tuple[float, float]:
    """p50/p99 one-way latency G → S in microseconds (probes at ~1 kpps)."""
    rx = line.popen(line.s, SINKRX)
    assert rx.stdout is not None and rx.stdout.readline().strip() == b"up"
    body = b"PRBE"
    if kind == "kernel":
        pre = body
        dst = SINK
    else:
        from scapy.layers.inet import IP, UDP

        inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / UDP(sport=1, dport=2)
                      / (bytes(20) + body))
        pre = nsh.encapsulate(nsh.Nsh(spi=SPI, si=255), inner)
        dst = gre_dst
    pr = line.popen(line.g, PROBE.format(args=repr([kind, dst, str(n)]), pre=pre.hex()))
    assert pr.stdout is not None
    pr.stdout.readline()
    pr.stdout.readline()
    pr.wait()
    lat = [int(x) / 1000 for x in rx.stdout.readline().split()]
    rx.wait()
    if len(lat) < n // 2:
        return float("nan"), float("nan")
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1]


def sff_config(table: bool = True) -> Any:
    from nsf_agent.sfc.model import NextHop, SfcConfig, SffEntry

    return SfcConfig(sff_id=1, locator=D_G2, table=[SffEntry(SPI, 255, (NextHop(SINK, "sff"),))]
                     if table else [])


def start_sff(line: Line, tmp: Path) -> Any:
    from nsf_agent.sfc.client import SfcClient, spawn

    ctl = str(tmp / "sff.sock")
    p = spawn(ctl, netns=line.d, log_path=str(tmp / "sff.log"))
    line.procs.append(p)
    c = wait_until(lambda: _try(SfcClient, ctl), 10, "the SFF data path")
    c.replace(sff_config())
    return c


def _try(cls: Any, path: str) -> Any:
    try:
        c = cls(path, timeout=5.0)
        c.ping()
        return c
    except OSError:
        return None


def table_miss(tmp: Path, runs: int = 20) -> dict[str, float]:
    """Extra delay of the first packet of an unknown path: SFF notices the miss, the
    controller stand-in commits the entry through the sfc applier, the held packet goes."""
    from lxml import etree

    from netconf_core.datastore import Datastores
    from netconf_core.errors import NC_NS
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context
    from nsf_agent.appliers.sfc import SfcApplier

    line = Line()
    delays: list[float] = []
    release: list[float] = []
    notes: list[float] = []
    commits: list[float] = []
    try:
        line.build()
        schema = YangSchema(create_context(["i2nsf-sfc-nsf"]))
        app = SfcApplier(tmp / "miss", netns=line.d)
        events: list[float] = []
        app.bind(lambda n: events.append(time.monotonic()))
        ds = Datastores(schema, [app], state_dir=tmp / "miss")
        ds.reconcile()
        ns = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"

        def cfg(entry: bool, spi: int) -> Any:
            e = (f"<entry><spi>{spi}</spi><si>255</si><next-hop><locator>{SINK}</locator>"
                 "</next-hop></entry>") if entry else ""
            return etree.fromstring(
                f'<config xmlns="{NC_NS}"><sfc xmlns="{ns}"><forwarder><sff-id>1</sff-id>'
                f"<locator>{D_G}</locator><table>{e}</table></forwarder></sfc></config>")

        ds.edit_config("running", cfg(False, 0), default_operation="replace")
        rx = line.popen(line.s, SINKRX)
        assert rx.stdout is not None and rx.stdout.readline().strip() == b"up"
        from scapy.layers.inet import IP, UDP
        sock = _raw_in(line.g)
        for i in range(runs):
            spi = 1000 + i
            inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / UDP(sport=1, dport=2)
                          / (bytes(20) + b"PRBE"))
            pre = nsh.encapsulate(nsh.Nsh(spi=spi, si=255), inner)
            n0 = len(events)
            t_send = time.monotonic()
            sock.sendto(pre + time.monotonic_ns().to_bytes(8, "big"), (D_G, 0))
            wait_until(lambda n0=n0: len(events) > n0, 5, "sff-table-miss", interval=0.0002)
            t_note = events[-1]
            t_start = time.monotonic()
            ds.edit_config("running", cfg(True, spi), default_operation="replace")
            t_commit = time.monotonic()
            delays.append((t_commit - t_send) * 1000)
            release.append((t_commit - t_note) * 1000)
            notes.append((t_note - t_send) * 1000)
            commits.append((t_commit - t_start) * 1000)
        sock.close()
        lat = [int(x) / 1000 for x in rx.stdout.readline().split()]
        rx.wait()
        app.close(stop_datapath=True)
        ds.close()
        got = len(lat)
    finally:
        line.destroy()
    return {"runs": runs, "delivered": got,
            "first_packet_delay_ms_p50": statistics.median(sorted(lat)) / 1000 if lat else -1,
            "first_packet_delay_ms_max": max(lat) / 1000 if lat else -1,
            "miss_to_commit_ms_p50": statistics.median(release),
            "send_to_notification_ms_p50": statistics.median(notes),
            "commit_ms_p50": statistics.median(commits),
            "send_to_commit_ms_p50": statistics.median(delays)}


def _raw_in(ns: str) -> socket.socket:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)


def chain(tmp: Path, seconds: float, mtu: int = 1500) -> dict[str, float]:
    """iperf3 TCP host A → host B: plainly routed, then through the 3-SF chain."""
    from lxml import etree

    from netconf_core.datastore import Datastores
    from netconf_core.errors import NC_NS
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context
    from nsf_agent.appliers.sfc import SfcApplier
    from nsf_agent.sfc import lab as L

    lab = SfcLab.unique(3, tag="i2sc", mtu=mtu)
    apps = []
    out: dict[str, float] = {}
    try:
        lab.build()
        srv = lab.popen(lab.host_b, ["iperf3", "-s", "-B", L.HOST_B], stdout=subprocess.DEVNULL)
        wait_until(lambda: lab.run(lab.host_b, ["ss", "-ltn"]).stdout.count(":5201") > 0, 5,
                   "iperf3 server")

        def iperf() -> float:
            r = lab.run(lab.host_a, ["iperf3", "-c", L.HOST_B, "-t", str(seconds), "-J"],
                        timeout=seconds + 30)
            j = json.loads(r.stdout)
            return float(j["end"]["sum_received"]["bits_per_second"]) / 1e6

        out["routed_mbit_s"] = iperf()
        schema = YangSchema(create_context(["i2nsf-sfc-nsf"]))
        dss = {}
        for role, ns, xml in (("e", lab.e, L.end_xml(lab)), ("f", lab.f, L.middle_xml(lab)),
                              ("c", lab.c, L.classifier_xml())):
            a = SfcApplier(tmp / f"chain-{role}", netns=ns)
            apps.append(a)
            ds = Datastores(schema, [a], state_dir=tmp / f"chain-{role}")
            ds.reconcile()
            ds.edit_config("running", etree.fromstring(f'<config xmlns="{NC_NS}">{xml}</config>'))
            dss[role] = ds
        out["chain_3sf_mbit_s"] = iperf()
        st = apps[1].stats()
        out["chain_proxy_packets"] = sum(p["to-sf"] for p in st["proxies"].values())
        srv.terminate()
    finally:
        for a in apps:
            a.close(stop_datapath=True)
        lab.destroy()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-chain", action="store_true")
    ap.add_argument("--skip-fast-path", action="store_true",
                    help="leave out the tc-BPF fast path rows (bench/sfc_fastpath.py)")
    ap.add_argument("--mtu", type=int, default=1500, help="host MTU in the chain lab")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("sfc_forwarding: skipped, needs root (network namespaces, raw sockets)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="sfc-bench-"))
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    line = Line()
    try:
        line.build()
        bare = line.popen(line.d, BARE.format(locator=D_G, spi=SPI, nh=SINK))
        assert bare.stdout is not None and bare.stdout.readline().strip() == b"up"
        c = start_sff(line, tmp)
        # the machine is shared: alternate the cases in rounds and keep each one's median
        runs: dict[str, list[tuple[float, float]]] = {}
        for _ in range(a.rounds):
            for size in (64, 1400):
                runs.setdefault(f"kernel_{size}", []).append(
                    offered(line, "kernel", size, a.seconds))
                runs.setdefault(f"bare_{size}", []).append(
                    offered(line, "gre", size, a.seconds, D_G))
                runs.setdefault(f"sff_{size}", []).append(
                    offered(line, "gre", size, a.seconds, D_G2))
        for k, v in runs.items():
            results[k] = (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
            results[k + "_runs"] = [round(x[0]) for x in v]
        results["kernel_lat_us"] = latency(line, "kernel")
        results["bare_lat_us"] = latency(line, "gre", gre_dst=D_G)
        results["sff_lat_us"] = latency(line, "gre", gre_dst=D_G2)
        st = c.stats()
        results["sff_drops"] = st["drops"]
        results["sff_forwarded"] = st["counters"].get("forwarded", 0)
        c.shutdown()
        bare.kill()
        bare.wait()
    finally:
        line.destroy()
    results["table_miss"] = table_miss(tmp)
    if not a.skip_chain:
        results["chain"] = chain(tmp, a.seconds)
        if a.mtu != 1500:
            results["chain_jumbo"] = chain(tmp, a.seconds, a.mtu)
    results["load_after"] = os.getloadavg()[0]

    print(f"SFC forwarding ({a.seconds:g} s per case, {os.cpu_count()} CPUs, load "
          f"{results['load_before']:.1f} before / {results['load_after']:.1f} after)")
    print(f"{'case':<28}{'64 B pps':>12}{'1400 B pps':>12}{'p50 us':>9}{'p99 us':>9}")
    for k, name in (("kernel", "(a) kernel IP forwarding"), ("bare", "(b) bare Python GRE loop"),
                    ("sff", "(c) our SFF (userspace)")):
        p50, p99 = results[f"{k}_lat_us"]
        print(f"{name:<28}{results[f'{k}_64'][0]:>12.0f}{results[f'{k}_1400'][0]:>12.0f}"
              f"{p50:>9.0f}{p99:>9.0f}")
    for size in (64, 1400):
        r = results[f"sff_{size}"][0] / max(1.0, results[f"bare_{size}"][0])
        print(f"ratio (c)/(b) at {size} B: {r:.2f} (target >= 1.0)")
    kp50 = results["kernel_lat_us"][0]
    print(f"added latency vs kernel forwarding, p50: bare {results['bare_lat_us'][0] - kp50:.0f} "
          f"us, SFF {results['sff_lat_us'][0] - kp50:.0f} us")
    tm = results["table_miss"]
    print(f"table miss: first packet delivered after p50 {tm['first_packet_delay_ms_p50']:.2f} ms "
          f"(max {tm['first_packet_delay_ms_max']:.2f}; target <= 5 ms): miss -> notification "
          f"{tm['send_to_notification_ms_p50']:.2f} ms, the entry's commit (libyang + datastore "
          f"+ data path) {tm['commit_ms_p50']:.2f} ms; {tm['delivered']}/{tm['runs']} delivered")
    if "chain" in results:
        ch = results["chain"]
        print(f"3-SF chain TCP, MTU 1500: {ch['chain_3sf_mbit_s']:.0f} Mbit/s (target >= 300); "
              f"same hosts plainly routed: {ch['routed_mbit_s']:.0f} Mbit/s")
    if "chain_jumbo" in results:
        ch = results["chain_jumbo"]
        print(f"3-SF chain TCP, host MTU {a.mtu}: {ch['chain_3sf_mbit_s']:.0f} Mbit/s; plainly "
              f"routed: {ch['routed_mbit_s']:.0f} Mbit/s")
    print("raw: " + json.dumps(results, default=str))
    if not a.skip_fast_path:
        fast_path_rows(a.seconds)
    return 0


def fast_path_rows(seconds: float, rounds: int = 3) -> None:
    """The tc-BPF fast path rows (owner: the fast path, issue 19): its classifier and SFF
    against plain kernel forwarding of the same frames on the same veths and the userspace
    SFF, in this run; method and recorded numbers in bench/sfc_fastpath.py, docs/sfc.md."""
    sys.path.insert(0, str(ROOT / "bench"))
    import sfc_fastpath

    ok, why = sfc_fastpath.FastPath.available()
    if not ok:
        print(f"fast path rows skipped: {why}")
        return
    a = argparse.Namespace(seconds=min(seconds, 1.0), rounds=rounds)
    sfc_fastpath.report(sfc_fastpath.run(a), a)


if __name__ == "__main__":
    sys.exit(main())
