"""One SFC packet suite, run against both data planes of an agent (issue 19):

- "userspace": the userspace data path process alone (the reference);
- "bpf": the same process plus the tc-BPF fast path given the same table generation (what
  an agent runs with `forwarder/fast-path/enabled`): hot packets take the fast path, the
  rest goes up to the same userspace process.

Every case expects the same bytes on the wire from both (outer IP ID aside, which either
path picks freshly), decoded by scapy and tshark; for "bpf", the fast path's own counters
prove which packets it handled.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, veth, tc BPF)")

if os.geteuid() == 0:
    from nsf_agent.sfc.fastpath import FastPath

    _OK, _WHY = FastPath.available()
else:
    _OK, _WHY = False, "not root"

from fastpath_net import (  # noqa: E402
    A_IP,
    B_IP,
    B_IP2,
    B_IP3,
    LOCAL,
    collect,
    drain,
    in_netns,
    make_net,
)
from scapy.all import GRE, IP, TCP, UDP, Ether, Raw, wrpcap  # noqa: E402
from scapy.contrib.nsh import NSH  # noqa: E402

from netconf_core.polling import wait_until  # noqa: E402
from nsf_agent.sfc.client import SfcClient, spawn  # noqa: E402
from nsf_agent.sfc.model import (  # noqa: E402
    ClassifierRule,
    Match,
    NextHop,
    PortRange,
    SfcConfig,
    SffEntry,
)


@pytest.fixture(scope="module")
def net():
    n = make_net()
    yield n
    n.delete()


class Plane:
    def __init__(self, net, kind: str, tmp: str) -> None:
        self.net, self.kind = net, kind
        control = os.path.join(tmp, "dp.sock")
        self.proc = spawn(control, netns=net.f, log_path=os.path.join(tmp, "dp.log"))
        self.client = wait_until(lambda: self._connect(control), 15, "the SFC data path")
        self.fp = None
        if kind == "bpf":
            if not _OK:
                self.close()
                pytest.skip(f"BPF fast path unavailable: {_WHY}")
            with in_netns(net.f):
                self.fp = FastPath()
                self.fp.attach([net.f0])

    def _connect(self, control):
        if self.proc.poll() is not None:
            raise RuntimeError("SFC data path exited")
        try:
            c = SfcClient(control, timeout=10.0)
            c.ping()
            return c
        except OSError:
            return None

    def load(self, cfg: SfcConfig) -> None:
        self.client.replace(cfg)
        if self.fp is not None:
            with in_netns(self.net.f):
                self.fp.apply(cfg)

    def fast(self, stat: str) -> int:
        return self.fp.counters().stats[stat] if self.fp is not None else 0

    def close(self) -> None:
        if self.fp is not None:
            with in_netns(self.net.f):
                self.fp.close()
        try:
            self.client.shutdown()
        except Exception:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module", params=["userspace", "bpf"])
def plane(request, net):
    with tempfile.TemporaryDirectory() as tmp:
        p = Plane(net, request.param, tmp)
        yield p
        p.close()


@pytest.fixture
def io(net):
    tx, cap = net.sender(), net.capture()
    drain(cap)
    yield tx, cap
    tx.close()
    cap.close()


def cfg_for(net, hold=0):
    return SfcConfig(
        sff_id=7,
        locator=LOCAL,
        rules=[
            ClassifierRule(
                "web",
                10,
                Match(dst="203.0.113.0/24", protocol=17, dport=PortRange(80, 80), ingress=net.f0),
                spi=100,
                si=255,
                first_hop=B_IP,
                ttl=40,
            ),
            ClassifierRule(
                "wide", 20, Match(dst="203.0.113.0/25"), spi=101, si=250, first_hop=B_IP2
            ),
        ],
        table=[
            SffEntry(200, 254, (NextHop(B_IP2, "sff"),)),
            SffEntry(201, 9, (NextHop(None, "terminate"),)),
        ],
        hold_packets=hold,
    )


def eth(net, pkt) -> bytes:
    return bytes(Ether(dst=net.mac[net.f0], src=net.mac[net.a0]) / pkt)


def out_frames(net, cap, n, timeout=3.0):
    mac = bytes.fromhex(net.mac[net.f1].replace(":", ""))
    return collect(
        cap, n, timeout=timeout, keep=lambda b: b[6:12] == mac and b[12:14] == b"\x08\x00"
    )


def normalized(frame: bytes) -> bytes:
    """The IP packet with the outer IP ID and checksum zeroed (fresh per path)."""
    p = Ether(frame)[IP]
    p.id = 0
    p.chksum = 0
    return bytes(p)


def tshark(frames, fields):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "c.pcap")
        wrpcap(path, [Ether(f) for f in frames])
        args = ["tshark", "-r", path, "-T", "fields", "-E", "separator=|"]
        for f in fields:
            args += ["-e", f]
        out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return [line.split("|") for line in out.stdout.splitlines()]


def nsh_pkt(spi, si, ttl=20, **kw):
    inner = IP(src="10.9.0.1", dst=B_IP3, ttl=30) / UDP(sport=4000, dport=5000) / Raw(b"p" * 24)
    return (
        IP(src=A_IP, dst=LOCAL)
        / GRE(proto=0x894F)
        / NSH(spi=spi, si=si, ttl=ttl, nextproto=1, **kw)
        / inner
    )


def test_classifier(net, plane, io):
    tx, cap = io
    plane.load(cfg_for(net))
    before = plane.fast("classified")
    inner = IP(src=A_IP, dst="203.0.113.5", ttl=20) / UDP(sport=999, dport=80) / Raw(b"c" * 40)
    tx.send(eth(net, inner))
    (f,) = out_frames(net, cap, 1)
    p = Ether(f)
    assert (p[IP].src, p[IP].dst, p[IP].ttl, p[IP].flags.DF) == (LOCAL, B_IP, 64, False)
    assert (p[NSH].spi, p[NSH].si, p[NSH].ttl, p[NSH].mdtype, p[NSH].nextproto) == (
        100,
        255,
        40,
        1,
        1,
    )
    assert p[NSH].context_header == bytes(16)
    assert bytes(p[NSH].payload) == bytes(inner)
    expect = (
        IP(src=LOCAL, dst=B_IP, ttl=64, id=0, flags=0)
        / GRE(proto=0x894F)
        / NSH(spi=100, si=255, ttl=40, mdtype=1, nextproto=1)
        / inner
    )
    expect = IP(bytes(expect))
    expect.chksum = 0
    assert normalized(f) == bytes(expect)
    (row,) = tshark([f], ["nsh.spi", "nsh.si", "nsh.ttl", "ip.dst"])
    assert [int(x, 0) for x in row[:3]] == [100, 255, 40]
    if plane.kind == "bpf":
        assert plane.fast("classified") == before + 1


def test_classifier_order_and_unmatched(net, plane, io):
    tx, cap = io
    plane.load(cfg_for(net))
    # "web" (order 10, /24) beats "wide" (order 20, /25) though /25 is longer
    tx.send(eth(net, IP(src=A_IP, dst="203.0.113.9") / UDP(sport=1, dport=80) / Raw(b"1" * 8)))
    tx.send(eth(net, IP(src=A_IP, dst="203.0.113.9") / UDP(sport=1, dport=81) / Raw(b"2" * 8)))
    unmatched = IP(src=A_IP, dst="203.0.113.200", ttl=9) / UDP(sport=1, dport=81) / Raw(b"3" * 8)
    tx.send(eth(net, unmatched))
    got = [Ether(f) for f in out_frames(net, cap, 3)]
    assert [(p[NSH].spi, p[IP].dst) for p in got[:2]] == [(100, B_IP), (101, B_IP2)]
    # unmatched: routed on as the kernel would, TTL - 1 and the header checksum updated
    routed = IP(bytes(unmatched))
    routed.ttl -= 1
    del routed.chksum
    assert GRE not in got[2] and bytes(got[2][IP]) == bytes(IP(bytes(routed)))


def test_sff_forward(net, plane, io):
    tx, cap = io
    plane.load(cfg_for(net))
    before = plane.fast("sff-forwarded")
    ctx = bytes(range(16))
    sent = nsh_pkt(200, 254, ttl=20, context_header=ctx)
    tx.send(eth(net, sent))
    (f,) = out_frames(net, cap, 1)
    p = Ether(f)
    assert (p[IP].src, p[IP].dst, p[IP].ttl) == (LOCAL, B_IP2, 64)
    assert (p[NSH].spi, p[NSH].si, p[NSH].ttl, p[NSH].context_header) == (200, 254, 19, ctx)
    assert bytes(p[NSH].payload) == bytes(sent[NSH].payload)
    (row,) = tshark([f], ["nsh.spi", "nsh.si", "nsh.ttl"])
    assert [int(x, 0) for x in row] == [200, 254, 19]
    if plane.kind == "bpf":
        assert plane.fast("sff-forwarded") == before + 1


def test_sff_terminate(net, plane, io):
    tx, cap = io
    plane.load(cfg_for(net))
    sent = nsh_pkt(201, 9)
    tx.send(eth(net, sent))
    (f,) = out_frames(net, cap, 1)
    assert bytes(Ether(f)[IP]) == bytes(sent[NSH].payload)
    if plane.kind == "bpf":
        assert plane.fast("sff-terminated") >= 1


def test_ttl_expiry_md2_and_miss(net, plane, io):
    """What the fast path passes up comes out exactly as from the userspace path."""
    tx, cap = io
    plane.load(cfg_for(net))
    before = {k: plane.fast(k) for k in ("pass-ttl", "pass-md-type", "pass-sff-miss")}
    tx.send(eth(net, nsh_pkt(200, 254, ttl=1)))  # expires here: dropped
    tx.send(eth(net, nsh_pkt(999, 3)))  # miss, hold 0: dropped
    md2 = (
        IP(src=A_IP, dst=LOCAL)
        / GRE(proto=0x894F)
        / NSH(spi=200, si=254, ttl=20, mdtype=2, length=2, nextproto=1)
        / IP(dst=B_IP3)
        / UDP()
    )
    tx.send(eth(net, md2))  # MD2: userspace forwards it
    got = [Ether(f) for f in out_frames(net, cap, 2, timeout=2.0)]
    assert len(got) == 1
    p = got[0]
    assert (p[NSH].spi, p[NSH].si, p[NSH].ttl, p[NSH].mdtype, p[IP].dst) == (200, 254, 19, 2, B_IP2)
    if plane.kind == "bpf":
        wait_until(lambda: plane.fast("pass-md-type") == before["pass-md-type"] + 1, 2)
        assert plane.fast("pass-ttl") == before["pass-ttl"] + 1
        assert plane.fast("pass-sff-miss") == before["pass-sff-miss"] + 1


def test_counters_add_up(net, plane, io):
    """Rule and entry counters: the userspace path's plus the fast path's = packets sent."""
    tx, cap = io
    plane.load(cfg_for(net))
    st0 = plane.client.stats()
    fp0 = plane.fp.counters() if plane.fp else None
    for _ in range(5):
        tx.send(eth(net, nsh_pkt(200, 254)))
    assert len(out_frames(net, cap, 5)) == 5
    st = plane.client.stats()
    ents = {(e[0], e[1]): e[2] for e in st["entries"]}
    ents0 = {(e[0], e[1]): e[2] for e in st0["entries"]}
    user = ents[(200, 254)] - ents0.get((200, 254), 0)
    fast = 0
    if plane.fp is not None:
        fast = plane.fp.counters().sff[(200, 254)][0] - fp0.sff.get((200, 254), (0, 0))[0]
        assert fast == 5
    assert user + fast == 5


def test_sff_balances_flows_like_the_userspace_path(net, plane, io):
    """Three next hops of equal weight: every flow goes to the hop the userspace path's
    rendezvous hash picks (engine._Entry.pick is the reference), in both planes."""
    from nsf_agent.sfc.engine import Engine

    tx, cap = io
    cfg = cfg_for(net)
    hops = (NextHop(B_IP, "sff"), NextHop(B_IP2, "sff"), NextHop(B_IP3, "sff"))
    cfg.table = [*cfg.table, SffEntry(300, 50, hops)]
    plane.load(cfg)
    ref = Engine()
    ref.load(cfg, set(), {})
    entry = ref.table[(300, 50)]
    before = plane.fast("sff-forwarded")
    sent = []
    for i in range(24):
        proto = UDP if i % 3 else TCP
        inner = IP(src=f"10.9.{i}.1", dst="10.8.0.1") / proto(sport=1000 + 7 * i, dport=80)
        pkt = (
            IP(src=A_IP, dst=LOCAL)
            / GRE(proto=0x894F)
            / NSH(spi=300, si=50, ttl=20, nextproto=1)
            / inner
            / Raw(b"b" * 8)
        )
        want = hops[entry.pick(bytes(pkt[NSH].payload), 0)].locator
        sent.append((bytes(pkt[NSH].payload), want))
        tx.send(eth(net, pkt))
    got = {bytes(Ether(f)[NSH].payload): Ether(f)[IP].dst for f in out_frames(net, cap, 24)}
    assert len(got) == 24
    assert {got[p] for p, _ in sent} == {B_IP, B_IP2, B_IP3}  # all three hops get flows
    assert all(got[p] == want for p, want in sent)
    if plane.kind == "bpf":
        assert plane.fast("sff-forwarded") == before + 24
