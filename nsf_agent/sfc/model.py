"""The applied SFC configuration of one agent as plain dataclasses.

The `sfc` applier builds these from committed `i2nsf-sfc-nsf` configuration; the userspace
data path receives them as JSON (`to_dict`/`from_dict`); the tc-BPF fast path receives the
same `SfcConfig` as one "generation" (`nsf_agent.sfc.fastpath`). `check()` holds the rules
every consumer relies on (SI 0 never in a table, one entry per (SPI, SI), next hops of one
address family), so that no consumer sees a table it cannot carry out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NEXT_HOP_KINDS = ("sff", "sf", "proxy", "terminate")
TRANSPORTS = ("gre",)


class ModelError(ValueError):
    """Configuration no data path can carry out; `path` names the offending node."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True, slots=True)
class PortRange:
    start: int = 0
    end: int = 65535

    def __contains__(self, port: int) -> bool:
        return self.start <= port <= self.end


ANY_PORTS = PortRange()


@dataclass(frozen=True, slots=True)
class Match:
    """All given fields must match (absent = any)."""

    src: str | None = None            # prefix, e.g. "198.51.100.0/24"
    dst: str | None = None
    protocol: int | None = None       # IP protocol number
    sport: PortRange = ANY_PORTS
    dport: PortRange = ANY_PORTS
    dscp: int | None = None
    ingress: str | None = None        # interface name

    def family(self) -> int | None:
        fams = {ipaddress.ip_network(p, strict=False).version for p in (self.src, self.dst) if p}
        return fams.pop() if len(fams) == 1 else None


@dataclass(frozen=True, slots=True)
class ClassifierRule:
    name: str
    order: int
    match: Match
    spi: int
    si: int
    first_hop: str                    # locator (IP) of the first SFF
    md_type: int = 1                  # 1 = MD1, 2 = MD2 (carries an RSP trace TLV)
    ttl: int = 63


@dataclass(frozen=True, slots=True)
class ReclassifyRule:
    """A packet returned with re-classification request `result` (MD2 TLV type 1) is put
    on path (spi, si) toward `first_hop` (seed 4.5)."""

    result: str
    spi: int
    si: int
    first_hop: str


@dataclass(frozen=True, slots=True)
class NextHop:
    locator: str | None               # IP; None for kind "terminate"
    kind: str = "sff"                 # "sff" | "sf" | "proxy" | "terminate"
    weight: int = 1
    transport: str = "gre"


@dataclass(frozen=True, slots=True)
class SffEntry:
    spi: int
    si: int
    next_hops: tuple[NextHop, ...]


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    name: str
    spi: int
    si: int                           # the SI of packets handed to the SF; returned as si-1
    to_sf: str                        # host-side interface whose peer is the SF's sf-in
    from_sf: str                      # host-side interface whose peer is the SF's sf-out
    sf_mac: str                       # MAC of the SF's sf-in (destination of our frames)
    result_socket: str | None = None  # unix datagram socket the SF reports results to
    weight: int = 1                   # share of the flows among the instances of (spi, si)


