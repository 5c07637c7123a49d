"""The SFC packet logic without sockets (Engine): what the data path does with each packet."""

from __future__ import annotations

import time

from scapy.contrib.nsh import NSH
from scapy.layers.inet import ICMP, IP, TCP

from nsf_agent.sfc import nsh
from nsf_agent.sfc.engine import Engine
from nsf_agent.sfc.model import (
    ClassifierRule,
    Match,
    NextHop,
    PortRange,
    ProxyEntry,
    ReclassifyRule,
    SfcConfig,
    SffEntry,
)

LOC = "192.0.2.2"
SF_MAC = "02:00:00:00:00:05"


def tcp(sport: int = 1000, dport: int = 80, src: str = "198.51.100.10") -> bytes:
    return bytes(IP(src=src, dst="203.0.113.10") / TCP(sport=sport, dport=dport))


def engine(**kw) -> Engine:  # type: ignore[no-untyped-def]
    cfg = SfcConfig(sff_id=2, locator=LOC, **kw)
    cfg.check()
    e = Engine()
    e.load(cfg, set(), {"i0": b"\x02" * 6})
    return e


def gre(h: nsh.Nsh, inner: bytes) -> bytearray:
    return bytearray(nsh.encapsulate(h, inner))


def test_classifier_first_matching_rule_in_order_pushes_nsh() -> None:
    e = engine(rules=[
        ClassifierRule("web", 20, Match(protocol=6, dport=PortRange(80, 80)), 10, 255, "192.0.2.9"),
        ClassifierRule("any", 30, Match(src="198.51.100.0/24"), 11, 200, "192.0.2.9", ttl=9),
        ClassifierRule("ssh", 10, Match(dport=PortRange(22, 22)), 12, 255, "192.0.2.9"),
    ])
    assert e.classify(tcp(dport=80), "a") and e.classify(tcp(dport=443), "a")
    assert e.classify(tcp(dport=22), "a")
    assert not e.classify(tcp(dport=443, src="192.0.2.200"), "a")
    spis = [NSH(p[4:]).spi for p, _ in e.out_gre]
    assert spis == [10, 11, 12]
    h = NSH(e.out_gre[1][0][4:])
    assert (h.si, h.ttl, h.nextproto) == (200, 9, 1)
    assert e.counters["unmatched"] == 1
    assert e.stats()["rules"]["web"][0] == 1


def test_sff_forwards_with_ttl_minus_one_and_keeps_flows_on_one_hop() -> None:
    hops = (NextHop("192.0.2.3", "sf", 3), NextHop("192.0.2.4", "sf", 1))
    e = engine(table=[SffEntry(10, 255, hops)])
    seen: dict[int, set[str]] = {}
    for port in range(200):
        for _ in range(2):
            e.sff(gre(nsh.Nsh(spi=10, si=255, ttl=20), tcp(sport=port)), 4)
            p, dst = e.out_gre.pop()
            seen.setdefault(port, set()).add(dst)
            assert NSH(p[4:]).ttl == 19 and NSH(p[4:]).si == 255
    assert all(len(v) == 1 for v in seen.values())            # a flow stays on one hop
    share = sum(1 for v in seen.values() if "192.0.2.3" in v) / len(seen)
    assert 0.6 < share < 0.9                                   # weights 3:1


