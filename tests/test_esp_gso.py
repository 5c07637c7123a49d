"""TUN offload helpers: TSO super-packets cut into valid segments, segments coalesced back."""

from __future__ import annotations

import os

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from nsf_agent.userspace import gso


def _valid(pkt: bytes) -> bool:
    """scapy recomputes IP and TCP checksums; ours must agree."""
    p = IP(pkt) if pkt[0] >> 4 == 4 else IPv6(pkt)
    q = p.copy()
    if p.version == 4:
        del q[IP].chksum
    del q[TCP].chksum
    q = q.__class__(bytes(q))
    ok = q[TCP].chksum == p[TCP].chksum
    return ok and (p.version == 6 or q[IP].chksum == p[IP].chksum)


def _super(v6: bool, payload: bytes, flags: str = "PA") -> bytes:
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if v6 else \
        IP(src="198.51.100.10", dst="203.0.113.10", id=100, flags="DF")
    return bytes(ip / TCP(sport=40000, dport=5201, seq=4_294_960_000, flags=flags,
                          options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]) /
                 payload)


def test_segment_tso_v4_and_v6() -> None:
    payload = os.urandom(10_000)
    for v6 in (False, True):
        pkt = _super(v6, payload)
        hl = (40 if v6 else 20) + 32
        vh = gso.VNET_HDR.pack(gso.F_NEEDS_CSUM, gso.GSO_TCPV6 if v6 else gso.GSO_TCPV4, hl,
                               1388, 40 if v6 else 20, 16)
        segs = gso.segment(vh + pkt)
        assert len(segs) == 8
        assert b"".join(s[hl:] for s in segs) == payload
        for i, s in enumerate(segs):
            assert _valid(s)
            t = (IPv6(s) if v6 else IP(s))[TCP]
            assert t.seq == (4_294_960_000 + 1388 * i) & 0xFFFFFFFF  # wraps correctly
            assert ("P" in str(t.flags)) == (i == 7)
            if not v6:
                assert IP(s).id == 100 + i


def test_complete_partial_checksum() -> None:
    pkt = bytearray(_super(False, os.urandom(333)))
    # a CHECKSUM_PARTIAL packet: the field holds the folded pseudo-header sum
    ph = gso._pseudo(bytes(pkt[12:16]), bytes(pkt[16:20]), 6, len(pkt) - 20) % 0xFFFF
    pkt[36:38] = ph.to_bytes(2, "big")
    vh = gso.VNET_HDR.pack(gso.F_NEEDS_CSUM, gso.GSO_NONE, 0, 0, 20, 16)
    (out,) = gso.segment(vh + bytes(pkt))
    assert _valid(out)


def test_coalesce_round_trip() -> None:
    payload = os.urandom(1388 * 5 + 100)
    pkt = _super(False, payload)
    vh = gso.VNET_HDR.pack(gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1388, 20, 16)
    segs = gso.segment(vh + pkt)
    c = gso.Coalescer()
    for s in segs:
        c.add(s)
    c.add(bytes(IP(src="198.51.100.10", dst="203.0.113.10") / TCP(flags="S")))
    frames = c.take()
    assert len(frames) == 2  # one super-packet, then the SYN on its own
    flags, gso_type, hl, size, cs, co = gso.VNET_HDR.unpack_from(frames[0])
    assert (flags, gso_type, hl, size, cs, co) == (gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1388, 20,
                                                   16)
    body = frames[0][gso.VNET_LEN:]
    assert body[52:] == payload
    assert IP(body).len == len(body) and IP(body)[TCP].flags == "PA"
    assert frames[1][:gso.VNET_LEN] == gso.PLAIN_HDR


def test_csum_chunked_equals_plain_sum() -> None:
    for n in (0, 1, 2, 8191, 8192, 8193, 20_001, 65_000):
        d = os.urandom(n)
        padded = d + b"\0" * (n & 1)
        assert gso.csum_add(d) == int.from_bytes(padded, "big") % 0xFFFF
        assert gso.csum_add(memoryview(d), 7) == int.from_bytes(padded, "big") % 0xFFFF + 7


def test_segment_big_keeps_super_packet_whole_and_valid() -> None:
    payload = os.urandom(1348 * 40 + 77)
    for v6 in (False, True):
        pkt = _super(v6, payload)
        hl = (40 if v6 else 20) + 32
        vh = gso.VNET_HDR.pack(gso.F_NEEDS_CSUM, gso.GSO_TCPV6 if v6 else gso.GSO_TCPV4, hl,
                               1348, 40 if v6 else 20, 16)
        ((whole, nseg, mss),) = gso.segment_big(vh + pkt, 65_000)
        assert (nseg, mss) == (41, 1348) and whole[hl:] == payload and _valid(whole)
        # cut at a multiple of the MSS when over the limit; counts add up, flags as TSO does
        parts = gso.segment_big(vh + pkt, hl + 1348 * 16 + 100)
        assert [n for _, n, _ in parts] == [16, 16, 9]
        assert b"".join(p[hl:] for p, _, _ in parts) == payload
        for i, (p, _, _) in enumerate(parts):
            assert _valid(p)
            t = (IPv6(p) if v6 else IP(p))[TCP]
            assert t.seq == (4_294_960_000 + 1348 * 16 * i) & 0xFFFFFFFF
            assert ("P" in str(t.flags)) == (i == 2)
        # and it can still be cut into ordinary segments later
        segs = gso.segment(gso.gso_header(whole, mss) + whole)
        assert len(segs) == 41 and all(_valid(s) for s in segs)
        assert b"".join(s[hl:] for s in segs) == payload


def test_to_tun_big_packet_becomes_gso() -> None:
    payload = os.urandom(30_000)
    pkt = _super(False, payload)
    frame = gso.to_tun(pkt, 1400)
    flags, gso_type, hl, size, cs, co = gso.VNET_HDR.unpack_from(frame)
    assert (flags, gso_type, hl, size, cs, co) == (gso.F_NEEDS_CSUM, gso.GSO_TCPV4, 52, 1348, 20,
                                                   16)
    # what the kernel will do with it: segments that fit the MTU, with valid checksums
    segs = gso.segment(frame)
    assert all(len(s) <= 1400 and _valid(s) for s in segs)
    assert b"".join(s[52:] for s in segs) == payload
    small = _super(False, os.urandom(500))
    assert gso.to_tun(small, 1400) == gso.PLAIN_HDR + small
    v6 = _super(True, payload)
    assert gso.VNET_HDR.unpack_from(gso.to_tun(v6, 1400))[1] == gso.GSO_TCPV6
