"""RFC 8300 Network Service Header (MD type 1 and 2) and its RFC 2784 GRE carrier (0x894F).

One module encodes and decodes both, so the classifier, SFF and proxy agree byte for byte
and tests can check them against decoders we did not write (scapy, tshark). Decoding errors
are typed (`NshError` subclasses, each with a `reason` used as the drop counter name) because
a forwarder must count why it dropped a packet, not just that it did.

Base header (RFC 8300 2.2):  |Ver|O|U| TTL(6) | Length(6) |U U U U|MD Type| Next Protocol |
Service path header:          | SPI (24) | SI (8) |
MD type 1: 16 bytes of fixed context; MD type 2: TLVs |Class(16)|Type(8)|U|Len(7)| value pad4.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

ETHERTYPE_NSH = 0x894F
GRE_PROTO_NSH = ETHERTYPE_NSH
IPPROTO_GRE = 47
DEFAULT_TTL = 63
MAX_TTL = 63
MD1_LEN_WORDS = 6
MAX_LEN_WORDS = 63
MAX_TLV_VALUE = 127
BASE_LEN = 8

# Our metadata class (RFC 8300 9.1.4 leaves 0xFFF6..0xFFFE for experiments) and its types.
MD_CLASS_I2NSF = 0xFFF6
TLV_RECLASSIFY = 1      # value: UTF-8 inspection-result name ("ddos-suspected")
TLV_RSP_TRACE = 2       # value: 4-byte entries (node id 24 bits | SI 8 bits), one per SFF visit
TLV_NEXT_FUNCTION = 3   # value: UTF-8 SF type name ("ips")


class NextProto(IntEnum):
    IPV4 = 0x1
    IPV6 = 0x2
    ETHERNET = 0x3
    NSH = 0x4
    MPLS = 0x5


class MdType(IntEnum):
    MD1 = 0x1
    MD2 = 0x2


class NshError(ValueError):
    """A packet that is not a usable NSH packet; `reason` names the drop counter."""

    reason = "malformed"


class Truncated(NshError):
    reason = "truncated"


class BadVersion(NshError):
    reason = "bad-version"


class BadLength(NshError):
    """The header's Length field is beyond the packet or wrong for its MD type."""

    reason = "bad-length"


class BadMdType(NshError):
    reason = "bad-md-type"


class TlvOverrun(NshError):
    """An MD2 TLV's length runs past the end of the NSH header."""

    reason = "tlv-overrun"


class GreError(NshError):
    reason = "bad-gre"


class NotNsh(NshError):
    """A well-formed GRE packet carrying something else than NSH (not ours to handle)."""

    reason = "not-nsh"


@dataclass(frozen=True, slots=True)
class Tlv:
    """One MD type 2 context header; `value` unpadded (its length is the Length field)."""

    cls: int
    type: int
    value: bytes = b""

    def encode(self) -> bytes:
        n = len(self.value)
        if n > MAX_TLV_VALUE:
            raise ValueError(f"MD2 TLV value of {n} bytes (at most {MAX_TLV_VALUE})")
        if not 0 <= self.cls <= 0xFFFF or not 0 <= self.type <= 0xFF:
            raise ValueError("MD2 TLV class or type out of range")
        return struct.pack("!HBB", self.cls, self.type, n) + self.value + b"\0" * (-n % 4)


