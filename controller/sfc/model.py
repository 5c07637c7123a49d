"""The SFC half of the northbound configuration (module i2nsf-sfc-policy) as plain data.

libyang already checked what YANG says (leafrefs to types and chains, ranges, watermarks);
what it cannot check (a chain no instance can serve, SPI exhaustion, cyclic
re-classification) needs the catalog and is done by the Policy Manager (`paths.compile`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from lxml import etree

NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-policy"
Q = f"{{{NS}}}"
MODULE = "i2nsf-sfc-policy"

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address

SI_INITIAL = 255  # RFC 8300: the classifier's starting Service Index


@dataclass(frozen=True)
class Scaling:
    high: int = 80  # percent of capacity
    low: int = 20
    min_instances: int = 1
    max_instances: int = 4
    hold_ms: int = 2000
    dms: str | None = None
    instance_rules: str | None = None


@dataclass(frozen=True)
class SfType:
    name: str
    description: str = ""
    steering_target: bool = False
    scaling: Scaling = Scaling()


@dataclass(frozen=True)
class Forwarder:
    name: str  # NSF name in the inventory
    sff_id: int
    locator: IpAddr
    classifier: bool = False
    egress_locator: IpAddr | None = None
    ingress: tuple[str, ...] = ()


@dataclass(frozen=True)
class DmsServer:
    name: str
    address: str
    username: str
    host_key: str
    port: int = 830
    private_key_file: str | None = None
    password_file: str | None = None
    report_socket_dir: str | None = None


@dataclass(frozen=True)
class Chain:
    name: str
    types: tuple[str, ...]
    spi: int | None = None


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int


@dataclass(frozen=True)
class Match:
    src: tuple[IpNet, ...] = ()
    dst: tuple[IpNet, ...] = ()
    trust_level: str | None = None
    protocol: int | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    chain: str
    priority: int = 100
    match: Match = Match()


@dataclass(frozen=True)
class ReclassRule:
    name: str
    from_type: str
    result: str
    to_chain: str
    from_chain: str | None = None


@dataclass
class SfcConfig:
    types: dict[str, SfType] = field(default_factory=dict)
    forwarders: dict[str, Forwarder] = field(default_factory=dict)
    dms: dict[str, DmsServer] = field(default_factory=dict)
    trust: dict[str, tuple[IpNet, ...]] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    reclass: dict[str, ReclassRule] = field(default_factory=dict)
    spi_start: int = 1
    spi_end: int = 0xFFFFFF

    def classifiers(self) -> list[Forwarder]:
        return [f for f in self.forwarders.values() if f.classifier]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored so a restarted controller can tell what it pushed)."""
        def conv(o: Any) -> Any:
            if isinstance(o, (ipaddress.IPv4Address, ipaddress.IPv6Address,
                              ipaddress.IPv4Network, ipaddress.IPv6Network)):
                return str(o)
            if isinstance(o, dict):
                return {k: conv(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [conv(v) for v in o]
            return o
        return conv(asdict(self))  # type: ignore[no-any-return]


def _text(el: etree._Element, name: str) -> str | None:
    v = el.findtext(Q + name)
    return None if v is None else v.strip()


def _bool(el: etree._Element, name: str, default: bool = False) -> bool:
    v = _text(el, name)
    return default if v is None else v == "true"


def _int(el: etree._Element, name: str, default: int) -> int:
    v = _text(el, name)
    return default if v is None else int(v)


def _ports(el: etree._Element | None) -> PortRange | None:
    if el is None:
        return None
    start = _int(el, "start", 0)
    return PortRange(start, _int(el, "end", start))


def _nets(el: etree._Element, name: str) -> tuple[IpNet, ...]:
    return tuple(ipaddress.ip_network((e.text or "").strip(), strict=False)
                 for e in el.iterfind(Q + name))


def parse_config(root: etree._Element | None) -> SfcConfig:
    """`<sfc>` (or a `<data>`/`<config>` holding it) → SfcConfig; absent → empty."""
    cfg = SfcConfig()
    if root is None:
        return cfg
    sfc = root if root.tag == Q + "sfc" else root.find(Q + "sfc")
    if sfc is None:
        return cfg
    for t in sfc.iterfind(f"{Q}sf-types/{Q}sf-type"):
        s = t.find(Q + "scaling")
        sc = Scaling() if s is None else Scaling(
            high=_int(s, "high-watermark", 80), low=_int(s, "low-watermark", 20),
            min_instances=_int(s, "min-instances", 1),
            max_instances=_int(s, "max-instances", 4), hold_ms=_int(s, "hold-time", 2000),
            dms=_text(s, "dms"), instance_rules=_text(s, "instance-rules"))
        name = _text(t, "name") or ""
        cfg.types[name] = SfType(name, _text(t, "description") or "",
                                 _bool(t, "steering-target"), sc)
    for f in sfc.iterfind(f"{Q}forwarders/{Q}forwarder"):
        name = _text(f, "name") or ""
        egress = _text(f, "egress-locator")
        cfg.forwarders[name] = Forwarder(
            name, _int(f, "sff-id", 0), ipaddress.ip_address(_text(f, "locator") or ""),
            _bool(f, "classifier"), ipaddress.ip_address(egress) if egress else None,
            tuple((e.text or "").strip() for e in f.iterfind(Q + "ingress-interface")))
    for d in sfc.iterfind(f"{Q}dms-servers/{Q}dms"):
        name = _text(d, "name") or ""
        cfg.dms[name] = DmsServer(name, _text(d, "address") or "", _text(d, "username") or "",
                                  _text(d, "host-key") or "", _int(d, "port", 830),
                                  _text(d, "private-key-file"), _text(d, "password-file"),
                                  _text(d, "report-socket-dir"))
    for t in sfc.iterfind(f"{Q}trust-levels/{Q}trust-level"):
        cfg.trust[_text(t, "name") or ""] = _nets(t, "source-prefix")
    for c in sfc.iterfind(f"{Q}chains/{Q}chain"):
        name = _text(c, "name") or ""
        spi = _text(c, "spi")
        cfg.chains[name] = Chain(name, tuple((e.text or "").strip()
                                             for e in c.iterfind(Q + "sf-type")),
                                 int(spi) if spi else None)
    for p in sfc.iterfind(f"{Q}policies/{Q}policy"):
        name = _text(p, "name") or ""
        m = p.find(Q + "match")
        match = Match() if m is None else Match(
            src=_nets(m, "source-prefix"), dst=_nets(m, "destination-prefix"),
            trust_level=_text(m, "trust-level"),
            protocol=None if _text(m, "protocol") is None else _int(m, "protocol", 0),
            sport=_ports(m.find(Q + "source-port")),
            dport=_ports(m.find(Q + "destination-port")))
        cfg.policies[name] = Policy(name, _text(p, "chain") or "", _int(p, "priority", 100),
                                    match)
    for r in sfc.iterfind(f"{Q}reclassification/{Q}rule"):
        name = _text(r, "name") or ""
        cfg.reclass[name] = ReclassRule(name, _text(r, "from-sf-type") or "",
                                        _text(r, "inspection-result") or "",
                                        _text(r, "to-chain") or "", _text(r, "from-chain"))
    cfg.spi_start = _int(sfc, "spi-range-start", 1)
    cfg.spi_end = _int(sfc, "spi-range-end", 0xFFFFFF)
    return cfg
