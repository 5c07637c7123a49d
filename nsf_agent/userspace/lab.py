"""A four-namespace lab (hostA — gwA — gwB — hostB) for tests, benchmarks and examples.

Addresses are documentation prefixes: 198.51.100.0/24 behind A, 203.0.113.0/24 behind B,
192.0.2.0/24 between the gateways. Names carry a caller-chosen unique prefix so parallel
runs never collide; `Lab.destroy()` removes everything it created, even half-built.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from netconf_core.polling import wait_until as wait_until  # re-exported for labs and tests

from .model import (
    Action,
    Direction,
    EncAlg,
    IntegAlg,
    Lifetime,
    Mode,
    SaConfig,
    Selector,
    SpdEntry,
    UdpEncap,
)

log = logging.getLogger(__name__)

NET_A = ipaddress.ip_network("198.51.100.0/24")
NET_B = ipaddress.ip_network("203.0.113.0/24")
NET_GW = ipaddress.ip_network("192.0.2.0/24")
HOST_A = "198.51.100.10"
HOST_B = "203.0.113.10"
GW_A_IN = "198.51.100.1"
GW_B_IN = "203.0.113.1"
GW_A = "192.0.2.1"
GW_B = "192.0.2.2"


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run a block (socket creation, /proc/sys writes) inside namespace `name`."""
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def sysctl(ns: str, key: str, value: str) -> None:
    with in_netns(ns), open("/proc/sys/" + key.replace(".", "/"), "w") as f:
        f.write(value)


