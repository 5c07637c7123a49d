"""Unit tests of nsf_agent.userspace.esp: round trips, ESN, replay window, tampering, garbage."""

from __future__ import annotations

import ipaddress
import random

import pytest
from test_esp_helpers import ALGS, sa_pair

from nsf_agent.userspace.esp import (
    DecryptError,
    EspError,
    IntegrityError,
    MalformedError,
    OutOfWindowError,
    ReplayError,
    ReplayWindow,
    SaState,
    SequenceOverflow,
    WrongNextHeaderError,
    build_ip_packet,
    decapsulate,
    encapsulate,
    encapsulate_packet,
    split_outer,
)
from nsf_agent.userspace.model import (
    Direction,
    EncAlg,
    IntegAlg,
    Lifetime,
    Mode,
    ModelError,
    SaConfig,
    UdpEncap,
)

H1 = ipaddress.ip_address("198.51.100.10")
H2 = ipaddress.ip_address("203.0.113.20")
H1V6 = ipaddress.ip_address("2001:db8:1::10")
H2V6 = ipaddress.ip_address("2001:db8:2::20")


def udp_packet(src: object = H1, dst: object = H2, size: int = 100) -> bytes:
    payload = bytes(random.Random(size).randbytes(size))
    udp = (1234).to_bytes(2, "big") + (5678).to_bytes(2, "big") + \
        (8 + size).to_bytes(2, "big") + b"\0\0" + payload
    return build_ip_packet(src, dst, 17, udp)


@pytest.mark.parametrize("alg", list(ALGS))
@pytest.mark.parametrize("mode", [Mode.TUNNEL, Mode.TRANSPORT])
@pytest.mark.parametrize("size", [0, 1, 13, 14, 15, 16, 17, 1400])
def test_round_trip(alg: str, mode: Mode, size: int) -> None:
    out_cfg, in_cfg = sa_pair(alg, mode)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    src, dst = (H1, H2) if mode is Mode.TUNNEL else (out_cfg.src, out_cfg.dst)
    pkt = udp_packet(src, dst, size)
    esp = encapsulate(tx, pkt)
    assert esp[:4] == out_cfg.spi.to_bytes(4, "big")
    assert int.from_bytes(esp[4:8], "big") == 1
    assert len(esp) % 4 == 0
    assert decapsulate(rx, esp) == pkt
    assert rx.counters.packets == 1 and tx.counters.packets == 1


@pytest.mark.parametrize("alg", ["gcm256", "cbc128-sha256"])
def test_round_trip_ipv6_inner_and_outer(alg: str) -> None:
    out_cfg, in_cfg = sa_pair(alg, src=ipaddress.ip_address("2001:db8::1"),
                              dst=ipaddress.ip_address("2001:db8::2"))
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    pkt = udp_packet(H1V6, H2V6, 200)
    wire = encapsulate_packet(tx, pkt)
    assert wire[0] >> 4 == 6 and wire[6] == 50
    _, _, esp = split_outer(wire)
    assert decapsulate(rx, esp) == pkt


def test_cbc_block_alignment_and_padding() -> None:
    out_cfg, _in_cfg = sa_pair("cbc128-sha256")
    tx = SaState(out_cfg)
    for size in range(0, 40):
        esp = encapsulate(tx, udp_packet(size=size))
        # SPI+seq (8) + IV (16) + ciphertext (blocks) + ICV (16)
        assert (len(esp) - 8 - 16 - 16) % 16 == 0


def test_udp_encapsulation_round_trip() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", encap=UdpEncap(4500, 4500))
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    pkt = udp_packet()
    wire = encapsulate_packet(tx, pkt)
    assert wire[9] == 17 and wire[20:22] == (4500).to_bytes(2, "big")
    _, _, esp = split_outer(wire)
    assert decapsulate(rx, esp) == pkt


def test_udp_non_esp_marker_and_keepalive_are_not_esp() -> None:
    from nsf_agent.userspace.esp import parse_udp_encap
    assert parse_udp_encap(b"\xff") is None
    assert parse_udp_encap(b"\0\0\0\0" + b"ike message....") is None
    with pytest.raises(MalformedError):
        parse_udp_encap(b"\x01\x02")


