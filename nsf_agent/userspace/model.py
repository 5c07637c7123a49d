"""Typed SPD/SAD input for the userspace ESP data path.

These classes are independent of how they are fed: the RFC 9061 applier builds them from
committed configuration, tests build them directly, and the control channel carries them as
JSON (`to_dict`/`from_dict`). Numeric algorithm values are the IANA IKEv2 transform IDs that
RFC 9061 uses, so the applier can pass the YANG leaf values through unchanged.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

IPPROTO_ESP = 50


class Mode(StrEnum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Action(StrEnum):
    PROTECT = "protect"
    BYPASS = "bypass"
    DISCARD = "discard"


class EncAlg(IntEnum):
    """IKEv2 transform type 1 IDs (RFC 9061 `encryption-algorithm`)."""

    NULL = 11
    AES_CBC = 12
    AES_GCM_16 = 20


class IntegAlg(IntEnum):
    """IKEv2 transform type 3 IDs (RFC 9061 `integrity-algorithm`)."""

    NONE = 0
    HMAC_SHA2_256_128 = 12
    HMAC_SHA2_384_192 = 13
    HMAC_SHA2_512_256 = 14


class ModelError(ValueError):
    """Raised for SA/SPD input that cannot be used as given."""


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One RFC 9061 lifetime set; 0 means unlimited for each counter."""

    bytes: int = 0
    packets: int = 0
    time: int = 0
    idle: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"bytes": self.bytes, "packets": self.packets, "time": self.time,
                "idle": self.idle}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Lifetime:
        d = d or {}
        return cls(bytes=int(d.get("bytes", 0)), packets=int(d.get("packets", 0)),
                   time=int(d.get("time", 0)), idle=int(d.get("idle", 0)))


@dataclass(frozen=True, slots=True)
class UdpEncap:
    """RFC 3948 ESP-in-UDP ports (NAT traversal)."""

    sport: int = 4500
    dport: int = 4500


_GCM_KEYLEN = {20: 16, 28: 24, 36: 32}  # key material incl. 4-byte salt -> AES key length
_CBC_KEYLEN = {16, 24, 32}
_INTEG_KEYLEN = {IntegAlg.HMAC_SHA2_256_128: 32, IntegAlg.HMAC_SHA2_384_192: 48,
                 IntegAlg.HMAC_SHA2_512_256: 64}