@dataclass(slots=True)
class Nsh:
    spi: int
    si: int
    ttl: int = DEFAULT_TTL
    next_proto: int = NextProto.IPV4
    md_type: int = MdType.MD1
    oam: bool = False
    context: bytes = bytes(16)          # MD type 1 fixed context
    tlvs: list[Tlv] = field(default_factory=list)   # MD type 2

    def header_len(self) -> int:
        if self.md_type == MdType.MD1:
            return MD1_LEN_WORDS * 4
        return BASE_LEN + sum(4 + len(t.value) + (-len(t.value) % 4) for t in self.tlvs)

    def encode(self) -> bytes:
        if not 0 <= self.spi < 1 << 24:
            raise ValueError(f"SPI {self.spi} is not a 24-bit value")
        if not 0 <= self.si <= 255:
            raise ValueError(f"SI {self.si} is not an 8-bit value")
        if not 0 <= self.ttl <= MAX_TTL:
            raise ValueError(f"TTL {self.ttl} is not a 6-bit value")
        if self.md_type == MdType.MD1:
            if len(self.context) != 16:
                raise ValueError("MD type 1 context must be 16 bytes")
            body = self.context
        elif self.md_type == MdType.MD2:
            body = b"".join(t.encode() for t in self.tlvs)
        else:
            raise ValueError(f"MD type {self.md_type} cannot be encoded")
        words = (BASE_LEN + len(body)) // 4
        if words > MAX_LEN_WORDS:
            raise ValueError(f"NSH of {words * 4} bytes exceeds the 6-bit Length field")
        b0 = (int(self.oam) << 5) | (self.ttl >> 2)
        b1 = ((self.ttl & 0x3) << 6) | words
        return struct.pack("!BBBBI", b0, b1, self.md_type & 0xF, self.next_proto & 0xFF,
                           (self.spi << 8) | self.si) + body

    def tlv(self, cls: int, typ: int) -> Tlv | None:
        for t in self.tlvs:
            if t.cls == cls and t.type == typ:
                return t
        return None

    def without(self, cls: int, typ: int) -> list[Tlv]:
        return [t for t in self.tlvs if not (t.cls == cls and t.type == typ)]


_BASE = struct.Struct("!BBBBI")
_TLVH = struct.Struct("!HBB")


def decode(buf: bytes | bytearray | memoryview, off: int = 0) -> tuple[Nsh, int]:
    """The NSH at `buf[off:]` and the offset of its payload. Raises an NshError subclass."""
    if len(buf) - off < BASE_LEN:
        raise Truncated(f"{len(buf) - off} bytes, shorter than an NSH base header")
    b0, b1, b2, np_, sp = _BASE.unpack_from(buf, off)
    ver = b0 >> 6
    if ver != 0:
        raise BadVersion(f"NSH version {ver} (only 0 is defined)")
    ttl = ((b0 & 0xF) << 2) | (b1 >> 6)
    words = b1 & 0x3F
    hlen = words * 4
    md = b2 & 0xF
    if hlen < BASE_LEN:
        raise BadLength(f"NSH length {words} words is shorter than the base header")
    if off + hlen > len(buf):
        raise BadLength(f"NSH length {hlen} bytes is beyond the packet ({len(buf) - off})")
    nsh = Nsh(spi=sp >> 8, si=sp & 0xFF, ttl=ttl, next_proto=np_, md_type=md,
              oam=bool(b0 & 0x20))
    if md == MdType.MD1:
        if words != MD1_LEN_WORDS:
            raise BadLength(f"MD type 1 NSH with length {words} words (must be 6)")
        nsh.context = bytes(buf[off + 8:off + 24])
    elif md == MdType.MD2:
        p, end, tlvs = off + BASE_LEN, off + hlen, []
        while p < end:
            if end - p < 4:
                raise TlvOverrun("MD2 context header cut short by the NSH length")
            cls, typ, ln = _TLVH.unpack_from(buf, p)
            ln &= 0x7F
            vend = p + 4 + ln
            if vend + (-ln % 4) > end:
                raise TlvOverrun(f"MD2 TLV (class {cls:#x} type {typ}) of {ln} bytes "
                                 "runs past the NSH header")
            tlvs.append(Tlv(cls, typ, bytes(buf[p + 4:vend])))
            p = vend + (-ln % 4)
        nsh.tlvs = tlvs
    else:
        raise BadMdType(f"NSH MD type {md} is not supported")
    return nsh, off + hlen


