"""Three namespaces on veths for the SFC fast path tests and bench.

    ns A  a0 192.0.2.2/24 ──── f0 192.0.2.1/24 (local locator)  ns F (DUT)
    ns B  b0 198.51.100.2/24 (+ .3, .4) ──── f1 198.51.100.1/24 ns F

F forwards (ip_forward=1). Frames are sent as raw Ethernet from A (AF_PACKET on a0)
and captured raw on b0 in B; a raw IPv4 GRE socket in F sees what F's kernel stack
receives (what the userspace SFC path would get).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, NetNS, netns

CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
_libc = ctypes.CDLL(None, use_errno=True)

A_IP, F_A_IP, F_B_IP, B_IP = "192.0.2.2", "192.0.2.1", "198.51.100.1", "198.51.100.2"
B_IP2, B_IP3 = "198.51.100.3", "198.51.100.4"
LOCAL = F_A_IP


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block (this thread) in network namespace `name`: sockets made here stay there."""
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(orig, CLONE_NEWNET)
        os.close(fd)
        os.close(orig)


def _sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True)


@dataclass
class Net:
    a: str
    f: str
    b: str
    a0: str
    f0: str
    f1: str
    b0: str
    mac: dict[str, str]

    def ifindex(self, ns: str, ifname: str) -> int:
        with NetNS(ns) as n:
            return n.link_lookup(ifname=ifname)[0]

    def sender(self) -> socket.socket:
        with in_netns(self.a):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
            s.bind((self.a0, 0))
        return s

    def capture(self) -> socket.socket:
        with in_netns(self.b):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind((self.b0, 0))
            s.setblocking(False)
        return s

    def gre_sink(self) -> socket.socket:
        """What the DUT's own stack receives over GRE (the userspace path's input)."""
        with in_netns(self.f):
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
            s.setblocking(False)
        return s

    def delete(self) -> None:
        for ns in (self.a, self.f, self.b):
            with contextlib.suppress(Exception):
                netns.remove(ns)


def make_net() -> Net:
    tag = secrets.token_hex(3)
    n = Net(
        a=f"fpA{tag}",
        f=f"fpF{tag}",
        b=f"fpB{tag}",
        a0=f"a0{tag}",
        f0=f"f0{tag}",
        f1=f"f1{tag}",
        b0=f"b0{tag}",
        mac={},
    )
    try:
        for ns in (n.a, n.f, n.b):
            netns.create(ns)
        with IPRoute() as ip:
            ip.link("add", ifname=n.a0, kind="veth", peer=n.f0)
            ip.link("add", ifname=n.b0, kind="veth", peer=n.f1)
            for ifn, ns in ((n.a0, n.a), (n.f0, n.f), (n.f1, n.f), (n.b0, n.b)):
                ip.link("set", index=ip.link_lookup(ifname=ifn)[0], net_ns_fd=ns)
        plan = {
            n.a: [(n.a0, A_IP)],
            n.f: [(n.f0, F_A_IP), (n.f1, F_B_IP)],
            n.b: [(n.b0, B_IP), (n.b0, B_IP2), (n.b0, B_IP3)],
        }
        for ns, addrs in plan.items():
            with NetNS(ns) as x:
                lo = x.link_lookup(ifname="lo")[0]
                x.link("set", index=lo, state="up")
                for ifn, addr in addrs:
                    idx = x.link_lookup(ifname=ifn)[0]
                    x.addr("add", index=idx, address=addr, prefixlen=24)
                    x.link("set", index=idx, state="up")
                    n.mac[ifn] = x.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        with NetNS(n.a) as x:
            x.route("add", dst="0.0.0.0/0", gateway=F_A_IP)
        with NetNS(n.b) as x:
            x.route("add", dst="0.0.0.0/0", gateway=F_B_IP)
        with NetNS(n.f) as x:  # plain forwarding of what is not classified (and the bench)
            x.route("add", dst="203.0.113.0/24", gateway=B_IP)
        _sysctl(n.f, "net.ipv4.ip_forward", "1")
        for ns in (n.a, n.f, n.b):
            _sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")
            _sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")
        # resolved neighbours, so no ARP frame interleaves with the test's traffic
        with NetNS(n.f) as x:
            f1 = x.link_lookup(ifname=n.f1)[0]
            f0 = x.link_lookup(ifname=n.f0)[0]
            for addr in (B_IP, B_IP2, B_IP3):
                x.neigh("add", dst=addr, lladdr=n.mac[n.b0], ifindex=f1, state=0x80)
            x.neigh("add", dst=A_IP, lladdr=n.mac[n.a0], ifindex=f0, state=0x80)
        for ns, ifn, gw, mac in (
            (n.a, n.a0, F_A_IP, n.mac[n.f0]),
            (n.b, n.b0, F_B_IP, n.mac[n.f1]),
        ):
            with NetNS(ns) as x:
                x.neigh("add", dst=gw, lladdr=mac, ifindex=x.link_lookup(ifname=ifn)[0], state=0x80)
    except BaseException:
        n.delete()
        raise
    return n