@dataclass(frozen=True, slots=True)
class SaConfig:
    """One SAD entry. `src`/`dst` are the outer (tunnel) or host (transport) addresses.

    `reqid` links the SA to SPD entries as in RFC 9061; for outbound traffic the most
    recently installed SA with the entry's reqid is used, which makes rekeying
    make-before-break. Keys are excluded from repr so they never reach a log line.
    """

    name: str
    spi: int
    direction: Direction
    src: IPAddress
    dst: IPAddress
    mode: Mode = Mode.TUNNEL
    enc_alg: EncAlg = EncAlg.AES_GCM_16
    enc_key: bytes = field(default=b"", repr=False)
    integ_alg: IntegAlg = IntegAlg.NONE
    integ_key: bytes = field(default=b"", repr=False)
    reqid: int = 0
    replay_window: int = 64
    esn: bool = False
    soft: Lifetime = Lifetime()
    hard: Lifetime = Lifetime()
    encap: UdpEncap | None = None
    protocol: int = IPPROTO_ESP

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.protocol != IPPROTO_ESP:
            raise ModelError(f"SA {self.name}: only ESP (50) is supported")
        if not 256 <= self.spi <= 0xFFFFFFFF:
            raise ModelError(f"SA {self.name}: SPI {self.spi} outside 256..2^32-1")
        if self.src.version != self.dst.version:
            raise ModelError(f"SA {self.name}: src and dst of different families")
        if self.replay_window < 0:
            raise ModelError(f"SA {self.name}: negative replay window")
        if self.enc_alg is EncAlg.AES_GCM_16:
            if len(self.enc_key) not in _GCM_KEYLEN:
                raise ModelError(f"SA {self.name}: AES-GCM key material must be 20/28/36 bytes")
            if self.integ_alg is not IntegAlg.NONE:
                raise ModelError(f"SA {self.name}: AES-GCM takes no integrity algorithm")
        elif self.enc_alg is EncAlg.AES_CBC:
            if len(self.enc_key) not in _CBC_KEYLEN:
                raise ModelError(f"SA {self.name}: AES-CBC key must be 16/24/32 bytes")
        elif self.enc_alg is EncAlg.NULL and self.enc_key:
            raise ModelError(f"SA {self.name}: NULL encryption takes no key")
        if self.enc_alg is not EncAlg.AES_GCM_16:
            if self.integ_alg is IntegAlg.NONE:
                raise ModelError(f"SA {self.name}: non-AEAD cipher needs an integrity algorithm")
            if len(self.integ_key) != _INTEG_KEYLEN[self.integ_alg]:
                raise ModelError(f"SA {self.name}: {self.integ_alg.name} key must be "
                                 f"{_INTEG_KEYLEN[self.integ_alg]} bytes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "spi": self.spi, "direction": self.direction.value,
            "src": str(self.src), "dst": str(self.dst), "mode": self.mode.value,
            "enc_alg": int(self.enc_alg), "enc_key": self.enc_key.hex(),
            "integ_alg": int(self.integ_alg), "integ_key": self.integ_key.hex(),
            "reqid": self.reqid, "replay_window": self.replay_window, "esn": self.esn,
            "soft": self.soft.to_dict(), "hard": self.hard.to_dict(),
            "encap": None if self.encap is None else {"sport": self.encap.sport,
                                                       "dport": self.encap.dport},
            "protocol": self.protocol,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaConfig:
        try:
            enc = d.get("encap")
            return cls(
                name=str(d["name"]), spi=int(d["spi"]), direction=Direction(d["direction"]),
                src=ipaddress.ip_address(d["src"]), dst=ipaddress.ip_address(d["dst"]),
                mode=Mode(d.get("mode", "tunnel")), enc_alg=EncAlg(int(d["enc_alg"])),
                enc_key=bytes.fromhex(d.get("enc_key", "")),
                integ_alg=IntegAlg(int(d.get("integ_alg", 0))),
                integ_key=bytes.fromhex(d.get("integ_key", "")),
                reqid=int(d.get("reqid", 0)), replay_window=int(d.get("replay_window", 64)),
                esn=bool(d.get("esn", False)), soft=Lifetime.from_dict(d.get("soft")),
                hard=Lifetime.from_dict(d.get("hard")),
                encap=None if enc is None else UdpEncap(int(enc["sport"]), int(enc["dport"])),
                protocol=int(d.get("protocol", IPPROTO_ESP)),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"bad SA: {e}") from None


@dataclass(frozen=True, slots=True)
class PortRange:
    start: int = 0
    end: int = 65535

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end <= 65535:
            raise ModelError(f"bad port range {self.start}-{self.end}")

    @property
    def is_any(self) -> bool:
        return self.start == 0 and self.end == 65535


ANY_PORTS = PortRange()


@dataclass(frozen=True, slots=True)
class Selector:
    """RFC 4301 traffic selector seen from this NSF: local = our side, remote = peer side."""

    local_prefix: IPNetwork
    remote_prefix: IPNetwork
    protocol: int | None = None  # None = any next-layer protocol
    local_ports: PortRange = ANY_PORTS
    remote_ports: PortRange = ANY_PORTS

    def to_dict(self) -> dict[str, Any]:
        return {"local_prefix": str(self.local_prefix), "remote_prefix": str(self.remote_prefix),
                "protocol": self.protocol,
                "local_ports": [self.local_ports.start, self.local_ports.end],
                "remote_ports": [self.remote_ports.start, self.remote_ports.end]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selector:
        lp = d.get("local_ports") or [0, 65535]
        rp = d.get("remote_ports") or [0, 65535]
        proto = d.get("protocol")
        return cls(local_prefix=ipaddress.ip_network(d["local_prefix"]),
                   remote_prefix=ipaddress.ip_network(d["remote_prefix"]),
                   protocol=None if proto is None else int(proto),
                   local_ports=PortRange(int(lp[0]), int(lp[1])),
                   remote_ports=PortRange(int(rp[0]), int(rp[1])))


@dataclass(frozen=True, slots=True)
class SpdEntry:
    """One SPD entry; entries are matched in ascending `priority`, then name."""

    name: str
    direction: Direction
    selector: Selector
    action: Action
    reqid: int = 0
    priority: int = 1000

    def __post_init__(self) -> None:
        if self.action is Action.PROTECT and self.reqid == 0:
            raise ModelError(f"SPD {self.name}: protect needs a reqid linking it to SAs")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction.value,
                "selector": self.selector.to_dict(), "action": self.action.value,
                "reqid": self.reqid, "priority": self.priority}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpdEntry:
        try:
            return cls(name=str(d["name"]), direction=Direction(d["direction"]),
                       selector=Selector.from_dict(d["selector"]), action=Action(d["action"]),
                       reqid=int(d.get("reqid", 0)), priority=int(d.get("priority", 1000)))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"bad SPD entry: {e}") from None