def test_ttl_expiry_terminate_si_zero_and_miss_hold_release() -> None:
    e = engine(table=[SffEntry(10, 250, (NextHop("192.0.2.3"),)),
                      SffEntry(10, 249, (NextHop(None, "terminate"),))])
    e.sff(gre(nsh.Nsh(spi=10, si=250, ttl=1), tcp()), 4)
    assert e.drops["ttl-expired"] == 1 and e.events[-1]["event"] == "sff-ttl-expired"
    e.sff(gre(nsh.Nsh(spi=10, si=249), tcp()), 4)
    e.sff(gre(nsh.Nsh(spi=10, si=0), tcp()), 4)
    assert e.out_ip == [tcp(), tcp()]
    e.sff(gre(nsh.Nsh(spi=10, si=248), tcp()), 4)
    e.sff(gre(nsh.Nsh(spi=10, si=248), tcp(sport=2)), 4)
    assert e.held == 2 and [ev["event"] for ev in e.events].count("sff-table-miss") == 1
    cfg = SfcConfig(sff_id=2, locator=LOC, table=[
        *e.cfg.table, SffEntry(10, 248, (NextHop("192.0.2.7"),))])
    e.load(cfg, set(), {})
    assert e.held == 0 and [d for _, d in e.out_gre] == ["192.0.2.7", "192.0.2.7"]
    e.sff(gre(nsh.Nsh(spi=99, si=1), tcp()), 4)
    e.expire(time.monotonic() + 10)
    assert e.drops["table-miss"] == 1 and e.held == 0


def test_md2_trace_grows_and_a_revisit_is_a_loop() -> None:
    e = engine(table=[SffEntry(10, 255, (NextHop("192.0.2.3"),))])
    e.sff(gre(nsh.Nsh(spi=10, si=255, md_type=2, tlvs=[nsh.trace_tlv([(1, 255)])]), tcp()), 4)
    out, _ = e.out_gre.pop()
    h, _ = nsh.decode(out, 4)
    assert nsh.trace_entries(h.tlv(nsh.MD_CLASS_I2NSF, nsh.TLV_RSP_TRACE)) == [(1, 255), (2, 255)]
    e.sff(bytearray(out), 4)          # comes back to us at the same SI: a loop
    assert e.drops["loop"] == 1 and e.events[-1]["event"] == "sff-loop-detected"


def test_proxy_strips_restores_si_minus_one_and_tags_after_a_result() -> None:
    e = engine(
        table=[SffEntry(10, 255, (NextHop(LOC, "proxy"),)),
               SffEntry(10, 254, (NextHop("192.0.2.6"),))],
        proxies=[ProxyEntry("p", 10, 255, "i0", "o0", SF_MAC)],
        reclassify=[ReclassifyRule("ddos-suspected", 20, 255, "192.0.2.8")])
    inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(id=7))
    e.sff(gre(nsh.Nsh(spi=10, si=255, ttl=30, context=bytes(range(16))), inner), 4)
    frame = e.out_frames["i0"].pop()
    assert frame[:6] == bytes.fromhex("020000000005") and frame[12:14] == b"\x08\x00"
    assert frame[14:] == inner
    e.from_sf(e.proxy_by_name["p"], frame[6:12] + frame[:6] + frame[12:])
    out, dst = e.out_gre.pop()
    h = NSH(out[4:])
    assert (dst, h.spi, h.si, h.ttl, h.context_header) == ("192.0.2.6", 10, 254, 28,
                                                          bytes(range(16)))
    e.inspection_result(e.proxy_by_name["p"], {
        "instance": "sf", "type": "ddos", "sid": 1, "msg": "m", "verdict": "alert",
        "flow": {"src": "198.51.100.10", "dst": "203.0.113.10", "proto": 1},
        "action": {"reclassify": "ddos-suspected"}})
    assert e.events[-1]["event"] == "inspection-result"
    e.from_sf(e.proxy_by_name["p"], frame)
    out, dst = e.out_gre.pop()
    assert (dst, NSH(out[4:]).spi, NSH(out[4:]).si) == ("192.0.2.8", 20, 255)
    assert e.counters["reclassified"] == 1


