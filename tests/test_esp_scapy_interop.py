"""Interop: our ESP against scapy's SecurityAssociation, an implementation we did not write."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw
from test_esp_helpers import sa_pair

from nsf_agent.userspace.esp import (
    SaState,
    decapsulate,
    encapsulate_packet,
    split_outer,
)
from nsf_agent.userspace.model import EncAlg, IntegAlg, Mode, SaConfig, UdpEncap

SCAPY_ENC = {EncAlg.AES_GCM_16: "AES-GCM", EncAlg.AES_CBC: "AES-CBC", EncAlg.NULL: "NULL"}
SCAPY_AUTH = {IntegAlg.NONE: None, IntegAlg.HMAC_SHA2_256_128: "SHA2-256-128",
              IntegAlg.HMAC_SHA2_384_192: "SHA2-384-192",
              IntegAlg.HMAC_SHA2_512_256: "SHA2-512-256"}


def scapy_sa(cfg: SaConfig, *, esn_high: int = 0) -> SecurityAssociation:
    """scapy's view of one of our SAs (GCM key material already ends with the salt)."""
    ip_cls = IP if cfg.src.version == 4 else IPv6
    nat_t = None
    if cfg.encap is not None:
        nat_t = UDP(sport=cfg.encap.sport, dport=cfg.encap.dport, chksum=0)
    return SecurityAssociation(
        ESP, spi=cfg.spi, crypt_algo=SCAPY_ENC[cfg.enc_alg], crypt_key=cfg.enc_key or None,
        auth_algo=SCAPY_AUTH[cfg.integ_alg], auth_key=cfg.integ_key or None,
        tunnel_header=ip_cls(src=str(cfg.src), dst=str(cfg.dst))
        if cfg.mode is Mode.TUNNEL else None,
        nat_t_header=nat_t, esn_en=cfg.esn, esn=esn_high)


def inner(mode: Mode, cfg: SaConfig, proto: str = "tcp") -> IP:
    src, dst = ("198.51.100.7", "203.0.113.9") if mode is Mode.TUNNEL else \
        (str(cfg.src), str(cfg.dst))
    l4 = TCP(sport=40000, dport=5201, flags="PA", seq=1000) if proto == "tcp" else \
        ICMP(id=7, seq=1)
    return IP(bytes(IP(src=src, dst=dst, id=99, ttl=63) / l4 / Raw(b"interop" * 20)))


CASES = [(alg, mode) for alg in ("gcm128", "gcm256", "cbc128-sha256", "cbc256-sha384",
                                 "cbc192-sha512", "null-sha256")
         for mode in (Mode.TUNNEL, Mode.TRANSPORT)]


@pytest.mark.parametrize(("alg", "mode"), CASES)
def test_we_encrypt_scapy_decrypts(alg: str, mode: Mode) -> None:
    out_cfg, _ = sa_pair(alg, mode)
    ours = SaState(out_cfg)
    theirs = scapy_sa(out_cfg)
    pkt = inner(mode, out_cfg)
    for seq in range(1, 4):
        wire = IP(encapsulate_packet(ours, bytes(pkt)))
        assert wire[ESP].spi == out_cfg.spi and wire[ESP].seq == seq
        plain = theirs.decrypt(wire)
        if mode is Mode.TUNNEL:
            assert bytes(plain) == bytes(pkt)
        else:
            assert plain[IP].src == pkt.src and plain[IP].dst == pkt.dst
            assert bytes(plain[TCP]) == bytes(pkt[TCP])


@pytest.mark.parametrize(("alg", "mode"), CASES)
def test_scapy_encrypts_we_decrypt(alg: str, mode: Mode) -> None:
    _, in_cfg = sa_pair(alg, mode)
    ours = SaState(in_cfg)
    theirs = scapy_sa(in_cfg)
    pkt = inner(mode, in_cfg, "icmp")
    for seq in (1, 2, 5, 3):
        wire = bytes(theirs.encrypt(pkt, seq_num=seq))
        src, dst, esp = split_outer(wire)
        got = decapsulate(ours, esp, ipaddress.ip_address(src), ipaddress.ip_address(dst))
        if mode is Mode.TUNNEL:
            assert got == bytes(pkt)
        else:
            assert IP(got)[ICMP] == pkt[ICMP]
            assert IP(got).src == pkt.src and IP(got).proto == 1
    assert ours.replay.top == 5


