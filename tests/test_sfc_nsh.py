"""NSH/GRE codec against decoders we did not write: scapy's NSH layer (encode and decode
both ways) and tshark's NSH dissector on pcap files."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from scapy.contrib.nsh import NSH, NSHTLV
from scapy.layers.inet import ICMP, IP, TCP
from scapy.utils import wrpcap

from nsf_agent.sfc import nsh
from nsf_agent.sfc.nsh import Nsh, Tlv

INNER = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / TCP(sport=1234, dport=80))


def md1(spi: int = 42, si: int = 255, ttl: int = 63) -> Nsh:
    return Nsh(spi=spi, si=si, ttl=ttl, context=bytes(range(16)))


def md2() -> Nsh:
    return Nsh(spi=0xABCDE, si=7, ttl=5, md_type=2, oam=True,
               tlvs=[nsh.reclassify_tlv("ddos-suspected"),
                     nsh.trace_tlv([(1, 255), (2, 254)]), Tlv(0x0102, 9, b"")])


def test_md1_matches_scapy_both_ways() -> None:
    ours = md1(0x123456, 200, 17).encode()
    theirs = NSH(bytes(NSH(spi=0x123456, si=200, ttl=17, mdtype=1, nextproto=1,
                           context_header=bytes(range(16)))))
    assert ours == bytes(theirs)[:24]
    p = NSH(ours + INNER)
    assert (p.ver, p.ttl, p.length, p.mdtype, p.nextproto, p.spi, p.si) == (
        0, 17, 6, 1, 1, 0x123456, 200)
    assert p.context_header == bytes(range(16))
    assert p.payload.dst == "203.0.113.10"
    got, off = nsh.decode(bytes(theirs))
    assert (got.spi, got.si, got.ttl, got.context, off) == (0x123456, 200, 17, bytes(range(16)), 24)


def test_md2_matches_scapy_both_ways() -> None:
    n = md2()
    raw = n.encode()
    p = NSH(raw + INNER)
    assert (p.mdtype, p.oam, p.ttl, p.spi, p.si, p.length) == (2, 1, 5, 0xABCDE, 7, len(raw) // 4)
    tlvs = p.vlch
    assert [(t.class_, t.type, t.length) for t in tlvs] == [
        (0xFFF6, 1, 14), (0xFFF6, 2, 8), (0x0102, 9, 0)]
    assert b"".join(w.to_bytes(4, "big") for w in tlvs[0].metadata)[:14] == b"ddos-suspected"
    built = bytes(NSH(mdtype=2, oam=1, ttl=5, spi=0xABCDE, si=7, nextproto=1,
                      vlch=[NSHTLV(class_=0x0102, type=9, length=0)]))
    got, off = nsh.decode(built)
    assert got.tlvs == [Tlv(0x0102, 9, b"")] and off == 12 and got.oam
    back, _ = nsh.decode(raw)
    assert back.tlvs == n.tlvs
    trace = back.tlv(nsh.MD_CLASS_I2NSF, nsh.TLV_RSP_TRACE)
    assert nsh.trace_entries(trace) == [(1, 255), (2, 254)]


def test_peek_and_in_place_rewrite_agree_with_decode() -> None:
    for n in (md1(), md2()):
        buf = bytearray(nsh.GRE_NSH + n.encode() + INNER)
        proto, off = nsh.gre_decode(buf)
        assert proto == nsh.ETHERTYPE_NSH and off == 4
        spi, si, ttl, hlen, md = nsh.peek(buf, off)
        assert (spi, si, ttl, hlen, md) == (n.spi, n.si, n.ttl, n.header_len(), n.md_type)
        nsh.set_ttl_si(buf, off, ttl - 1, si - 1)
        got, poff = nsh.decode(buf, off)
        assert (got.ttl, got.si, got.oam) == (n.ttl - 1, n.si - 1, n.oam)
        assert bytes(buf[poff:]) == INNER
        assert NSH(bytes(buf[off:])).ttl == n.ttl - 1


@pytest.mark.parametrize(("mutate", "err"), [
    (lambda b: b.__setitem__(0, b[0] | 0x40), nsh.BadVersion),
    (lambda b: b.__setitem__(1, (b[1] & 0xC0) | 40), nsh.BadLength),      # beyond the packet
    (lambda b: b.__setitem__(1, (b[1] & 0xC0) | 1), nsh.BadLength),       # below the base
    (lambda b: b.__setitem__(2, 0x7), nsh.BadMdType),
    (lambda b: b.__setitem__(11, 0x7F), nsh.TlvOverrun),                   # first TLV length
    (lambda b: b.__delitem__(slice(6, None)), nsh.Truncated),
])
def test_malformed_headers_are_typed(mutate, err) -> None:  # type: ignore[no-untyped-def]
    buf = bytearray(md2().encode())
    mutate(buf)
    with pytest.raises(err):
        nsh.decode(buf)
    with pytest.raises(err):
        nsh.peek(buf, 0)
    assert issubclass(err, nsh.NshError) and err.reason


def test_md1_with_wrong_length_and_gre_errors() -> None:
    buf = bytearray(md1().encode() + bytes(8))
    buf[1] = (buf[1] & 0xC0) | 8
    with pytest.raises(nsh.BadLength):
        nsh.decode(buf)
    with pytest.raises(nsh.GreError):
        nsh.gre_decode(b"\x00\x01\x89\x4f")       # version 1
    proto, off = nsh.gre_decode(b"\xb0\x00\x89\x4f" + bytes(12))  # C, K and S present
    assert (proto, off) == (0x894F, 16)
    with pytest.raises(ValueError):
        Nsh(spi=1 << 24, si=1).encode()
    with pytest.raises(ValueError):
        Tlv(1, 1, bytes(128)).encode()


def tshark_json(path: Path) -> list[dict]:
    """tshark's JSON; repeated fields (one per MD2 TLV) become lists, not overwritten keys."""
    out = subprocess.run(["tshark", "-r", str(path), "-T", "json", "--no-duplicate-keys"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def flat(layer: object) -> dict[str, object]:
    """Every key → value of a tshark JSON layer, nested trees flattened."""
    res: dict[str, object] = {}

    def walk(x: object) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if isinstance(v, (dict, list)):
                    walk(v)
                else:
                    res.setdefault(k, v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(layer)
    return res


@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark (apt-get install tshark)")
def test_tshark_decodes_our_gre_nsh_md1_and_md2(tmp_path: Path) -> None:
    pkts = []
    for n in (md1(0x10, 254, 62), md2()):
        pkts.append(IP(src="192.0.2.1", dst="192.0.2.2", proto=47)
                    / nsh.encapsulate(n, bytes(IP(src="198.51.100.10", dst="203.0.113.10")
                                               / ICMP())))
    f = tmp_path / "nsh.pcap"
    wrpcap(str(f), pkts)
    frames = tshark_json(f)
    assert len(frames) == 2
    layers = [fr["_source"]["layers"] for fr in frames]
    for lay in layers:
        assert "gre" in lay and "nsh" in lay
        assert flat(lay["gre"])["gre.proto"] == "0x894f"
        assert "icmp" in lay  # tshark found the inner IPv4 packet after the NSH
    a, b = flat(layers[0]["nsh"]), flat(layers[1]["nsh"])
    def fields(d: dict) -> tuple[int, ...]:
        return tuple(int(str(d[k]), 0) for k in ("nsh.spi", "nsh.si", "nsh.ttl", "nsh.mdtype"))

    assert fields(a) == (0x10, 254, 62, 1)
    assert fields(b) == (0xABCDE, 7, 5, 2)
    md = layers[1]["nsh"]
    assert [int(c, 0) for c in md["nsh.metadataclass"]] == [0xFFF6, 0xFFF6, 0x0102]
    assert [int(t, 0) for t in md["nsh.metadatatype"]] == [1, 2, 9]
    assert [int(n, 0) for n in md["nsh.metadatalen"]] == [14, 8, 0]

