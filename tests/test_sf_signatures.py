"""The Suricata-subset rule parser and the Hyperscan signature engine, on packets built with
scapy (unit level; the namespace tests run them on real traffic)."""

from __future__ import annotations

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from nsf_agent.functions import appid, packet
from nsf_agent.functions.rules import RuleSyntaxError, parse_rule, parse_rules
from nsf_agent.functions.signatures import SignatureEngine


def pkt(p) -> packet.Packet:  # type: ignore[no-untyped-def]
    out = packet.parse(bytes(p))
    assert out is not None
    return out


def test_parse_rule_fields() -> None:
    r = parse_rule('alert tcp 192.0.2.0/24 any -> [198.51.100.1,198.51.100.2] 80:90 '
                   '(msg:"evil \\"x\\"; y"; content:"ab|00 FF|c"; nocase; offset:2; depth:9; '
                   'sid:1000001; rev:2; classtype:trojan; reclassify:"needs-dpi";)')
    assert r.action == "alert" and r.sid == 1000001 and r.msg == 'evil "x"; y'
    c = r.contents[0]
    assert c.pattern == b"ab\x00\xffc" and c.nocase and c.offset == 2 and c.depth == 9
    assert r.dport.match(85) and not r.dport.match(91) and r.reclassify == "needs-dpi"


@pytest.mark.parametrize(("text", "reason"), [
    ("alert tcp any any -> any any (msg:\"x\";)", "missing sid"),
    ("block tcp any any -> any any (sid:1;)", "unknown action"),
    ("alert tcp any any -> any any (content:\"a|4\"; sid:1;)", "unterminated"),
    ("alert tcp any any -> any any (content:\"a|4g|\"; sid:1;)", "bad hex"),
    ("alert tcp any any -> any any (nocase; sid:1;)", "must follow a content"),
    ("alert tcp any any -> any any (pcre:\"/x/\"; sid:1;)", "unsupported keyword"),
    ("alert tcp any any -> any any (flow:only_stream; sid:1;)", "unsupported flow option"),
    ("alert tcp any any -> any any (flow:to_server,to_client; sid:1;)", "both directions"),
    ("alert tcp 300.1.1.1 any -> any any (sid:1;)", "bad address"),
    ("alert tcp any 70000 -> any any (sid:1;)", "bad port"),
    ("alert tcp any any -> any any (sid:1)", "not terminated"),
    ("alert tcp any any any any (sid:1;)", "expected"),
    ("alert icmp any 5 -> any any (sid:1;)", "no ports"),
    ("alert tcp any any -> any any (next-function:\"nope\"; sid:1;)", "not a function type"),
])
def test_bad_rules_name_the_reason(text: str, reason: str) -> None:
    with pytest.raises(RuleSyntaxError) as exc:
        parse_rules("# comment\n\n" + text)
    assert reason in str(exc.value) and "line 3" in str(exc.value)


def test_duplicate_sid() -> None:
    with pytest.raises(RuleSyntaxError, match="sid 5 is already used on line 1"):
        parse_rules("alert ip any any -> any any (sid:5;)\nalert ip any any -> any any (sid:5;)")


def test_engine_content_offset_depth_nocase() -> None:
    eng = SignatureEngine.from_text(
        'alert udp any any -> any 9999 (msg:"sig"; content:"EVIL"; nocase; offset:4; depth:8; '
        'sid:10;)\ndrop tcp any any -> any 80 (msg:"two"; content:"GET"; content:"/bad"; sid:11;)',
        "ips")
    hit = eng.inspect(pkt(IP(src="192.0.2.1", dst="198.51.100.1") / UDP(sport=1, dport=9999)
                          / b"xxxxevil"))
    assert [m.rule.sid for m in hit.matches] == [10] and not hit.drop
    assert not eng.inspect(pkt(IP() / UDP(dport=9999) / b"evilxxxxx")).matches  # offset
    assert not eng.inspect(pkt(IP() / UDP(dport=9999) / b"xxxxxxxxxEVIL")).matches  # depth
    assert not eng.inspect(pkt(IP() / UDP(dport=9998) / b"xxxxEVIL")).matches  # port
    d = eng.inspect(pkt(IP() / TCP(dport=80) / b"GET /bad HTTP/1.1\r\n\r\n"))
    assert d.drop and d.matches[0].rule.sid == 11
    assert not eng.inspect(pkt(IP() / TCP(dport=80) / b"GET /good HTTP/1.1\r\n\r\n")).matches


