"""The rules of one instance as plain data (what the DMS parses from NETCONF and hands to the
function's process as JSON), with the checks YANG cannot express."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from nsf_agent.functions.rules import SF_TYPES, RuleSyntaxError

NFT_TYPES = ("firewall", "anti-spoofing", "ddos", "forward")
SIGNATURE_TYPES = ("ids", "ips", "dpi")


class SpecError(ValueError):
    """Rules that cannot be applied; `path` names the offending input node."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass
class FwRule:
    seq: int
    action: str  # accept | drop | reject
    name: str = ""
    source_prefix: str | None = None
    destination_prefix: str | None = None
    protocol: int | None = None
    source_port: str | None = None
    destination_port: str | None = None
    ct_state: list[str] = field(default_factory=list)
    report: bool = True


@dataclass
class Firewall:
    default_action: str = "drop"
    accept_established: bool = True
    rules: list[FwRule] = field(default_factory=list)


@dataclass
class AntiSpoofing:
    allowed_source_prefix: list[str] = field(default_factory=list)
    bogon_prefix: list[str] = field(default_factory=list)
    drop_martians: bool = True


@dataclass
class Ddos:
    per_source_pps: int = 10000
    per_source_burst: int = 100
    syn_per_source_pps: int = 100
    syn_burst: int = 20
    exempt_prefix: list[str] = field(default_factory=list)
    reclassify: str | None = None


@dataclass
class Spec:
    type: str
    firewall: Firewall = field(default_factory=Firewall)
    anti_spoofing: AntiSpoofing = field(default_factory=AntiSpoofing)
    ddos: Ddos = field(default_factory=Ddos)
    signatures: str = ""
    report_rate: int = 20  # reports of nft drops per second (NFLOG rate limit)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Spec:
        fw = dict(d.get("firewall") or {})
        fw["rules"] = [FwRule(**r) for r in fw.get("rules", [])]
        return cls(type=d["type"], firewall=Firewall(**fw),
                   anti_spoofing=AntiSpoofing(**(d.get("anti_spoofing") or {})),
                   ddos=Ddos(**(d.get("ddos") or {})), signatures=d.get("signatures", ""),
                   report_rate=d.get("report_rate", 20))


def _net(text: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise SpecError(f"{text!r} is not an IP prefix", path) from None


def _ports(text: str, path: str) -> None:
    lo, _, hi = text.partition("-")
    a, b = int(lo), int(hi or lo)
    if not 0 <= a <= b <= 65535:
        raise SpecError(f"port range {text!r} is not within 0-65535 low to high", path)


def check(spec: Spec) -> None:
    """Everything the function's process would refuse, refused before anything is created."""
    if spec.type not in SF_TYPES:
        raise SpecError(f"unknown function type {spec.type!r}", "type")
    if spec.type == "firewall":
        seen: set[int] = set()
        for r in spec.firewall.rules:
            p = f"firewall/rule[seq='{r.seq}']"
            if r.seq in seen:
                raise SpecError(f"rule seq {r.seq} given twice", p)
            seen.add(r.seq)
            fams = {_net(x, p).version for x in (r.source_prefix, r.destination_prefix) if x}
            if len(fams) > 1:
                raise SpecError("source and destination prefixes of different families", p)
            for port in (r.source_port, r.destination_port):
                if port is not None:
                    if r.protocol not in (6, 17, 132):
                        raise SpecError("ports need protocol 6, 17 or 132", p)
                    _ports(port, p)
    for pfx in spec.anti_spoofing.allowed_source_prefix + spec.anti_spoofing.bogon_prefix:
        _net(pfx, "anti-spoofing")
    for pfx in spec.ddos.exempt_prefix:
        _net(pfx, "ddos/exempt-prefix")
    if spec.type in SIGNATURE_TYPES:
        # parsed here; compiled by the function's process (escaped literals always compile,
        # and a failure there still fails the operation with nothing changed)
        from nsf_agent.functions.rules import parse_rules

        try:
            parse_rules(spec.signatures)
        except RuleSyntaxError as exc:
            raise SpecError(str(exc), "signatures") from None