def test_esn_crosses_32_bit_boundary() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", esn=True, window=32)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    tx.seq = (1 << 32) - 3
    rx.replay.top = (1 << 32) - 4
    for i in range(6):
        esp = encapsulate(tx, udp_packet(size=i))
        wire_seq = int.from_bytes(esp[4:8], "big")
        assert wire_seq == ((1 << 32) - 2 + i) & 0xFFFFFFFF  # only the low 32 bits travel
        assert decapsulate(rx, esp) == udp_packet(size=i)
    assert rx.replay.top == (1 << 32) + 3


@pytest.mark.parametrize("alg", ["gcm128", "cbc128-sha256"])
def test_esn_high_bits_are_in_the_icv(alg: str) -> None:
    """A receiver that infers the wrong high-order bits must fail the integrity check."""
    out_cfg, in_cfg = sa_pair(alg, esn=True)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    tx.seq = 5 << 32  # sender is in subspace 5, receiver believes subspace 0
    esp = encapsulate(tx, udp_packet())
    with pytest.raises(IntegrityError):
        decapsulate(rx, esp)
    assert rx.counters.integrity_failed == 1


def test_sequence_overflow_without_esn() -> None:
    out_cfg, _ = sa_pair("gcm128")
    tx = SaState(out_cfg)
    tx.seq = (1 << 32) - 2
    encapsulate(tx, udp_packet())
    with pytest.raises(SequenceOverflow):
        encapsulate(tx, udp_packet())


def test_replay_duplicate_and_out_of_order() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", window=32)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    packets = [encapsulate(tx, udp_packet(size=i)) for i in range(40)]
    decapsulate(rx, packets[10])
    with pytest.raises(ReplayError):
        decapsulate(rx, packets[10])
    decapsulate(rx, packets[3])  # out of order, inside the window
    decapsulate(rx, packets[39])  # top = 40, window covers 9..40
    decapsulate(rx, packets[8])  # seq 9: the left edge is accepted
    with pytest.raises(OutOfWindowError):  # (a ReplayError)
        decapsulate(rx, packets[7])  # seq 8: just left of the window
    with pytest.raises(ReplayError):
        decapsulate(rx, packets[8])
    # duplicates and left-of-window drops are counted apart (RFC 9061 packet-dropped/failed)
    assert rx.counters.replay == 2
    assert rx.counters.out_of_window == 1
    assert rx.counters.packets == 4


def test_replay_window_large_jump_clears_bitmap() -> None:
    w = ReplayWindow(64, esn=False)
    for s in (1, 2, 3):
        w.check(s)
        w.update(s)
    w.update(1000)
    assert w.bitmap == 1
    w.check(999)
    with pytest.raises(ReplayError):
        w.check(1000 - 64)
    w.check(1000 - 63)


def test_replay_window_zero_disables_checking() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", window=0)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    esp = encapsulate(tx, udp_packet())
    decapsulate(rx, esp)
    decapsulate(rx, esp)
    assert rx.counters.packets == 2


def test_sequence_zero_rejected() -> None:
    w = ReplayWindow(64, esn=False)
    with pytest.raises(ReplayError):
        w.check(0)


def test_esn_inference_when_window_straddles_subspaces() -> None:
    w = ReplayWindow(64, esn=True)
    w.top = (1 << 32) + 10  # Tl=10 < W-1: window spans the subspace boundary
    assert w.infer(5) == (1 << 32) + 5
    assert w.infer(0xFFFFFFF0) == 0xFFFFFFF0  # late packet from the previous subspace
    w.top = (3 << 32) + 1000  # Tl >= W-1
    assert w.infer(999) == (3 << 32) + 999
    assert w.infer(5) == (4 << 32) + 5  # left of window: must be the next subspace


@pytest.mark.parametrize("alg", ["gcm128", "cbc256-sha384", "null-sha256"])
def test_tampering_is_an_integrity_failure(alg: str) -> None:
    out_cfg, in_cfg = sa_pair(alg)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    esp = encapsulate(tx, udp_packet(size=64))
    for pos in range(4, len(esp), 7):  # seq, IV, ciphertext and ICV bytes
        bad = bytearray(esp)
        bad[pos] ^= 0x40
        with pytest.raises(IntegrityError):
            decapsulate(rx, bytes(bad))
    assert rx.replay.top == 0  # a forged packet never moves the window
    assert decapsulate(rx, esp) == udp_packet(size=64)


