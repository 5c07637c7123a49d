"""Just enough IPv4/IPv6 + TCP/UDP parsing for the functions: the flow 5-tuple and where the
L4 payload starts (offset/depth of signatures count from there). Parsing is on the per-packet
path of the signature engine, so addresses stay bytes/ints; text only for reports."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TCP, UDP, SCTP, ICMP, ICMP6 = 6, 17, 132, 1, 58
_V6_EXT = (0, 43, 60, 51, 44)  # hop-by-hop, routing, destination options, AH, fragment
_PORTS = (TCP, UDP, SCTP)


@dataclass(frozen=True, slots=True)
class Flow:
    src: str
    dst: str
    proto: int
    sport: int
    dport: int

    def as_dict(self) -> dict[str, object]:
        return {"src": self.src, "dst": self.dst, "proto": self.proto,
                "sport": self.sport, "dport": self.dport}


class Packet:
    __slots__ = (
        "dport",
        "dst",
        "length",
        "payload",
        "proto",
        "sport",
        "src",
        "tcp_flags",
        "version",
    )

    def __init__(self, version: int, src: bytes, dst: bytes, proto: int, sport: int,
                 dport: int, payload: bytes, tcp_flags: int, length: int) -> None:
        self.version = version
        self.src, self.dst = src, dst  # packed addresses
        self.proto, self.sport, self.dport = proto, sport, dport
        self.payload = payload  # L4 payload (after the TCP/UDP header)
        self.tcp_flags = tcp_flags
        self.length = length

    @property
    def src_int(self) -> int:
        return int.from_bytes(self.src, "big")

    @property
    def dst_int(self) -> int:
        return int.from_bytes(self.dst, "big")

    @property
    def flow(self) -> Flow:
        ip = ipaddress.IPv4Address if self.version == 4 else ipaddress.IPv6Address
        return Flow(str(ip(self.src)), str(ip(self.dst)), self.proto, self.sport, self.dport)

    def key(self) -> tuple[bytes, bytes, int, int, int]:
        """The same key for both directions of a flow."""
        if (self.src, self.sport) <= (self.dst, self.dport):
            return (self.src, self.dst, self.proto, self.sport, self.dport)
        return (self.dst, self.src, self.proto, self.dport, self.sport)


def parse(data: bytes) -> Packet | None:
    """Parse an IP packet (as NFQUEUE/NFLOG hand it over); None when it is not IP or is
    truncated."""
    n = len(data)
    if not n:
        return None
    ver = data[0] >> 4
    if ver == 4:
        if n < 20:
            return None
        off = (data[0] & 0x0F) * 4
        proto = data[9]
        src, dst = data[12:16], data[16:20]
        if (data[6] & 0x1F) or data[7]:  # not the first fragment: no L4 header
            return Packet(4, src, dst, proto, 0, 0, b"", 0, n)
    elif ver == 6:
        if n < 40:
            return None
        proto = data[6]
        src, dst = data[8:24], data[24:40]
        off = 40
        while proto in _V6_EXT:
            if off + 8 > n:
                return None
            nxt = data[off]
            if proto == 44:
                if (data[off + 2] << 8 | data[off + 3]) & 0xFFF8:
                    return Packet(6, src, dst, nxt, 0, 0, b"", 0, n)
                off += 8
            elif proto == 51:
                off += (data[off + 1] + 2) * 4
            else:
                off += (data[off + 1] + 1) * 8
            proto = nxt
    else:
        return None
    sport = dport = flags = 0
    payload_off = off
    if proto in _PORTS and off + 4 <= n:
        sport = data[off] << 8 | data[off + 1]
        dport = data[off + 2] << 8 | data[off + 3]
        if proto == TCP:
            if off + 14 <= n:
                payload_off = off + (data[off + 12] >> 4) * 4
                flags = data[off + 13]
        elif proto == UDP:
            payload_off = off + 8
        else:
            payload_off = off + 12
    return Packet(ver, src, dst, proto, sport, dport, data[payload_off:], flags, n)
