"""TUN offloads (IFF_VNET_HDR): TCP super-packets in and out of the TUN device.

Per-packet work in the kernel (skb allocation, forwarding, one read/write system call each)
dominates a Python data path. With TSO enabled on the TUN the kernel hands us up to 64 KB TCP
super-packets, which we cut into MSS-sized segments (each a normal packet on the wire, each
its own ESP packet). In the other direction consecutive decrypted segments of one TCP flow
are coalesced (userspace GRO) and written as one super-packet that the kernel segments, or
passes on as GSO, when it forwards it. The virtio_net_hdr in front of every TUN read/write
carries the offload metadata.
"""

from __future__ import annotations

import struct

VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, off
VNET_LEN = VNET_HDR.size
F_NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
PLAIN_HDR = bytes(VNET_LEN)
_MAX_SUPER = 65535 - 40


_CSUM_CHUNK = 4096  # even, so every chunk starts on a 16-bit word boundary


def csum_add(data: bytes, start: int = 0) -> int:
    """Ones-complement sum of 16-bit words (not folded to 16 bits, not complemented).

    A big integer modulo 0xFFFF equals the end-around-carry sum: one C-level pass instead of a
    Python loop over words. Since 2^16 ≡ 1 (mod 0xFFFF), the integers of word-aligned chunks
    can be added before the (slow, one division per 30-bit digit) reduction: for a 64 KB
    super-packet that halves the cost.
    """
    n = len(data)
    if n & 1:
        data = bytes(data) + b"\0"
        n += 1
    if n <= 2 * _CSUM_CHUNK:
        return int.from_bytes(data, "big") % 0xFFFF + start
    mv = memoryview(data)
    fb = int.from_bytes
    return sum([fb(mv[i:i + _CSUM_CHUNK], "big") for i in range(0, n, _CSUM_CHUNK)]) \
        % 0xFFFF + start


def finish(s: int) -> int:
    """Checksum field value from an unfolded sum."""
    s %= 0xFFFF
    return (~s) & 0xFFFF