def test_malformed_packets_are_counted_by_reason() -> None:
    e = engine(table=[SffEntry(10, 255, (NextHop("192.0.2.3"),))])
    good = gre(nsh.Nsh(spi=10, si=255), tcp())
    bad = bytearray(good)
    bad[4] |= 0x40
    e.receive_gre(bad, 0)
    short = bytearray(good[:10])
    e.receive_gre(short, 0)
    e.receive_gre(bytearray(b"\x00\x00\x08\x00") + tcp(), 0)
    e.receive_gre(bytearray(b"\x00\x07\x89\x4f") + good[4:], 0)
    beyond = bytearray(good[:40])
    beyond[5] = (beyond[5] & 0xC0) | 30
    e.receive_gre(beyond, 0)
    assert dict(e.drops) == {"bad-version": 1, "truncated": 1, "not-nsh": 1, "bad-gre": 1,
                             "bad-length": 1}
    e.receive_gre(bytearray(b"\xb0\x00\x89\x4f" + bytes(12)) + good[4:], 0)   # C, K, S bits
    assert len(e.out_gre) == 1 and e.out_gre[0][0][:4] == nsh.GRE_NSH


def test_adding_a_next_hop_moves_only_the_flows_it_takes() -> None:
    two = (NextHop("192.0.2.3", "sf", 1), NextHop("192.0.2.4", "sf", 1))
    three = (*two, NextHop("192.0.2.5", "sf", 1))

    def spread(hops: tuple[NextHop, ...]) -> dict[int, str]:
        e = engine(table=[SffEntry(10, 255, hops)])
        out = {}
        for port in range(600):
            e.sff(gre(nsh.Nsh(spi=10, si=255), tcp(sport=port)), 4)
            out[port] = e.out_gre.pop()[1]
        return out

    before, after = spread(two), spread(three)
    moved = [p for p in before if before[p] != after[p]]
    assert all(after[p] == "192.0.2.5" for p in moved)         # only to the new hop
    assert 0.2 < len(moved) / len(before) < 0.45                # about a third of the flows


def test_one_sf_instance_behind_two_paths_returns_each_flow_to_its_path() -> None:
    e = engine(
        table=[SffEntry(10, 254, (NextHop("192.0.2.6"),)),
               SffEntry(20, 199, (NextHop("192.0.2.7"),))],
        proxies=[ProxyEntry("p10", 10, 255, "i0", "o0", SF_MAC),
                 ProxyEntry("p20", 20, 200, "i0", "o0", SF_MAC)])
    a = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(id=1))
    b = bytes(IP(src="198.51.100.11", dst="203.0.113.10") / ICMP(id=2))
    e.sff(gre(nsh.Nsh(spi=10, si=255), a), 4)
    e.sff(gre(nsh.Nsh(spi=20, si=200), b), 4)
    fb, fa = e.out_frames["i0"].pop(), e.out_frames["i0"].pop()
    for fr in (fb, fa):                        # both come back on the shared return veth
        e.from_sf(e.proxy_by_name["p10"], fr)
    got = {(NSH(p[4:]).spi, NSH(p[4:]).si, d) for p, d in e.out_gre}
    assert got == {(10, 254, "192.0.2.6"), (20, 199, "192.0.2.7")}
    assert e.proxy_by_name["p20"].from_sf == 1 and e.proxy_by_name["p10"].from_sf == 1


def test_a_chain_of_local_proxies_keeps_the_sff_rules_between_them() -> None:
    e = engine(
        table=[SffEntry(10, 255, (NextHop(LOC, "proxy"),)),
               SffEntry(10, 254, (NextHop(LOC, "proxy"),)),
               SffEntry(10, 253, (NextHop("192.0.2.6"),))],
        proxies=[ProxyEntry("p0", 10, 255, "i0", "o0", SF_MAC),
                 ProxyEntry("p1", 10, 254, "i1", "o1", "02:00:00:00:00:06")])
    inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(id=3))
    e.sff(gre(nsh.Nsh(spi=10, si=255, ttl=63), inner), 4)
    e.from_sf(e.proxy_by_name["p0"], e.out_frames["i0"].pop())
    fr = e.out_frames["i1"].pop()
    assert fr[:6] == bytes.fromhex("020000000006") and fr[14:] == inner
    e.from_sf(e.proxy_by_name["p1"], fr)
    out, dst = e.out_gre.pop()
    assert (dst, NSH(out[4:]).si, NSH(out[4:]).ttl) == ("192.0.2.6", 253, 60)  # TTL-1 per SFF
    assert [x[2] for x in e.stats()["entries"]] == [1, 1, 1]
    # TTL running out between two local functions: dropped and reported like anywhere else
    e.sff(gre(nsh.Nsh(spi=10, si=255, ttl=2), inner), 4)
    e.from_sf(e.proxy_by_name["p0"], e.out_frames["i0"].pop())
    assert not e.out_frames["i1"] and e.drops["ttl-expired"] == 1