def test_ids_does_not_drop_and_pass_wins() -> None:
    eng = SignatureEngine.from_text(
        'drop udp any any -> any any (content:"bad"; sid:1;)\n'
        'pass udp 192.0.2.9 any -> any any (sid:2;)', "ids")
    v = eng.inspect(pkt(IP(src="192.0.2.1") / UDP() / b"bad"))
    assert not v.drop and v.matches
    assert not eng.inspect(pkt(IP(src="192.0.2.9") / UDP() / b"bad")).matches


def test_alerts_suppressed_per_flow_and_sid() -> None:
    eng = SignatureEngine.from_text('alert udp any any -> any any (content:"x"; sid:1;)', "ids")
    p = pkt(IP() / UDP(sport=5, dport=6) / b"x")
    assert eng.inspect(p, 100.0).matches[0].reported
    assert not eng.inspect(p, 100.5).matches[0].reported
    assert eng.inspect(p, 101.6).matches[0].reported
    assert eng.sid_hits[1] == 3


def test_dpi_identifies_http_tls_dns_and_sticky_buffers() -> None:
    from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(
        servernames=[ServerName(servername=b"www.Example.org")])])])
    assert appid.tls_sni(bytes(hello)) == appid.AppInfo("tls", "www.example.org")
    assert appid.http_host(b"GET / HTTP/1.1\r\nHost: a.test:8080\r\n\r\n") == \
        appid.AppInfo("http", "a.test")
    q = IP() / UDP(sport=3333, dport=53) / DNS(rd=1, qd=DNSQR(qname="Bad.Example.com"))
    assert appid.identify(pkt(q)) == appid.AppInfo("dns", "bad.example.com")
    eng = SignatureEngine.from_text(
        'drop dns any any -> any any (msg:"bad domain"; dns.query; content:"example.com"; '
        'sid:7; next-function:"ips";)\n'
        'alert tls any any -> any any (tls.sni; content:"example.org"; sid:8;)', "ips")
    v = eng.inspect(pkt(q))
    assert v.drop and v.new_app and v.matches[0].rule.next_function == "ips"
    t = eng.inspect(pkt(IPv6(src="2001:db8::1") / TCP(sport=4000, dport=443) / bytes(hello)))
    assert [m.rule.sid for m in t.matches] == [8] and t.app == appid.AppInfo("tls",
                                                                            "www.example.org")
    # a later packet of the same flow carries the flow's application
    later = eng.inspect(pkt(IPv6(src="2001:db8::1") / TCP(sport=4000, dport=443) / b"data"))
    assert later.app is not None and later.app.name == "www.example.org" and not later.new_app


def test_flow_direction_and_established() -> None:
    eng = SignatureEngine.from_text(
        'alert tcp any any -> any any (msg:"req"; flow:established,to_server; content:"GET"; '
        'sid:1;)\nalert tcp any any -> any any (msg:"resp"; flow:from_server; content:"200"; '
        'sid:2;)', "ids")
    c, s = "192.0.2.1", "198.51.100.1"
    syn = pkt(IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="S"))
    synack = pkt(IP(src=s, dst=c) / TCP(sport=80, dport=4000, flags="SA"))
    assert not eng.inspect(syn).matches and not eng.inspect(synack).matches
    req = pkt(IP(src=c, dst=s) / TCP(sport=4000, dport=80, flags="PA") / b"GET / HTTP/1.1")
    assert [m.rule.sid for m in eng.inspect(req).matches] == [1]
    resp = pkt(IP(src=s, dst=c) / TCP(sport=80, dport=4000, flags="PA") / b"HTTP/1.1 200 GET")
    assert [m.rule.sid for m in eng.inspect(resp).matches] == [2]  # not to_server
    # a flow seen one way only is not established
    lone = pkt(IP(src=c, dst=s) / TCP(sport=4001, dport=80, flags="PA") / b"GET /")
    assert not eng.inspect(lone).matches
    # a SYN-ACK seen first: its receiver is the client
    eng2 = SignatureEngine.from_text('alert tcp any any -> any any (flow:to_server; sid:3;)',
                                     "ids")
    eng2.inspect(pkt(IP(src=s, dst=c) / TCP(sport=80, dport=4002, flags="SA")))
    assert eng2.inspect(pkt(IP(src=c, dst=s) / TCP(sport=4002, dport=80, flags="A"))).matches