@dataclass(slots=True)
class SfcConfig:
    sff_id: int = 0
    locator: str | None = None        # this forwarder's GRE address
    rules: list[ClassifierRule] = field(default_factory=list)
    reclassify: list[ReclassifyRule] = field(default_factory=list)
    # NSF-triggered steering: next-function request (MD2 TLV 3, value = SF type) → path;
    # `result` holds the SF type name
    steering: list[ReclassifyRule] = field(default_factory=list)
    table: list[SffEntry] = field(default_factory=list)
    proxies: list[ProxyEntry] = field(default_factory=list)
    hold_packets: int = 64            # per (SPI, SI) held on a table miss
    hold_ms: int = 500                # how long they are held before being dropped
    generation: int = 0

    def empty(self) -> bool:
        return not (self.rules or self.reclassify or self.steering or self.table
                    or self.proxies)

    def check(self) -> None:
        """Raise ModelError for a table no data path can carry out."""
        fam = ipaddress.ip_address(self.locator).version if self.locator else None
        seen: set[tuple[int, int]] = set()
        for e in self.table:
            path = f"forwarder/table/entry[spi='{e.spi}'][si='{e.si}']"
            if e.si == 0:
                raise ModelError(f"SFF entry SPI {e.spi}: SI 0 ends a path, it has no next hop",
                                 path)
            if (e.spi, e.si) in seen:
                raise ModelError(f"duplicate SFF entry (SPI {e.spi}, SI {e.si})", path)
            seen.add((e.spi, e.si))
            if not e.next_hops:
                raise ModelError(f"SFF entry (SPI {e.spi}, SI {e.si}) has no next hop", path)
            for h in e.next_hops:
                if h.kind not in NEXT_HOP_KINDS or h.transport not in TRANSPORTS:
                    raise ModelError(f"next hop kind {h.kind!r}/{h.transport!r} unknown", path)
                if h.kind == "terminate":
                    continue
                if h.locator is None:
                    raise ModelError(f"next hop of kind {h.kind} needs a locator", path)
                v = ipaddress.ip_address(h.locator).version
                if fam is not None and v != fam:
                    raise ModelError(
                        f"next hop {h.locator} (IPv{v}) is not in the forwarder locator's "
                        f"address family (IPv{fam})", path)
                if h.weight < 1:
                    raise ModelError("next hop weight must be at least 1", path)
            if len({h.kind == "terminate" for h in e.next_hops}) > 1:
                raise ModelError("a terminating entry cannot also have next hops", path)
        names: set[str] = set()
        for r in self.rules:
            path = f"classifier/rule[name='{r.name}']"
            if r.si == 0:
                raise ModelError(f"classifier rule {r.name!r}: initial SI 0", path)
            if r.name in names:
                raise ModelError(f"duplicate classifier rule {r.name!r}", path)
            v = ipaddress.ip_address(r.first_hop).version
            if fam is not None and v != fam:
                raise ModelError(f"classifier rule {r.name!r}: first hop {r.first_hop} is not "
                                 f"in the locator's address family", path)
        for rc in self.steering:
            if rc.si == 0:
                raise ModelError(f"next-function entry {rc.result!r}: SI 0",
                                 f"classifier/next-function[sf-type='{rc.result}']")
        for rc in self.reclassify:
            if rc.si == 0:
                raise ModelError(f"re-classification rule {rc.result!r}: SI 0",
                                 f"classifier/reclassify[result='{rc.result}']")
        pseen: dict[tuple[int, int], list[ProxyEntry]] = {}
        owner: dict[str, ProxyEntry] = {}
        sockets: dict[str, str] = {}
        for p in self.proxies:
            path = f"proxies/proxy[name='{p.name}']"
            if p.si == 0:
                raise ModelError(f"proxy {p.name!r}: SI 0 (the SF would return SI -1)", path)
            for o in pseen.get((p.spi, p.si), []):
                if {o.to_sf, o.from_sf} & {p.to_sf, p.from_sf}:
                    raise ModelError(f"proxy {p.name!r}: another proxy ({o.name!r}) serves "
                                     f"(SPI {p.spi}, SI {p.si}) through the same function "
                                     "instance", path)
            pseen.setdefault((p.spi, p.si), []).append(p)
            if p.weight < 1:
                raise ModelError(f"proxy {p.name!r}: weight must be at least 1", path)
            if p.to_sf == p.from_sf:
                raise ModelError(f"proxy {p.name!r}: to-sf and from-sf are one interface", path)
            for ifname in (p.to_sf, p.from_sf):
                o = owner.setdefault(ifname, p)
                if (o.to_sf, o.from_sf, o.sf_mac) != (p.to_sf, p.from_sf, p.sf_mac):
                    raise ModelError(
                        f"proxy {p.name!r}: interface {ifname} belongs to proxy {o.name!r} "
                        "of another function instance (entries sharing an instance share "
                        "both interfaces and the MAC)", path)
            if p.result_socket and sockets.setdefault(p.result_socket, p.name) != p.name:
                raise ModelError(f"proxy {p.name!r}: result socket {p.result_socket} is "
                                 f"bound by proxy {sockets[p.result_socket]!r}", path)

    def interfaces(self) -> dict[str, str]:
        """Interfaces the configuration names → the node naming it (for existence checks)."""
        out: dict[str, str] = {}
        for r in self.rules:
            if r.match.ingress:
                out[r.match.ingress] = f"classifier/rule[name='{r.name}']/match/ingress-interface"
        for p in self.proxies:
            out[p.to_sf] = f"proxies/proxy[name='{p.name}']/to-sf-interface"
            out[p.from_sf] = f"proxies/proxy[name='{p.name}']/from-sf-interface"
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SfcConfig:
        def pr(x: dict[str, int] | None) -> PortRange:
            return PortRange(**x) if x else ANY_PORTS

        rules = []
        for r in d.get("rules", []):
            m = dict(r["match"])
            m["sport"], m["dport"] = pr(m.get("sport")), pr(m.get("dport"))
            rules.append(ClassifierRule(**{**r, "match": Match(**m)}))
        return cls(
            sff_id=int(d.get("sff_id", 0)),
            locator=d.get("locator"),
            rules=rules,
            reclassify=[ReclassifyRule(**x) for x in d.get("reclassify", [])],
            steering=[ReclassifyRule(**x) for x in d.get("steering", [])],
            table=[SffEntry(e["spi"], e["si"], tuple(NextHop(**h) for h in e["next_hops"]))
                   for e in d.get("table", [])],
            proxies=[ProxyEntry(**p) for p in d.get("proxies", [])],
            hold_packets=int(d.get("hold_packets", 64)),
            hold_ms=int(d.get("hold_ms", 500)),
            generation=int(d.get("generation", 0)),
        )