def test_unclassified_packets_are_routed_with_ttl_minus_one_and_a_valid_checksum() -> None:
    from nsf_agent.sfc.datapath import _route_hop

    for ttl in (64, 2, 255):
        p = bytes(IP(src="198.51.100.10", dst="203.0.113.10", ttl=ttl, id=ttl * 77) / ICMP())
        out = _route_hop(p)
        assert out is not None
        got = IP(out)
        assert got.ttl == ttl - 1
        del got.chksum
        assert IP(bytes(got)).chksum == IP(out).chksum        # scapy recomputes the same
    assert _route_hop(bytes(IP(dst="203.0.113.10", ttl=1) / ICMP())) is None


def test_a_hostile_result_message_yields_only_valid_fields() -> None:
    e = engine(proxies=[ProxyEntry("p", 10, 255, "i0", "o0", SF_MAC)])
    e.inspection_result(e.proxy_by_name["p"], {
        "instance": "x" * 5000, "sid": -4, "msg": "m" * 5000, "verdict": "explode",
        "flow": {"src": "not-an-ip", "dst": "203.0.113.10", "proto": 999, "sport": "80"},
        "action": {"reclassify": "r" * 500, "rm -rf": 1}})
    ev = e.events[-1]
    assert len(ev["instance"]) == 255 and len(ev["msg"]) == 1024 and ev["sid"] == 0
    assert ev["verdict"] is None and ev["flow"] == {"dst": "203.0.113.10"}
    assert ev["action"] == {"reclassify": "r" * 127}
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context
    from nsf_agent.sfc.config import notification

    YangSchema(create_context(["i2nsf-sfc-nsf"])).validate_notification(notification(ev))


def test_flow_keys_of_packets_and_of_reported_flows_agree() -> None:
    import ipaddress

    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import IPv6

    from nsf_agent.sfc.engine import flow_key, key_of

    a, b = ipaddress.ip_address("198.51.100.10").packed, ipaddress.ip_address("203.0.113.10").packed
    assert flow_key(tcp(sport=5, dport=6)) == key_of(a, b, 6, 5, 6)
    assert flow_key(bytes(IP(src="198.51.100.10", dst="203.0.113.10") / UDP(sport=7, dport=8))) \
        == key_of(a, b, 17, 7, 8)
    assert flow_key(bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(id=9))) \
        == key_of(a, b, 1, 0, 0)
    frag = bytes(IP(src="198.51.100.10", dst="203.0.113.10", proto=6, frag=100) / bytes(20))
    assert flow_key(frag) == key_of(a, b, 6, 0, 0)        # a fragment has no ports
    s6, d6 = ipaddress.ip_address("2001:db8::1").packed, ipaddress.ip_address("2001:db8::2").packed
    assert flow_key(bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=1, dport=2))) \
        == key_of(s6, d6, 6, 1, 2)


def test_two_local_instances_of_one_hop_share_its_flows_by_weight() -> None:
    e = engine(
        table=[SffEntry(10, 255, (NextHop(LOC, "proxy"),)),
               SffEntry(10, 254, (NextHop("192.0.2.6"),))],
        proxies=[ProxyEntry("a", 10, 255, "i0", "o0", SF_MAC, weight=3),
                 ProxyEntry("b", 10, 255, "i1", "o1", "02:00:00:00:00:06", weight=1)])
    where: dict[int, set[str]] = {}
    for port in range(400):
        for _ in range(2):
            e.sff(gre(nsh.Nsh(spi=10, si=255), tcp(sport=port)), 4)
            for ifn in ("i0", "i1"):
                if e.out_frames[ifn]:
                    fr = e.out_frames[ifn].pop()
                    where.setdefault(port, set()).add(ifn)
                    e.from_sf(e.proxy_by_name["a" if ifn == "i0" else "b"], fr)
    assert all(len(v) == 1 for v in where.values())             # a flow stays on one
    share = sum(1 for v in where.values() if "i0" in v) / len(where)
    assert 0.6 < share < 0.9                                     # weights 3:1
    assert {NSH(p[4:]).si for p, _ in e.out_gre} == {254}
    assert e.proxy_by_name["a"].from_sf + e.proxy_by_name["b"].from_sf == 800