@pytest.mark.parametrize("alg", ["gcm128", "cbc128-sha256"])
def test_esn_interop_both_ways(alg: str) -> None:
    out_cfg, in_cfg = sa_pair(alg, esn=True)
    ours_tx, ours_rx = SaState(out_cfg), SaState(in_cfg)
    ours_tx.seq = (3 << 32) + 9  # next packet: high bits 3, low bits 10
    wire = IP(encapsulate_packet(ours_tx, bytes(inner(Mode.TUNNEL, out_cfg))))
    assert wire[ESP].seq == 10
    assert bytes(scapy_sa(out_cfg, esn_high=3).decrypt(wire)) == \
        bytes(inner(Mode.TUNNEL, out_cfg))
    # scapy sends with high bits 3; our receiver sits at the same place in the space
    ours_rx.replay.top = (3 << 32) + 1
    pkt = inner(Mode.TUNNEL, in_cfg)
    sent = bytes(scapy_sa(in_cfg, esn_high=3).encrypt(pkt, seq_num=20))
    assert decapsulate(ours_rx, split_outer(sent)[2]) == bytes(pkt)
    assert ours_rx.replay.top == (3 << 32) + 20


def test_udp_encap_interop() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", encap=UdpEncap(4500, 4500))
    pkt = inner(Mode.TUNNEL, out_cfg)
    wire = IP(encapsulate_packet(SaState(out_cfg), bytes(pkt)))
    assert wire[UDP].dport == 4500
    assert bytes(scapy_sa(out_cfg).decrypt(wire)) == bytes(pkt)
    sent = bytes(scapy_sa(in_cfg).encrypt(pkt, seq_num=1))
    assert IP(sent)[UDP].dport == 4500
    assert decapsulate(SaState(in_cfg), split_outer(sent)[2]) == bytes(pkt)


def test_scapy_rejects_our_packet_when_tampered() -> None:
    """Guards the interop tests themselves: scapy really checks the ICV we produce."""
    from scapy.layers.ipsec import IPSecIntegrityError
    out_cfg, _ = sa_pair("cbc128-sha256")
    raw = bytearray(encapsulate_packet(SaState(out_cfg), bytes(inner(Mode.TUNNEL, out_cfg))))
    raw[-20] ^= 1
    with pytest.raises(IPSecIntegrityError):
        scapy_sa(out_cfg).decrypt(IP(bytes(raw)))


@pytest.mark.parametrize("encap", [False, True])
def test_big_esp_fragmented_then_reassembled_decrypts_with_scapy(encap: bool) -> None:
    """A whole TCP super-packet as one ESP packet, IP-fragmented on the wire (as the data
    path's big-ESP mode sends it): scapy reassembles the fragments and decrypts the result."""
    from scapy.layers.inet import defragment, fragment

    out_cfg, in_cfg = sa_pair("gcm128", Mode.TUNNEL,
                              encap=UdpEncap(4500, 4500) if encap else None)
    ours = SaState(out_cfg)
    big = IP(bytes(IP(src="198.51.100.7", dst="203.0.113.9") /
                   TCP(sport=40000, dport=5201, flags="A", seq=1) / Raw(bytes(60_000))))
    wire = IP(encapsulate_packet(ours, bytes(big), count=45))
    assert ours.counters.packets == 45 and ours.counters.bytes == len(big)
    frags = fragment(wire, fragsize=1480)
    assert len(frags) > 40
    (whole,) = defragment(frags)
    got = scapy_sa(out_cfg).decrypt(IP(bytes(whole)))
    assert bytes(got[IP]) == bytes(big)
    # and our receiving side opens the reassembled packet too
    _, _, esp = split_outer(bytes(whole))
    assert decapsulate(SaState(in_cfg), esp) == bytes(big)