def drain(s: socket.socket) -> None:
    with contextlib.suppress(BlockingIOError):
        while True:
            s.recv(65535)


def collect(s: socket.socket, want: int, timeout: float = 2.0, keep=None) -> list[bytes]:
    """Frames from a non-blocking socket until `want` kept ones or the deadline."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([s], [], [], left)[0]:
            break
        try:
            b = s.recv(65535)
        except BlockingIOError:
            continue
        if keep is None or keep(b):
            out.append(b)
    return out


# ---- a packet generator: raw Ethernet frames, sendmmsg batches, in its own process ----

PACKET_QDISC_BYPASS = 20
SOL_PACKET = 263


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def blast(
    ifname: str, frames: list[bytes], seconds: float, batch: int = 512, pps: float = 0
) -> int:
    """Send `frames` round-robin out of `ifname` for `seconds` (sendmmsg, qdisc bypassed),
    as fast as possible or paced to `pps`; returns the number of frames the kernel took."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
    s.bind((ifname, 0))
    bufs = [ctypes.create_string_buffer(frames[i % len(frames)]) for i in range(batch)]
    iov = (_Iovec * batch)()
    msgs = (_Mmsghdr * batch)()
    for i, b in enumerate(bufs):
        iov[i].iov_base = ctypes.addressof(b)
        iov[i].iov_len = len(frames[i % len(frames)])
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iov[i])
        msgs[i].msg_hdr.msg_iovlen = 1
    send = _libc.sendmmsg
    send.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
    fd, sent = s.fileno(), 0
    start = time.monotonic()
    end = start + seconds
    while (now := time.monotonic()) < end:
        if pps and sent > (now - start) * pps:
            time.sleep(min(0.001, end - now))  # pacing a generator, not waiting for a result
            continue
        n = send(fd, msgs, batch, 0)
        if n > 0:
            sent += n
    s.close()
    return sent


def start_blast(
    net: Net,
    frames: list[bytes],
    seconds: float,
    pps: float = 0,
    batch: int = 512,
    cpu: int | None = None,
) -> subprocess.Popen[str]:
    """The generator as a process in namespace A (no GIL shared with the test)."""
    import json
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import json,sys; sys.path.insert(0, {here!r}); import fastpath_net as f; "
        "a = json.load(sys.stdin); "
        "print(f.blast(a['if'], [bytes.fromhex(x) for x in a['frames']], a['s'], a['b'], a['p']))"
    )
    p = subprocess.Popen(
        [
            *(["taskset", "-c", str(cpu)] if cpu is not None else []),
            "ip",
            "netns",
            "exec",
            net.a,
            sys.executable,
            "-c",
            code,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdin is not None
    args = {"if": net.a0, "frames": [f.hex() for f in frames], "s": seconds, "p": pps, "b": batch}
    p.stdin.write(json.dumps(args))
    p.stdin.close()
    return p


def link_stats(ns: str, ifname: str) -> dict[str, int]:
    with NetNS(ns) as x:
        link = x.get_links(x.link_lookup(ifname=ifname)[0])[0]
        return dict(link.get_attr("IFLA_STATS64"))