def peek(buf: bytes | bytearray, off: int) -> tuple[int, int, int, int, int]:
    """(spi, si, ttl, header length, md type) with the checks a forwarder needs before a
    table lookup, without building objects (the per-packet hot path)."""
    if len(buf) - off < BASE_LEN:
        raise Truncated("shorter than an NSH base header")
    b0 = buf[off]
    if b0 >> 6:
        raise BadVersion(f"NSH version {b0 >> 6} (only 0 is defined)")
    b1 = buf[off + 1]
    hlen = (b1 & 0x3F) * 4
    md = buf[off + 2] & 0xF
    if hlen < BASE_LEN or off + hlen > len(buf):
        raise BadLength(f"NSH length {hlen} bytes does not fit the packet")
    if md == MdType.MD1:
        if hlen != MD1_LEN_WORDS * 4:
            raise BadLength("MD type 1 NSH whose length is not 6 words")
    elif md == MdType.MD2:
        p, end = off + BASE_LEN, off + hlen
        while p < end:
            if end - p < 4:
                raise TlvOverrun("MD2 context header cut short by the NSH length")
            ln = buf[p + 3] & 0x7F
            p += 4 + ln + (-ln % 4)
            if p > end:
                raise TlvOverrun("MD2 TLV runs past the NSH header")
    else:
        raise BadMdType(f"NSH MD type {md} is not supported")
    spi = (buf[off + 4] << 16) | (buf[off + 5] << 8) | buf[off + 6]
    return spi, buf[off + 7], ((b0 & 0xF) << 2) | (b1 >> 6), hlen, md


def set_ttl_si(buf: bytearray, off: int, ttl: int, si: int) -> None:
    """Rewrite TTL and SI of the NSH at `off` in place (forwarders change nothing else)."""
    buf[off] = (buf[off] & 0xF0) | (ttl >> 2)
    buf[off + 1] = ((ttl & 0x3) << 6) | (buf[off + 1] & 0x3F)
    buf[off + 7] = si


# ---- GRE (RFC 2784, with the RFC 2890 key/sequence fields skipped on receive) -------------

GRE_NSH = b"\x00\x00\x89\x4f"  # no checksum, version 0, protocol type NSH


def gre_decode(buf: bytes | bytearray, off: int = 0) -> tuple[int, int]:
    """(protocol type, payload offset) of the GRE header at `off`."""
    if len(buf) - off < 4:
        raise GreError("shorter than a GRE header")
    flags, proto = struct.unpack_from("!HH", buf, off)
    if flags & 0x7:
        raise GreError(f"GRE version {flags & 0x7} (only 0 is handled)")
    if flags & 0x4000:
        raise GreError("GRE routing present (RFC 1701 source routes are not supported)")
    hlen = 4 + 4 * (bool(flags & 0x8000) + bool(flags & 0x2000) + bool(flags & 0x1000))
    if len(buf) - off < hlen:
        raise GreError("GRE optional fields cut short")
    return proto, off + hlen


def ip_payload(buf: bytes | bytearray) -> int:
    """Offset of the IPv4 payload in a packet received on a raw IPv4 socket."""
    if len(buf) < 20 or buf[0] >> 4 != 4:
        raise GreError("not an IPv4 packet")
    return (buf[0] & 0xF) * 4


def encapsulate(nsh: Nsh, inner: bytes) -> bytes:
    """GRE + NSH + inner packet (what goes after the outer IP header)."""
    return GRE_NSH + nsh.encode() + inner


def next_proto_of(inner: bytes) -> int:
    v = inner[0] >> 4 if inner else 0
    if v == 4:
        return NextProto.IPV4
    if v == 6:
        return NextProto.IPV6
    raise NshError(f"inner packet of IP version {v}")


# ---- our MD2 TLVs -------------------------------------------------------------------------

def reclassify_tlv(result: str) -> Tlv:
    return Tlv(MD_CLASS_I2NSF, TLV_RECLASSIFY, result.encode()[:MAX_TLV_VALUE])


def next_function_tlv(sf_type: str) -> Tlv:
    return Tlv(MD_CLASS_I2NSF, TLV_NEXT_FUNCTION, sf_type.encode()[:MAX_TLV_VALUE])


def trace_entries(t: Tlv | None) -> list[tuple[int, int]]:
    """(node id, SI) pairs of an RSP trace TLV."""
    if t is None:
        return []
    v = t.value
    return [(int.from_bytes(v[i:i + 3], "big"), v[i + 3]) for i in range(0, len(v) - 3, 4)]


def trace_tlv(entries: list[tuple[int, int]]) -> Tlv:
    # the newest entries are kept when the 127-byte TLV is full (31 visits)
    keep = entries[-(MAX_TLV_VALUE // 4):]
    return Tlv(MD_CLASS_I2NSF, TLV_RSP_TRACE,
               b"".join(n.to_bytes(3, "big") + bytes([si]) for n, si in keep))