def test_next_function_request_steers_the_flow_onto_the_configured_path() -> None:
    e = engine(
        table=[SffEntry(10, 255, (NextHop(LOC, "proxy"),)),
               SffEntry(10, 254, (NextHop("192.0.2.6"),))],
        proxies=[ProxyEntry("p", 10, 255, "i0", "o0", SF_MAC)],
        steering=[ReclassifyRule("ips", 30, 255, "192.0.2.9")])
    inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP(id=4))
    e.inspection_result(e.proxy_by_name["p"], {
        "instance": "ids-1", "type": "ids", "sid": 2, "verdict": "alert",
        "flow": {"src": "198.51.100.10", "dst": "203.0.113.10", "proto": 1},
        "action": {"next-function": "ips"}})
    e.sff(gre(nsh.Nsh(spi=10, si=255), inner), 4)
    e.from_sf(e.proxy_by_name["p"], e.out_frames["i0"].pop())
    out, dst = e.out_gre.pop()
    assert (dst, NSH(out[4:]).spi, NSH(out[4:]).si) == ("192.0.2.9", 30, 255)
    assert e.counters["steered"] == 1 and e.stats()["steering"]["ips"][0] == 1
    # a type nobody configured: counted, the packet stays on its path
    e.load(SfcConfig(sff_id=2, locator=LOC, table=e.cfg.table, proxies=e.cfg.proxies),
           set(), {})
    e.sff(gre(nsh.Nsh(spi=10, si=255), inner), 4)
    e.from_sf(e.proxy_by_name["p"], e.out_frames["i0"].pop())
    out, dst = e.out_gre.pop()
    assert (dst, NSH(out[4:]).spi) == ("192.0.2.6", 10)
    assert e.counters["next-function-unknown"] == 1


def test_table_miss_notifications_are_bounded(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import nsf_agent.sfc.engine as eng

    now = [1000.0]
    monkeypatch.setattr(eng.time, "monotonic", lambda: now[0])   # a clock that stands still
    e = engine()
    inner = tcp()
    for spi in range(1000):                      # random SPIs: one hold queue each
        e.sff(gre(nsh.Nsh(spi=spi, si=9), inner), 4)
    misses = [ev for ev in e.events if ev["event"] == "sff-table-miss"]
    assert len(misses) == 200
    assert e.counters["table-miss-notifications-suppressed"] == 1000 - len(misses)
    e2 = engine()
    e2.cfg.hold_packets = 0                      # no hold: one per (SPI, SI) per second
    for _ in range(50):
        e2.sff(gre(nsh.Nsh(spi=5, si=9), inner), 4)
    assert len(e2.events) == 1 and e2.drops["table-miss"] == 50
    now[0] += 1.5                                # a second later: asked again
    e2.sff(gre(nsh.Nsh(spi=5, si=9), inner), 4)
    assert len(e2.events) == 2


def test_the_hold_queue_is_bounded_in_bytes_too() -> None:
    import nsf_agent.sfc.engine as eng

    e = engine()
    big = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP() / bytes(60000))
    for spi in range(400):
        e.sff(gre(nsh.Nsh(spi=spi, si=9), big), 4)
    assert e.held_bytes <= eng.HOLD_BYTES_MAX and e.held < 400
    assert e.drops["table-miss"] == 400 - e.held
    e.expire(time.monotonic() + 10)
    assert e.held == 0 and e.held_bytes == 0
