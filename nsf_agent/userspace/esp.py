"""RFC 4303 ESP: per-SA sealing/opening, sequence numbers, ESN and the anti-replay window.

Pure functions of bytes and per-SA state, no I/O, so that the data path process and the
tests (including interop against scapy) use exactly the same code. Algorithms: AES-GCM with
a 16-byte ICV (RFC 4106), AES-CBC with HMAC-SHA-256/384/512 (RFC 3602, RFC 4868) and NULL
encryption with HMAC (RFC 2410). UDP encapsulation follows RFC 3948.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as chmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .model import IPPROTO_ESP, Direction, EncAlg, IntegAlg, Mode, SaConfig

__all__ = [
    "DecryptError",
    "EspError",
    "IntegrityError",
    "MalformedError",
    "OutOfWindowError",
    "ReplayError",
    "ReplayWindow",
    "SaState",
    "SequenceOverflow",
    "SequenceStoreError",
    "WrongNextHeaderError",
    "build_ip_packet",
    "decapsulate",
    "encapsulate",
    "encapsulate_packet",
    "ipv4_checksum",
    "open_gcm_tunnel",
    "parse_udp_encap",
    "seal_gcm_tunnel",
    "split_outer",
    "udp_encap",
]

IPPROTO_IPIP = 4
IPPROTO_IPV6 = 41
IPPROTO_UDP = 17
NH_NO_NEXT = 59  # RFC 4303 2.6: dummy (TFC) packet, discarded silently by the receiver
NAT_KEEPALIVE = b"\xff"
_PAD = bytes(range(1, 256))
_HDR = struct.Struct("!II")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")
_SEQ32 = 1 << 32


class EspError(Exception):
    """Base of every reason a packet is not processed; `counter` names the stats field."""

    counter = "malformed"


class MalformedError(EspError):
    counter = "malformed"


class IntegrityError(EspError):
    counter = "integrity_failed"


class ReplayError(EspError):
    """A sequence number already received (inside the window)."""

    counter = "replay"


class OutOfWindowError(ReplayError):
    """A sequence number left of the anti-replay window (RFC 9061 replay-stats/failed)."""

    counter = "out_of_window"


class DecryptError(EspError):
    """Authenticated, but the trailer/padding is invalid."""

    counter = "decrypt_failed"


class WrongNextHeaderError(EspError):
    """Authenticated, but the next header does not fit the SA (tunnel mode: not IP, or not
    the inner packet's IP version). Counted apart, and not as a received packet."""

    counter = "wrong_next_header"


class SequenceOverflow(EspError):
    """The outbound sequence number space is exhausted: the SA must be replaced."""

    counter = "seq_overflow"


class SequenceStoreError(EspError):
    """The next block of sequence numbers could not be reserved on disk: not sent (sending
    without a persisted mark could repeat sequence numbers after a crash)."""

    counter = "seq_store_failed"


class ReplayWindow:
    """RFC 4303 3.4.3 / Appendix A anti-replay window as an integer bitmap.

    Bit i of `bitmap` records that sequence number `top - i` was received. With ESN the high
    32 bits are inferred from the window position (Appendix A2.2) and returned so that the
    ICV can be checked with them; the window only moves after the ICV verified.
    A size of 0 disables replay checking but still tracks `top` for ESN inference.
    """

    __slots__ = ("bitmap", "esn", "size", "top")

    def __init__(self, size: int, esn: bool) -> None:
        self.size = size
        self.esn = esn
        self.top = 0
        self.bitmap = 0

    def infer(self, seql: int) -> int:
        """Full sequence number for the 32 bits on the wire."""
        if not self.esn:
            return seql
        w = max(self.size, 1)
        tl = self.top & 0xFFFFFFFF
        th = self.top >> 32
        bottom = (tl - w + 1) & 0xFFFFFFFF
        if tl >= w - 1:  # window lies in one 2^32 subspace
            seqh = th if seql >= bottom else th + 1
        else:  # window straddles two subspaces
            seqh = th - 1 if seql >= bottom else th
            if seqh < 0:
                seqh = 0
        return (seqh << 32) | seql

    def check(self, seq: int) -> None:
        """Reject before the (costly) ICV check what the window already rules out."""
        if seq == 0:
            raise ReplayError("sequence number 0")
        if self.size == 0 or seq > self.top:
            return
        diff = self.top - seq
        if diff >= self.size:
            raise OutOfWindowError("sequence number left of window")
        if (self.bitmap >> diff) & 1:
            raise ReplayError("duplicate sequence number")

    def update(self, seq: int) -> None:
        """Record an authenticated sequence number."""
        if seq > self.top:
            shift = seq - self.top
            if self.size:
                self.bitmap = ((self.bitmap << shift) | 1) & ((1 << self.size) - 1)
            self.top = seq
        elif self.size:
            self.bitmap |= 1 << (self.top - seq)


@dataclass(slots=True)
class Counters:
    """Per-SA counters, reported in stats and checked against lifetimes."""

    bytes: int = 0
    packets: int = 0
    replay: int = 0
    out_of_window: int = 0
    integrity_failed: int = 0
    decrypt_failed: int = 0
    malformed: int = 0
    dummy: int = 0
    seq_overflow: int = 0
    wrong_next_header: int = 0
    seq_store_failed: int = 0
    policy_violation: int = 0


class _Suite:
    """Algorithm binding of one SA: IV/ICV sizes, alignment and the two crypto operations."""

    iv_len = 0
    icv_len = 0
    align = 4

    def seal(self, header: bytes, seqh: bytes, seq: int, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def open(self, header: bytes, seqh: bytes, body: bytes) -> bytes:
        raise NotImplementedError


class _GcmSuite(_Suite):
    """RFC 4106: 4-byte salt from the key material, 8-byte explicit IV, AAD = SPI|[SeqH]|SeqL."""

    iv_len = 8
    icv_len = 16
    align = 4

    def __init__(self, keymat: bytes) -> None:
        self._aead = AESGCM(keymat[:-4])
        self._salt = keymat[-4:]

    def seal(self, header: bytes, seqh: bytes, seq: int, plaintext: bytes) -> bytes:
        # The sequence number is unique per SA, so it is a safe explicit IV (RFC 4106 3.1).
        iv = seq.to_bytes(8, "big")
        aad = header[:4] + seqh + header[4:] if seqh else header
        return iv + self._aead.encrypt(self._salt + iv, plaintext, aad)

    def open(self, header: bytes, seqh: bytes, body: bytes) -> bytes:
        if len(body) < 8 + 16 + 4:
            raise MalformedError("ESP payload too short for AES-GCM")
        iv = body[:8]
        aad = header[:4] + seqh + header[4:] if seqh else header
        try:
            return self._aead.decrypt(self._salt + iv, body[8:], aad)
        except Exception:
            raise IntegrityError("AES-GCM tag mismatch") from None


_HASHES = {
    IntegAlg.HMAC_SHA2_256_128: (hashes.SHA256, 16),
    IntegAlg.HMAC_SHA2_384_192: (hashes.SHA384, 24),
    IntegAlg.HMAC_SHA2_512_256: (hashes.SHA512, 32),
}


class _RandomPool:
    """CBC IVs must be unpredictable; drawing them in bulk saves a getrandom() per packet."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = os.urandom(65536)
            self._pos = 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


_RANDOM = _RandomPool()


class _CbcHmacSuite(_Suite):
    """AES-CBC (or NULL) encryption with HMAC-SHA2 truncated per RFC 4868 (encrypt-then-MAC)."""

    def __init__(self, enc_alg: EncAlg, enc_key: bytes, integ: IntegAlg, integ_key: bytes) -> None:
        self._aes = algorithms.AES(enc_key) if enc_alg is EncAlg.AES_CBC else None
        self.iv_len = 16 if self._aes is not None else 0
        self.align = 16 if self._aes is not None else 4
        self._hash, self.icv_len = _HASHES[integ]
        self._key = integ_key

    def _icv(self, *parts: bytes) -> bytes:
        h = chmac.HMAC(self._key, self._hash())
        for p in parts:
            h.update(p)
        return h.finalize()[:self.icv_len]

    def seal(self, header: bytes, seqh: bytes, seq: int, plaintext: bytes) -> bytes:
        if self._aes is not None:
            iv = _RANDOM.take(16)
            enc = Cipher(self._aes, modes.CBC(iv)).encryptor()
            body = iv + enc.update(plaintext) + enc.finalize()
        else:
            body = plaintext
        # RFC 4303 2.2.1: with ESN the high-order bits are appended for the ICV only.
        return body + self._icv(header, body, seqh)

    def open(self, header: bytes, seqh: bytes, body: bytes) -> bytes:
        n = self.icv_len
        if len(body) < self.iv_len + n + 2 or (len(body) - self.iv_len - n) % self.align:
            raise MalformedError("ESP payload length does not fit the cipher")
        data, icv = body[:-n], body[-n:]
        h = chmac.HMAC(self._key, self._hash())
        h.update(header)
        h.update(data)
        h.update(seqh)
        if h.finalize()[:n] != icv:  # both sides fixed length; timing leaks nothing useful
            raise IntegrityError("HMAC mismatch")
        if self._aes is None:
            return data
        dec = Cipher(self._aes, modes.CBC(data[:16])).decryptor()
        return dec.update(data[16:]) + dec.finalize()


def _make_suite(cfg: SaConfig) -> _Suite:
    if cfg.enc_alg is EncAlg.AES_GCM_16:
        return _GcmSuite(cfg.enc_key)
    return _CbcHmacSuite(cfg.enc_alg, cfg.enc_key, cfg.integ_alg, cfg.integ_key)


class SaState:
    """Run-time state of one SA: crypto context, sequence counter, replay window, counters."""

    def __init__(self, cfg: SaConfig, now: float | None = None) -> None:
        self.cfg = cfg
        self.spi = cfg.spi
        self._suite = _make_suite(cfg)
        self._spi_bytes = cfg.spi.to_bytes(4, "big")
        self.seq = 0  # last sequence number sent (outbound)
        # Sequence numbers up to seq_limit may be sent; past it, `reserve(seq)` must first
        # persist a new limit (see seqstore.py) and return it. None: no persistence (tests).
        self.seq_limit = (1 << 64) - 1
        self.reserve: Callable[[int], int] | None = None
        self.replay = ReplayWindow(cfg.replay_window, cfg.esn)
        self.counters = Counters()
        self.added = time.monotonic() if now is None else now
        self.last_used = self.added
        self.soft_fired = False
        self.overhead = 8 + self._suite.iv_len + self._suite.icv_len + 2 + self._suite.align

    # -- outbound -------------------------------------------------------------------------

    def seal(self, payload: bytes, next_header: int, count: int = 1) -> bytes:
        """ESP header, IV, encrypted payload+padding+trailer and ICV for one packet.

        `count` is how many packets it stands for in the packet counter (a TCP super-packet
        sent whole counts as the segments it carries)."""
        seq = self.seq + 1
        if seq >= (1 << 64 if self.cfg.esn else _SEQ32):
            self.counters.seq_overflow += 1
            raise SequenceOverflow(f"SA spi={self.spi:#x} exhausted its sequence numbers")
        if seq > self.seq_limit:
            self._reserve(seq)
        self.seq = seq
        header = self._spi_bytes + (seq & 0xFFFFFFFF).to_bytes(4, "big")
        seqh = (seq >> 32).to_bytes(4, "big") if self.cfg.esn else b""
        pad = (-(len(payload) + 2)) % self._suite.align
        plaintext = payload + _PAD[:pad] + bytes((pad, next_header))
        out = header + self._suite.seal(header, seqh, seq, plaintext)
        c = self.counters
        c.bytes += len(payload)
        c.packets += count
        return out

    def _reserve(self, seq: int) -> None:
        if self.reserve is None:
            raise SequenceStoreError(f"SA spi={self.spi:#x}: no sequence numbers reserved")
        try:
            self.seq_limit = self.reserve(seq)
        except OSError as e:
            raise SequenceStoreError(f"SA spi={self.spi:#x}: cannot reserve sequence "
                                     f"numbers: {e}") from None

    def gcm_fast(self) -> tuple[object, bytes, bytes] | None:
        """(AESGCM, salt, SPI bytes) when this SA is AES-GCM without ESN, for the data path's
        fused tunnel-mode send (`seal_gcm_tunnel`); None otherwise."""
        suite = self._suite
        if isinstance(suite, _GcmSuite) and not self.cfg.esn:
            return suite._aead, suite._salt, self._spi_bytes
        return None

    # -- inbound --------------------------------------------------------------------------

    def open(self, esp: bytes) -> tuple[bytes, int]:
        """Verify, replay-check and decrypt one ESP packet; returns (payload, next header).

        Raises an `EspError` subclass (and counts it) for anything that is not accepted.
        """
        try:
            return self._open(esp)
        except EspError as e:
            c = self.counters
            setattr(c, e.counter, getattr(c, e.counter) + 1)
            raise

    def _open(self, esp: bytes) -> tuple[bytes, int]:
        if len(esp) < 8 + self._suite.iv_len + self._suite.icv_len + 2:
            raise MalformedError("ESP packet too short")
        header = bytes(esp[:8])
        seql = int.from_bytes(header[4:8], "big")
        replay = self.replay
        seq = replay.infer(seql)
        replay.check(seq)
        seqh = (seq >> 32).to_bytes(4, "big") if self.cfg.esn else b""
        plain = self._suite.open(header, seqh, esp[8:])
        if len(plain) < 2:
            raise DecryptError("no ESP trailer")
        padlen = plain[-2]
        nh = plain[-1]
        end = len(plain) - 2 - padlen
        if end < 0 or plain[end:-2] != _PAD[:padlen]:
            raise DecryptError("bad ESP padding")
        replay.update(seq)  # authentic: its sequence number is used, whatever it carries
        if nh == NH_NO_NEXT:
            raise _Dummy("TFC dummy packet")
        if self.cfg.mode is Mode.TUNNEL:
            if nh not in (IPPROTO_IPIP, IPPROTO_IPV6):
                raise WrongNextHeaderError(f"tunnel-mode next header {nh} is not IP")
            if end == 0 or (plain[0] >> 4) != (4 if nh == IPPROTO_IPIP else 6):
                raise WrongNextHeaderError("inner IP version does not match next header")
            hl = (plain[0] & 0x0F) * 4 if nh == IPPROTO_IPIP else 40
            if hl < 20 or end < hl:  # a dropped packet is not a packet received
                raise MalformedError("truncated inner IP header")
        c = self.counters
        c.packets += 1
        c.bytes += end
        return plain[:end], nh


class _Dummy(EspError):
    """A TFC dummy packet (next header 59): authenticated, counted, not delivered."""

    counter = "dummy"


def ipv4_checksum(header: bytes) -> int:
    s = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def build_ip_packet(src: object, dst: object, proto: int, payload: bytes, *,
                    ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 or IPv6 header (family from `src`) in front of `payload`."""
    sb = src.packed  # type: ignore[attr-defined]
    db = dst.packed  # type: ignore[attr-defined]
    if len(sb) == 4:
        hdr = _IPV4.pack(0x45, 0, 20 + len(payload), ident, 0, ttl, proto, 0, sb, db)
        return hdr[:10] + ipv4_checksum(hdr).to_bytes(2, "big") + hdr[12:] + payload
    return _IPV6.pack(6 << 28, len(payload), proto, ttl, sb, db) + payload


def udp_encap(esp: bytes, sport: int, dport: int) -> bytes:
    """RFC 3948 UDP header in front of an ESP packet (checksum 0, allowed for IPv4)."""
    return _UDP.pack(sport, dport, 8 + len(esp), 0) + esp


def parse_udp_encap(udp_payload: bytes) -> bytes | None:
    """ESP inside a UDP 4500 datagram, or None for IKE (non-ESP marker) and keepalives."""
    if udp_payload == NAT_KEEPALIVE:
        return None
    if len(udp_payload) < 8:
        raise MalformedError("UDP-encapsulated datagram too short")
    if udp_payload[:4] == b"\0\0\0\0":
        return None  # non-ESP marker: an IKE message, not ours to handle
    return udp_payload


def _ip_split(packet: bytes) -> tuple[int, int, int]:
    """(version, header length, next protocol) of an IP packet, checking lengths."""
    if not packet:
        raise MalformedError("empty packet")
    v = packet[0] >> 4
    if v == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or len(packet) < ihl:
            raise MalformedError("truncated IPv4 header")
        return 4, ihl, packet[9]
    if v == 6:
        if len(packet) < 40:
            raise MalformedError("truncated IPv6 header")
        return 6, 40, packet[6]
    raise MalformedError(f"IP version {v}")


def seal_gcm_tunnel(sa: SaState, fast: tuple, packet: bytes, nh: int) -> bytes:  # type: ignore[type-arg]
    """`sa.seal(packet, nh)` for an AES-GCM SA without ESN in one function (the per-packet
    path of the data path; same checks, numbering and counters)."""
    seq = sa.seq + 1
    if seq >= _SEQ32:
        sa.counters.seq_overflow += 1
        raise SequenceOverflow(f"SA spi={sa.spi:#x} exhausted its sequence numbers")
    if seq > sa.seq_limit:
        sa._reserve(seq)
    sa.seq = seq
    aead, salt, spi = fast
    iv = seq.to_bytes(8, "big")
    header = spi + iv[4:]
    n = len(packet)
    pad = (-(n + 2)) & 3
    c = sa.counters
    c.bytes += n
    c.packets += 1
    return header + iv + aead.encrypt(salt + iv, packet + _PAD[:pad] + bytes((pad, nh)), header)


def open_gcm_tunnel(sa: SaState, fast: tuple, esp: bytes) -> bytes:  # type: ignore[type-arg]
    """`decapsulate(sa, esp)` for a tunnel-mode AES-GCM SA without ESN in one function (the
    data path's per-packet receive; same checks, replay window and counters)."""
    try:
        if len(esp) < 8 + 8 + 16 + 2:
            raise MalformedError("ESP packet too short")
        header = esp[:8]
        seq = int.from_bytes(header[4:8], "big")
        replay = sa.replay
        replay.check(seq)
        if len(esp) < 8 + 8 + 16 + 4:
            raise MalformedError("ESP payload too short for AES-GCM")
        aead, salt, _ = fast
        try:
            plain = aead.decrypt(salt + esp[8:16], esp[16:], header)
        except Exception:
            raise IntegrityError("AES-GCM tag mismatch") from None
        if len(plain) < 2:
            raise DecryptError("no ESP trailer")
        padlen = plain[-2]
        nh = plain[-1]
        end = len(plain) - 2 - padlen
        if end < 0 or (padlen and plain[end:-2] != _PAD[:padlen]):
            raise DecryptError("bad ESP padding")
        replay.update(seq)
        if nh == NH_NO_NEXT:
            raise _Dummy("TFC dummy packet")
        if nh == IPPROTO_IPIP:
            if end == 0 or plain[0] >> 4 != 4:
                raise WrongNextHeaderError("inner IP version does not match next header")
            ihl = (plain[0] & 0x0F) * 4
            if ihl < 20 or end < ihl:
                raise MalformedError("truncated IPv4 header")
        elif nh == IPPROTO_IPV6:
            if end == 0 or plain[0] >> 4 != 6:
                raise WrongNextHeaderError("inner IP version does not match next header")
            if end < 40:
                raise MalformedError("truncated IPv6 header")
        else:
            raise WrongNextHeaderError(f"tunnel-mode next header {nh} is not IP")
    except EspError as e:
        c = sa.counters
        setattr(c, e.counter, getattr(c, e.counter) + 1)
        raise
    c = sa.counters
    c.packets += 1
    c.bytes += end
    return plain[:end]


def encapsulate(sa: SaState, packet: bytes, count: int = 1) -> bytes:
    """The ESP packet protecting one IP packet, without outer IP header.

    Tunnel mode carries the whole packet (next header 4 or 41); transport mode carries the
    transport payload (IPv4 options and IPv6 extension headers are not preserved).
    """
    if sa.cfg.mode is Mode.TUNNEL:
        v = packet[0] >> 4 if packet else 0
        if v not in (4, 6):
            raise MalformedError(f"IP version {v}")
        return sa.seal(packet, IPPROTO_IPIP if v == 4 else IPPROTO_IPV6, count)
    _, hl, proto = _ip_split(packet)
    return sa.seal(packet[hl:], proto, count)


def encapsulate_packet(sa: SaState, packet: bytes, *, ident: int = 0, count: int = 1) -> bytes:
    """Full outer IP packet (with UDP when the SA is encapsulated), as seen on the wire."""
    esp = encapsulate(sa, packet, count)
    cfg = sa.cfg
    if cfg.encap is not None:
        return build_ip_packet(cfg.src, cfg.dst, IPPROTO_UDP,
                               udp_encap(esp, cfg.encap.sport, cfg.encap.dport), ident=ident)
    return build_ip_packet(cfg.src, cfg.dst, IPPROTO_ESP, esp, ident=ident)


def decapsulate(sa: SaState, esp: bytes, outer_src: object = None,
                outer_dst: object = None) -> bytes:
    """The IP packet carried by one ESP packet (no outer header), opened with `sa`.

    For transport mode the IP header is rebuilt from the outer addresses (default: the SA's).
    """
    payload, nh = sa.open(esp)  # (tunnel mode: next header and inner IP version checked)
    if sa.cfg.mode is Mode.TUNNEL:
        _ip_split(payload)
        return payload
    src = outer_src if outer_src is not None else sa.cfg.src
    dst = outer_dst if outer_dst is not None else sa.cfg.dst
    return build_ip_packet(src, dst, nh, payload)


def split_outer(packet: bytes) -> tuple[bytes, bytes, bytes]:
    """(src, dst, ESP bytes) from a full outer IPv4/IPv6 packet with ESP or UDP-ESP."""
    v, hl, proto = _ip_split(packet)
    if v == 4:
        total = int.from_bytes(packet[2:4], "big")
        if total < hl or total > len(packet):
            raise MalformedError("IPv4 total length inconsistent")
        if int.from_bytes(packet[6:8], "big") & 0x3FFF:
            raise MalformedError("IPv4 fragment")
        src, dst, body = packet[12:16], packet[16:20], packet[hl:total]
    else:
        plen = int.from_bytes(packet[4:6], "big")
        if 40 + plen > len(packet):
            raise MalformedError("IPv6 payload length inconsistent")
        src, dst, body = packet[8:24], packet[24:40], packet[40:40 + plen]
    if proto == IPPROTO_UDP:
        if len(body) < 8:
            raise MalformedError("truncated UDP header")
        esp = parse_udp_encap(body[8:])
        if esp is None:
            raise MalformedError("not ESP (IKE or keepalive)")
        return src, dst, esp
    if proto != IPPROTO_ESP:
        raise MalformedError(f"protocol {proto} is not ESP")
    return src, dst, body


def is_inbound(cfg: SaConfig) -> bool:
    return cfg.direction is Direction.INBOUND