def _pseudo(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Pseudo-header sum; IPv4 and IPv6 differ only in address size for this purpose."""
    return int.from_bytes(src + dst, "big") % 0xFFFF + proto + length


def complete_csum(pkt: bytes, start: int, offset: int) -> bytes:
    """Finish a CHECKSUM_PARTIAL packet: the field holds the pseudo-header sum already."""
    pos = start + offset
    c = finish(csum_add(pkt[start:]))
    return pkt[:pos] + c.to_bytes(2, "big") + pkt[pos + 2:]


def segment(frame: bytes) -> list[bytes]:
    """Plain IP packets from one TUN read (virtio_net_hdr + packet), cut to MSS segments."""
    flags, gso_type, _hl, gso_size, cstart, coff = VNET_HDR.unpack_from(frame)
    pkt = frame[VNET_LEN:]
    if gso_type == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            return [complete_csum(pkt, cstart, coff)]
        return [pkt]
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or gso_size == 0:
        raise ValueError(f"unsupported GSO type {gso_type}")
    return _cut(pkt, gso_type == GSO_TCPV4, gso_size, 1)


def segment_big(frame: bytes, limit: int) -> list[tuple[bytes, int, int]]:
    """Whole TCP super-packets from one TUN read, as valid IP packets of at most `limit` bytes.

    Returns `(packet, segments, mss)` per packet: how many MSS segments it stands for (for
    packet counters, and to cut it later if it cannot travel whole) and the MSS. A super-packet
    larger than `limit` is cut at a multiple of the MSS. Checksums are complete, so each packet
    is an ordinary (if large) IP packet that any receiver accepts.
    """
    flags, gso_type, _hl, gso_size, cstart, coff = VNET_HDR.unpack_from(frame)
    pkt = frame[VNET_LEN:]
    if gso_type == GSO_NONE:
        if flags & F_NEEDS_CSUM:
            return [(complete_csum(pkt, cstart, coff), 1, 0)]
        return [(pkt, 1, 0)]
    if gso_type not in (GSO_TCPV4, GSO_TCPV6) or gso_size == 0:
        raise ValueError(f"unsupported GSO type {gso_type}")
    v4 = gso_type == GSO_TCPV4
    ihl = (pkt[0] & 0x0F) << 2 if v4 else 40
    hl = ihl + ((pkt[ihl + 12] >> 4) << 2)
    per = max(1, (limit - hl) // gso_size)
    out = []
    for p in _cut(pkt, v4, gso_size, per):
        n = len(p) - hl
        out.append((p, -(-n // gso_size), gso_size))
    return out


def gso_header(pkt: bytes, mss: int) -> bytes:
    """virtio_net_hdr describing TCP packet `pkt` as a super-packet of `mss` segments, so that
    `segment` can cut a packet from `segment_big` after all (it recomputes every checksum)."""
    v4 = pkt[0] >> 4 == 4
    ihl = (pkt[0] & 0x0F) << 2 if v4 else 40
    hl = ihl + ((pkt[ihl + 12] >> 4) << 2)
    return VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 if v4 else GSO_TCPV6, hl, mss, ihl, 16)


def to_tun(pkt: bytes, mtu: int) -> bytes:
    """A TUN write (virtio_net_hdr + packet) for a decrypted packet larger than `mtu`.

    A large TCP packet (a whole super-packet that travelled as one ESP packet) goes back to
    the kernel as GSO with a partial checksum, cut into segments that fit `mtu`; anything else
    is written as it is.
    """
    v = pkt[0] >> 4
    if v == 4:
        ihl = (pkt[0] & 0x0F) << 2
        tcp = pkt[9] == 6 and not (pkt[6] & 0x3F or pkt[7])
        src, dst = pkt[12:16], pkt[16:20]
    else:
        ihl = 40
        tcp = pkt[6] == 6
        src, dst = pkt[8:24], pkt[24:40]
    if not tcp or len(pkt) <= mtu or len(pkt) < ihl + 20:
        return PLAIN_HDR + pkt
    hl = ihl + ((pkt[ihl + 12] >> 4) << 2)
    mss = mtu - hl
    if mss <= 0 or len(pkt) - hl <= mss:
        return PLAIN_HDR + pkt
    partial = _pseudo(src, dst, 6, len(pkt) - ihl) % 0xFFFF
    pos = ihl + 16
    vh = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4 if v == 4 else GSO_TCPV6, hl, mss, ihl, 16)
    return b"".join((vh, pkt[:pos], partial.to_bytes(2, "big"), pkt[pos + 2:]))


def _cut(pkt: bytes, v4: bool, gso_size: int, per: int) -> list[bytes]:
    """Cut a TCP super-packet into packets of `per` MSS segments each, checksums complete."""
    ihl = (pkt[0] & 0x0F) << 2 if v4 else 40
    thl = (pkt[ihl + 12] >> 4) << 2
    hl = ihl + thl
    ip = pkt[:ihl]
    tcp = bytearray(pkt[ihl:hl])
    payload = memoryview(pkt)[hl:]
    seq0 = int.from_bytes(tcp[4:8], "big")
    flags0 = tcp[13]
    src, dst = (ip[12:16], ip[16:20]) if v4 else (ip[8:24], ip[24:40])
    ident = int.from_bytes(ip[4:6], "big") if v4 else 0
    n = len(payload)
    step = gso_size * per
    out = []
    off = 0
    i = 0
    while off < n:
        chunk = payload[off:off + step]
        last = off + step >= n
        tl = thl + len(chunk)
        fl = flags0 if last else flags0 & ~0x09  # FIN and PSH only on the last segment
        if i:
            fl &= ~0x80  # CWR only on the first
        tcp[4:8] = ((seq0 + off) & 0xFFFFFFFF).to_bytes(4, "big")
        tcp[13] = fl
        tcp[16:18] = b"\0\0"
        s = _pseudo(src, dst, 6, tl) + csum_add(bytes(tcp)) + csum_add(chunk)  # type: ignore[arg-type]
        tcp[16:18] = finish(s).to_bytes(2, "big")
        if v4:
            h = bytearray(ip)
            h[2:4] = (ihl + tl).to_bytes(2, "big")
            h[4:6] = ((ident + i * per) & 0xFFFF).to_bytes(2, "big")
            h[10:12] = b"\0\0"
            h[10:12] = finish(csum_add(bytes(h))).to_bytes(2, "big")
        else:
            h = bytearray(ip)
            h[4:6] = tl.to_bytes(2, "big")
        out.append(b"".join((h, tcp, chunk)))
        off += step
        i += 1
    return out


class Coalescer:
    """Userspace GRO for TUN writes: merges in-order TCP segments of one flow."""

    __slots__ = ("_buf", "_hl", "_key", "_next_seq", "_psh", "_seg", "out")

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self._buf: list[bytes] = []
        self._key: bytes | None = None
        self._next_seq = 0
        self._seg = 0
        self._hl = 0
        self._psh = False

    def add(self, pkt: bytes) -> None:
        """Queue one decrypted packet for writing."""
        if len(pkt) < 40 or pkt[0] != 0x45 or pkt[9] != 6 or pkt[6] & 0x3F or pkt[7]:
            self.flush()
            self.out.append(PLAIN_HDR + pkt)
            return
        thl = (pkt[32] >> 4) << 2
        hl = 20 + thl
        plen = len(pkt) - hl
        flags = pkt[33]
        # only plain ACK(+PSH) data segments are merged; anything else ends the run
        if plen <= 0 or flags & ~0x18 or len(pkt) != int.from_bytes(pkt[2:4], "big"):
            self.flush()
            self.out.append(PLAIN_HDR + pkt)
            return
        # flow + everything that must match: addresses, ports, TOS/TTL, ack, window, options
        key = pkt[1:2] + pkt[8:9] + pkt[12:24] + pkt[28:32] + pkt[34:36] + pkt[38:hl]
        seq = int.from_bytes(pkt[24:28], "big")
        if (self._key == key and seq == self._next_seq and plen <= self._seg
                and hl == self._hl and sum(map(len, self._buf)) + plen < _MAX_SUPER):
            self._buf.append(pkt[hl:])
            self._next_seq = (seq + plen) & 0xFFFFFFFF
            if plen < self._seg or flags & 0x08:  # short or PSH segment closes the run
                self._psh = bool(flags & 0x08)
                self.flush()
            return
        self.flush()
        self._key = key
        self._buf = [pkt]
        self._seg = plen
        self._hl = hl
        self._next_seq = (seq + plen) & 0xFFFFFFFF
        if flags & 0x08:
            self.flush()

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        self._buf = []
        self._key = None
        psh, self._psh = self._psh, False
        if len(buf) == 1:
            self.out.append(PLAIN_HDR + buf[0])
            return
        first = buf[0]
        hl = self._hl
        data = first[hl:] + b"".join(buf[1:])
        total = hl + len(data)
        h = bytearray(first[:hl])
        h[2:4] = total.to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = finish(csum_add(bytes(h[:20]))).to_bytes(2, "big")
        if psh:  # PSH of the last segment carries over to the super-packet
            h[33] |= 0x08
        tl = total - 20
        partial = _pseudo(bytes(h[12:16]), bytes(h[16:20]), 6, tl) % 0xFFFF
        h[36:38] = partial.to_bytes(2, "big")
        vh = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hl, self._seg, 20, 16)
        self.out.append(vh + bytes(h) + data)

    def take(self) -> list[bytes]:
        self.flush()
        out = self.out
        self.out = []
        return out
