"""Application identification for DPI: the protocol of a flow and its server name (HTTP Host
header, TLS ClientHello SNI, DNS query name), from single packets (no stream reassembly:
a Host header or ClientHello split over two TCP segments is not seen)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nsf_agent.functions.packet import TCP, UDP, Packet

_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
            b"CONNECT ", b"TRACE ")


@dataclass(frozen=True)
class AppInfo:
    protocol: str  # "http" | "tls" | "dns"
    name: str  # Host, SNI or query name ("" when the packet shows the protocol only)


def http_host(payload: bytes) -> AppInfo | None:
    if not payload.startswith(_METHODS):
        return None
    head = payload.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        k, sep, v = line.partition(b":")
        if sep and k.strip().lower() == b"host":
            host = v.strip().decode("ascii", "replace")
            if host.startswith("["):  # [v6]:port
                host = host[1:host.find("]")] if "]" in host else host
            elif host.count(":") == 1:
                host = host.split(":", 1)[0]
            return AppInfo("http", host.lower())
    return AppInfo("http", "")


def tls_sni(payload: bytes) -> AppInfo | None:
    """The server_name of a ClientHello in one TLS record."""
    if len(payload) < 9 or payload[0] != 0x16 or payload[1] != 3 or payload[5] != 1:
        return None
    try:
        p = 9 + 2 + 32  # record(5) + handshake(4), client_version, random
        sid_len = payload[p]
        p += 1 + sid_len
        cs_len = struct.unpack_from("!H", payload, p)[0]
        p += 2 + cs_len
        comp_len = payload[p]
        p += 1 + comp_len
        ext_total = struct.unpack_from("!H", payload, p)[0]
        p += 2
        end = min(len(payload), p + ext_total)
        while p + 4 <= end:
            etype, elen = struct.unpack_from("!HH", payload, p)
            p += 4
            if etype == 0:  # server_name: list length, type 0 host_name, length, name
                q = p + 2
                while q + 3 <= p + elen:
                    ntype, nlen = payload[q], struct.unpack_from("!H", payload, q + 1)[0]
                    if ntype == 0:
                        name = payload[q + 3:q + 3 + nlen]
                        return AppInfo("tls", name.decode("ascii", "replace").lower())
                    q += 3 + nlen
            p += elen
    except (IndexError, struct.error):
        return AppInfo("tls", "")
    return AppInfo("tls", "")


def dns_qname(payload: bytes) -> AppInfo | None:
    """The first question's name of a DNS query (QR=0, QDCOUNT >= 1)."""
    if len(payload) < 17:
        return None
    flags, qd = struct.unpack_from("!HH", payload, 2)
    if flags & 0x8000 or qd < 1 or (flags >> 11) & 0xF not in (0, 2):
        return None
    labels: list[str] = []
    p = 12
    while True:
        if p >= len(payload):
            return None
        n = payload[p]
        if n == 0:
            break
        if n & 0xC0 or p + 1 + n > len(payload):
            return None
        labels.append(payload[p + 1:p + 1 + n].decode("ascii", "replace"))
        p += 1 + n
        if len(labels) > 127:
            return None
    if p + 5 > len(payload):
        return None
    return AppInfo("dns", ".".join(labels).lower())


def identify(pkt: Packet) -> AppInfo | None:
    """The application protocol this packet shows, if any."""
    pl = pkt.payload
    if not pl:
        return None
    if pkt.proto == TCP:
        return http_host(pl) or tls_sni(pl)
    if pkt.proto == UDP and (pkt.dport == 53 or pkt.sport == 53 or pkt.dport == 5353):
        return dns_qname(pl)
    return None
