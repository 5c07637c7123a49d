"""Just enough IPv4/IPv6 + TCP/UDP parsing for the functions: the flow 5-tuple and where the
L4 payload starts (offset/depth of signatures count from there)."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

TCP, UDP, SCTP, ICMP, ICMP6 = 6, 17, 132, 1, 58
_V6_EXT = {0, 43, 60, 51}  # hop-by-hop, routing, destination options, AH (handled apart)
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

    def key(self) -> tuple[str, str, int, int, int]:
        """The same key for both directions of a flow."""
        a, b = (self.src, self.sport), (self.dst, self.dport)
        if a <= b:
            return (self.src, self.dst, self.proto, self.sport, self.dport)
        return (self.dst, self.src, self.proto, self.dport, self.sport)


@dataclass(slots=True)
class Packet:
    flow: Flow
    version: int
    src_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst_ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    payload: bytes  # L4 payload (after TCP/UDP header); whole L4 for other protocols
    tcp_flags: int = 0
    length: int = 0


def parse(data: bytes) -> Packet | None:
    """Parse an IP packet (as NFQUEUE/NFLOG hand it over); None when it is not IP or is
    truncated."""
    if not data:
        return None
    ver = data[0] >> 4
    if ver == 4:
        if len(data) < 20:
            return None
        ihl = (data[0] & 0x0F) * 4
        proto = data[9]
        frag = struct.unpack_from("!H", data, 6)[0] & 0x1FFF
        src_ip = ipaddress.IPv4Address(data[12:16])
        dst_ip = ipaddress.IPv4Address(data[16:20])
        off = ihl
        if frag:  # not the first fragment: no L4 header
            return Packet(Flow(str(src_ip), str(dst_ip), proto, 0, 0), 4, src_ip, dst_ip,
                          b"", 0, len(data))
    elif ver == 6:
        if len(data) < 40:
            return None
        proto = data[6]
        src_ip = ipaddress.IPv6Address(data[8:24])
        dst_ip = ipaddress.IPv6Address(data[24:40])
        off = 40
        while proto in _V6_EXT or proto == 44:
            if off + 8 > len(data):
                return None
            nxt = data[off]
            if proto == 44:
                if struct.unpack_from("!H", data, off + 2)[0] & 0xFFF8:
                    return Packet(Flow(str(src_ip), str(dst_ip), nxt, 0, 0), 6, src_ip,
                                  dst_ip, b"", 0, len(data))
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
    if proto in _PORTS and off + 4 <= len(data):
        sport, dport = struct.unpack_from("!HH", data, off)
        if proto == TCP and off + 14 <= len(data):
            payload_off = off + (data[off + 12] >> 4) * 4
            flags = data[off + 13]
        elif proto == UDP:
            payload_off = off + 8
        else:
            payload_off = off + 12
    return Packet(Flow(str(src_ip), str(dst_ip), proto, sport, dport), ver, src_ip, dst_ip,
                  data[payload_off:], flags, len(data))