@dataclass
class Lab:
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def host_a(self) -> str:
        return f"{self.prefix}-ha"

    @property
    def gw_a(self) -> str:
        return f"{self.prefix}-ga"

    @property
    def gw_b(self) -> str:
        return f"{self.prefix}-gb"

    @property
    def host_b(self) -> str:
        return f"{self.prefix}-hb"

    @property
    def gw_link_a(self) -> str:
        """The veth in gwA facing gwB (where ESP is visible)."""
        return "gab"

    def build(self, *, gro: bool = True) -> None:
        for ns in (self.host_a, self.gw_a, self.gw_b, self.host_b):
            netns.create(ns)
            self.namespaces.append(ns)
            # IPv4-only lab: no IPv6 link-local chatter in captures
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        links = [  # (ns1, if1, addr1, ns2, if2, addr2)
            (self.host_a, "eth0", f"{HOST_A}/24", self.gw_a, "lan", f"{GW_A_IN}/24"),
            (self.gw_a, "gab", f"{GW_A}/24", self.gw_b, "gba", f"{GW_B}/24"),
            (self.gw_b, "lan", f"{GW_B_IN}/24", self.host_b, "eth0", f"{HOST_B}/24"),
        ]
        with IPRoute() as ipr:
            for i, (n1, i1, _, n2, i2, _) in enumerate(links):
                tmp1, tmp2 = f"{self.prefix[:8]}x{i}a", f"{self.prefix[:8]}x{i}b"
                ipr.link("add", ifname=tmp1, kind="veth", peer=tmp2)
                for tmp, ns, name in ((tmp1, n1, i1), (tmp2, n2, i2)):
                    idx = ipr.link_lookup(ifname=tmp)[0]
                    ipr.link("set", index=idx, net_ns_fd=ns)
                    with NetNS(ns) as nsr:
                        j = nsr.link_lookup(ifname=tmp)[0]
                        nsr.link("set", index=j, ifname=name)
        for n1, i1, a1, n2, i2, a2 in links:
            for ns, ifn, addr in ((n1, i1, a1), (n2, i2, a2)):
                with NetNS(ns) as nsr:
                    j = nsr.link_lookup(ifname=ifn)[0]
                    ip, plen = addr.split("/")
                    nsr.addr("add", index=j, address=ip, prefixlen=int(plen))
                    nsr.link("set", index=j, state="up")
                    lo = nsr.link_lookup(ifname="lo")[0]
                    nsr.link("set", index=lo, state="up")
        with NetNS(self.host_a) as nsr:
            nsr.route("add", dst="0.0.0.0/0", gateway=GW_A_IN)
        with NetNS(self.host_b) as nsr:
            nsr.route("add", dst="0.0.0.0/0", gateway=GW_B_IN)
        for ns in (self.gw_a, self.gw_b):
            sysctl(ns, "net.ipv4.ip_forward", "1")
        if gro:
            for ns in self.namespaces:
                self._enable_gro(ns)

    def _enable_gro(self, ns: str) -> None:
        """veth only coalesces (GRO) when asked: real NICs do by default."""
        with contextlib.suppress(FileNotFoundError, subprocess.CalledProcessError):
            for dev in self.devices(ns):
                subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "gro", "on"],
                               check=True, capture_output=True)

    def devices(self, ns: str) -> list[str]:
        with NetNS(ns) as nsr:
            return [lk.get_attr("IFLA_IFNAME") for lk in nsr.get_links()
                    if lk.get_attr("IFLA_IFNAME") != "lo"]

    def route(self, ns: str, dst: str, gateway: str) -> None:
        with NetNS(ns) as nsr:
            nsr.route("replace", dst=dst, gateway=gateway)

    def run(self, ns: str, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], text=True,
                              capture_output=True, **kw)

    def popen(self, ns: str, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def socket_in(self, ns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
        with in_netns(ns):
            return socket.socket(family, type_, proto)

    def destroy(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        for ns in reversed(self.namespaces):
            try:
                netns.remove(ns)
            except OSError as e:
                log.warning("cannot remove netns %s: %s", ns, e)
        self.namespaces.clear()


def unique_prefix(tag: str = "i2u") -> str:
    """`<tag>-<pid>-<n>` fitting in interface-name budgets."""
    unique_prefix.n += 1  # type: ignore[attr-defined]
    return f"{tag}-{os.getpid() % 100000}-{unique_prefix.n}"  # type: ignore[attr-defined]


unique_prefix.n = 0  # type: ignore[attr-defined]


@dataclass
class TunnelKeys:
    """Keys and SPIs of one gateway-to-gateway tunnel (A→B and B→A SAs)."""

    spi_ab: int
    spi_ba: int
    key_ab: bytes
    key_ba: bytes
    enc_alg: EncAlg = EncAlg.AES_GCM_16
    integ_alg: IntegAlg = IntegAlg.NONE
    ikey_ab: bytes = b""
    ikey_ba: bytes = b""

    @classmethod
    def random(cls, spi_ab: int = 0x1001, spi_ba: int = 0x2002, *, cbc: bool = False
               ) -> TunnelKeys:
        if cbc:
            return cls(spi_ab, spi_ba, os.urandom(16), os.urandom(16), EncAlg.AES_CBC,
                       IntegAlg.HMAC_SHA2_256_128, os.urandom(32), os.urandom(32))
        return cls(spi_ab, spi_ba, os.urandom(20), os.urandom(20))


def gateway_config(side: str, keys: TunnelKeys, *, reqid: int = 1,
                   soft: Lifetime = Lifetime(), hard: Lifetime = Lifetime(),  # noqa: B008
                   window: int = 64, names: str = "t", encap: UdpEncap | None = None
                   ) -> tuple[list[SaConfig], list[SpdEntry]]:
    """SAD and SPD of gateway `side` ("a" or "b") for the A<->B tunnel."""
    a, b = ipaddress.ip_address(GW_A), ipaddress.ip_address(GW_B)

    def sa(name: str, spi: int, key: bytes, ikey: bytes, src: Any, dst: Any,
           d: Direction) -> SaConfig:
        return SaConfig(name=name, spi=spi, direction=d, src=src, dst=dst, mode=Mode.TUNNEL,
                        enc_alg=keys.enc_alg, enc_key=key, integ_alg=keys.integ_alg,
                        integ_key=ikey, reqid=reqid, replay_window=window, soft=soft,
                        hard=hard, encap=encap)

    ab = (f"{names}-ab", keys.spi_ab, keys.key_ab, keys.ikey_ab, a, b)
    ba = (f"{names}-ba", keys.spi_ba, keys.key_ba, keys.ikey_ba, b, a)
    if side == "a":
        sas = [sa(*ab, Direction.OUTBOUND), sa(*ba, Direction.INBOUND)]
        local, remote = NET_A, NET_B
    else:
        sas = [sa(*ab, Direction.INBOUND), sa(*ba, Direction.OUTBOUND)]
        local, remote = NET_B, NET_A
    sel = Selector(local_prefix=local, remote_prefix=remote)
    spd = [SpdEntry(name=f"{names}-out", direction=Direction.OUTBOUND, selector=sel,
                    action=Action.PROTECT, reqid=reqid),
           SpdEntry(name=f"{names}-in", direction=Direction.INBOUND, selector=sel,
                    action=Action.PROTECT, reqid=reqid)]
    return sas, spd