def test_wrong_key_fails_integrity() -> None:
    out_cfg, _ = sa_pair("cbc128-sha256")
    _, other_in = sa_pair("cbc128-sha256")
    with pytest.raises(IntegrityError):
        decapsulate(SaState(other_in), encapsulate(SaState(out_cfg), udp_packet()))


@pytest.mark.parametrize("alg", list(ALGS))
def test_truncated_and_garbage_input_raise_clean_errors(alg: str) -> None:
    out_cfg, in_cfg = sa_pair(alg)
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    esp = encapsulate(tx, udp_packet(size=50))
    rnd = random.Random(4303)
    inputs = [esp[:n] for n in range(0, len(esp))]
    inputs += [rnd.randbytes(rnd.randrange(0, 200)) for _ in range(200)]
    for data in inputs:
        with pytest.raises(EspError):
            decapsulate(rx, data)
    for data in [b"", b"\x45", b"\x60" * 10, rnd.randbytes(30), b"\x45" + bytes(19)]:
        with pytest.raises(EspError):
            split_outer(data)


def test_bad_padding_is_a_decrypt_failure() -> None:
    """NULL encryption lets us forge a correctly authenticated packet with bad padding."""
    out_cfg, in_cfg = sa_pair("null-sha256")
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    header = out_cfg.spi.to_bytes(4, "big") + (1).to_bytes(4, "big")
    plaintext = b"abcdefgh" + b"\x07\x07" + b"\x02\x04"  # pad bytes must be 1, 2
    esp = header + tx._suite.seal(header, b"", 1, plaintext)
    with pytest.raises(DecryptError):
        decapsulate(rx, esp)
    assert rx.counters.decrypt_failed == 1


def test_tunnel_rejects_non_ip_next_header() -> None:
    """#24.4: a wrong next header is its own drop reason and not a received packet."""
    out_cfg, in_cfg = sa_pair("gcm128")
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    with pytest.raises(WrongNextHeaderError):
        decapsulate(rx, tx.seal(b"\x45" + bytes(19), 6))
    with pytest.raises(WrongNextHeaderError):  # IPv4 header under next header 41 (IPv6)
        decapsulate(rx, tx.seal(b"\x45" + bytes(19), 41))
    assert rx.counters.wrong_next_header == 2
    assert rx.counters.decrypt_failed == 0
    assert rx.counters.packets == 0 and rx.counters.bytes == 0
    assert rx.replay.top == 2  # authentic: a replay of it is still refused


def test_dummy_packet_is_counted_not_delivered() -> None:
    out_cfg, in_cfg = sa_pair("gcm128")
    tx, rx = SaState(out_cfg), SaState(in_cfg)
    with pytest.raises(EspError):
        decapsulate(rx, tx.seal(b"", 59))
    assert rx.counters.dummy == 1


def test_model_validation_and_serialisation() -> None:
    out_cfg, _ = sa_pair("cbc128-sha256", soft=Lifetime(bytes=10), hard=Lifetime(bytes=20),
                         encap=UdpEncap(4500, 4501))
    assert SaConfig.from_dict(out_cfg.to_dict()) == out_cfg
    assert out_cfg.enc_key.hex() not in repr(out_cfg)
    assert out_cfg.integ_key.hex() not in repr(out_cfg)
    with pytest.raises(ModelError):
        SaConfig(name="x", spi=1, direction=Direction.INBOUND, src=H1, dst=H2,
                 enc_key=bytes(20))
    with pytest.raises(ModelError):
        SaConfig(name="x", spi=300, direction=Direction.INBOUND, src=H1, dst=H2,
                 enc_alg=EncAlg.AES_CBC, enc_key=bytes(16), integ_alg=IntegAlg.NONE)
    with pytest.raises(ModelError):
        SaConfig(name="x", spi=300, direction=Direction.INBOUND, src=H1, dst=H2,
                 enc_alg=EncAlg.AES_GCM_16, enc_key=bytes(16))
    with pytest.raises(ModelError):
        SaConfig.from_dict({"name": "x"})
