"""An SFC lab on network namespaces, for tests, the benchmark and running by hand.

    hostA ── C (classifier) ── F (SFF + proxies ─ SF namespaces) ── E (SFF, end) ── hostB
  198.51.100.10   .1 | 192.0.2.1 ─ 192.0.2.2 | 192.0.2.5 ─ 192.0.2.6 | 203.0.113.1   .10

Each SF namespace is the plain forwarding function of the proxy contract (docs/sfc.md): a
routed bump in the wire between `sf-in` and `sf-out`, default route out of `sf-out` via
169.254.1.1 whose MAC (a permanent neighbour) is the host-side peer's. Reverse traffic
(hostB → hostA) is plainly routed. Names carry a unique prefix; `destroy()` removes all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyroute2 import netns

from nsf_agent.userspace.lab import sysctl, unique_prefix

log = logging.getLogger(__name__)

HOST_A, C_A = "198.51.100.10", "198.51.100.1"
HOST_B, E_B = "203.0.113.10", "203.0.113.1"
C_F, F_C = "192.0.2.1", "192.0.2.2"
F_E, E_F = "192.0.2.5", "192.0.2.6"
NET_A, NET_B = "198.51.100.0/24", "203.0.113.0/24"
SPI = 10


def _ip(ns: str | None, *args: str) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def mac_of(ns: str, ifname: str) -> str:
    out = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "dev", ifname], check=True,
                         capture_output=True, text=True).stdout
    return str(json.loads(out)[0]["address"])


@dataclass
class SfcLab:
    prefix: str
    sfs: int = 1
    mtu: int = 1500          # hosts' MTU; the other links get 100 bytes more (GRE + NSH)
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def unique(cls, sfs: int = 1, tag: str = "i2sf", mtu: int = 1500) -> SfcLab:
        return cls(unique_prefix(tag), sfs, mtu)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def host_a(self) -> str:
        return self.ns("ha")

    @property
    def host_b(self) -> str:
        return self.ns("hb")

    @property
    def c(self) -> str:
        return self.ns("c")

    @property
    def f(self) -> str:
        return self.ns("f")

    @property
    def e(self) -> str:
        return self.ns("e")

    def sf(self, i: int) -> str:
        return self.ns(f"s{i}")

    def build(self) -> None:
        roles = [self.host_a, self.c, self.f, self.e, self.host_b,
                 *(self.sf(i) for i in range(self.sfs))]
        for ns in roles:
            netns.create(ns)
            self.namespaces.append(ns)
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
            sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
            _ip(ns, "link", "set", "dev", "lo", "up")
        links = [
            (self.host_a, "eth0", f"{HOST_A}/24", self.c, "a", f"{C_A}/24"),
            (self.c, "f", f"{C_F}/30", self.f, "c", f"{F_C}/30"),
            (self.f, "e", f"{F_E}/30", self.e, "f", f"{E_F}/30"),
            (self.e, "b", f"{E_B}/24", self.host_b, "eth0", f"{HOST_B}/24"),
        ]
        for i in range(self.sfs):
            links.append((self.f, f"i{i}", None, self.sf(i), "sf-in", "169.254.2.2/30"))
            links.append((self.f, f"o{i}", None, self.sf(i), "sf-out", "169.254.1.2/30"))
        for n1, i1, a1, n2, i2, a2 in links:
            _ip(None, "link", "add", "name", f"{self.prefix[:10]}t", "netns", n1, "type", "veth",
                "peer", "name", i2, "netns", n2)
            _ip(n1, "link", "set", "dev", f"{self.prefix[:10]}t", "name", i1)
            for ns, ifn, addr in ((n1, i1, a1), (n2, i2, a2)):
                # the transport links have room for GRE + NSH (48 bytes and more for MD2),
                # as an SFC underlay is set up: no fragmentation between SFFs
                host = ns in (self.host_a, self.host_b)
                _ip(ns, "link", "set", "dev", ifn, "mtu",
                    str(self.mtu if host else self.mtu + 100))
                if addr:
                    _ip(ns, "addr", "add", addr, "dev", ifn)
                _ip(ns, "link", "set", "dev", ifn, "up")
        # Hosts compute their checksums and segment themselves, as packets arriving from a
        # wire are: a veth would otherwise hand the classifier's AF_PACKET socket TCP
        # packets with checksums left to offload (CHECKSUM_PARTIAL) and 64 KB GSO packets.
        for h in (self.host_a, self.host_b):
            subprocess.run(["ip", "netns", "exec", h, "ethtool", "-K", "eth0", "tx", "off",
                            "tso", "off", "gso", "off"], check=True, capture_output=True)
        _ip(self.host_a, "route", "add", "default", "via", C_A)
        _ip(self.host_b, "route", "add", "default", "via", E_B)
        _ip(self.c, "route", "add", NET_B, "via", F_C)
        _ip(self.f, "route", "add", NET_B, "via", E_F)
        _ip(self.f, "route", "add", NET_A, "via", C_F)
        _ip(self.e, "route", "add", NET_A, "via", F_E)
        for ns in (self.c, self.f, self.e):
            sysctl(ns, "net.ipv4.ip_forward", "1")
        for i in range(self.sfs):
            s = self.sf(i)
            sysctl(s, "net.ipv4.ip_forward", "1")
            for k in ("all", "default", "sf-in", "sf-out"):
                sysctl(s, f"net.ipv4.conf.{k}.rp_filter", "0")
            _ip(s, "neigh", "replace", "169.254.1.1", "lladdr", mac_of(self.f, f"o{i}"),
                "dev", "sf-out", "nud", "permanent")
            _ip(s, "route", "add", "default", "via", "169.254.1.1", "dev", "sf-out")

    def sf_mac(self, i: int) -> str:
        return mac_of(self.sf(i), "sf-in")

    def run(self, ns: str, cmd: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], text=True,
                              capture_output=True, **kw)

    def popen(self, ns: str, cmd: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

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
            with contextlib.suppress(OSError):
                netns.remove(ns)
        self.namespaces.clear()


# ---- i2nsf-sfc-nsf configuration of the lab's nodes (what a controller would push) ---------

NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"


def classifier_xml(spi: int = SPI, first_hop: str = F_C, md: str = "md1",
                   ingress: str = "a", extra: str = "") -> str:
    return f"""<sfc xmlns="{NS}"><classifier>
  <rule><name>a-to-b</name><order>10</order>
    <match><source-prefix>{NET_A}</source-prefix><destination-prefix>{NET_B}</destination-prefix>
      <ingress-interface>{ingress}</ingress-interface></match>
    <path><spi>{spi}</spi><si>255</si><first-hop>{first_hop}</first-hop><md-type>{md}</md-type>
    </path></rule>{extra}</classifier></sfc>"""


def middle_xml(lab: SfcLab, spi: int = SPI, sff_id: int = 2, hold: int = 64,
               extra_entries: str = "", sockets: Sequence[str] | None = None) -> str:
    """F: SI 255-i → proxy i (local), after the last SF → E."""
    entries, proxies = [], []
    for i in range(lab.sfs):
        si = 255 - i
        entries.append(f"<entry><spi>{spi}</spi><si>{si}</si><next-hop><locator>{F_C}</locator>"
                       "<kind>proxy</kind></next-hop></entry>")
        sock = f"<result-socket>{sockets[i]}</result-socket>" if sockets else ""
        proxies.append(f"<proxy><name>sf{i}</name><spi>{spi}</spi><si>{si}</si>"
                       f"<to-sf-interface>i{i}</to-sf-interface>"
                       f"<from-sf-interface>o{i}</from-sf-interface>"
                       f"<sf-mac>{lab.sf_mac(i)}</sf-mac>{sock}</proxy>")
    entries.append(f"<entry><spi>{spi}</spi><si>{255 - lab.sfs}</si><next-hop>"
                   f"<locator>{E_F}</locator><kind>sff</kind></next-hop></entry>")
    return (f'<sfc xmlns="{NS}"><forwarder><sff-id>{sff_id}</sff-id><locator>{F_C}</locator>'
            f"<hold-packets>{hold}</hold-packets><table>{''.join(entries)}{extra_entries}"
            f"</table></forwarder><proxies>{''.join(proxies)}</proxies></sfc>")


def end_xml(lab: SfcLab, spi: int = SPI, sff_id: int = 3) -> str:
    return (f'<sfc xmlns="{NS}"><forwarder><sff-id>{sff_id}</sff-id><locator>{E_F}</locator>'
            f"<table><entry><spi>{spi}</spi><si>{255 - lab.sfs}</si><terminate/></entry>"
            "</table></forwarder></sfc>")

