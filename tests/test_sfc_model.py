"""The rules every SFC table consumer relies on (SfcConfig.check) and the JSON round trip."""

from __future__ import annotations

import pytest

from nsf_agent.sfc.model import (
    ClassifierRule,
    Match,
    ModelError,
    NextHop,
    PortRange,
    ProxyEntry,
    SfcConfig,
    SffEntry,
)


def cfg(**kw) -> SfcConfig:  # type: ignore[no-untyped-def]
    base = dict(
        sff_id=7, locator="192.0.2.1",
        rules=[ClassifierRule("web", 10, Match(src="198.51.100.0/24", protocol=6,
                                               dport=PortRange(80, 80), ingress="eth0"),
                              spi=10, si=255, first_hop="192.0.2.2")],
        table=[SffEntry(10, 255, (NextHop("192.0.2.3", "sf", 2), NextHop("192.0.2.4", "sf", 1))),
               SffEntry(10, 254, (NextHop(None, "terminate"),))],
        proxies=[ProxyEntry("p1", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01", "/run/p1.sock")],
    )
    base.update(kw)
    return SfcConfig(**base)  # type: ignore[arg-type]


def test_round_trip_and_interfaces() -> None:
    c = cfg()
    c.check()
    back = SfcConfig.from_dict(c.to_dict())
    assert back == c
    assert set(c.interfaces()) == {"eth0", "sfi0", "sfo0"}


@pytest.mark.parametrize(("change", "words"), [
    ({"table": [SffEntry(10, 0, (NextHop("192.0.2.3"),))]}, "SI 0"),
    ({"table": [SffEntry(10, 5, (NextHop("192.0.2.3"),)),
                SffEntry(10, 5, (NextHop("192.0.2.4"),))]}, "duplicate"),
    ({"table": [SffEntry(10, 5, (NextHop("2001:db8::1"),))]}, "address family"),
    ({"table": [SffEntry(10, 5, ())]}, "no next hop"),
    ({"table": [SffEntry(10, 5, (NextHop(None, "terminate"), NextHop("192.0.2.9")))]},
     "terminating"),
    ({"proxies": [ProxyEntry("p", 1, 0, "a", "b", "02:00:00:00:00:01")]}, "SI 0"),
    ({"proxies": [ProxyEntry("p", 1, 3, "a", "a", "02:00:00:00:00:01")]}, "one interface"),
    ({"proxies": [ProxyEntry("p", 1, 3, "a", "b", "02:00:00:00:00:01", weight=0)]}, "weight"),
])
def test_bad_tables_are_refused(change, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError) as ei:
        cfg(**change).check()
    assert words in str(ei.value)
    assert ei.value.path


def test_proxies_sharing_an_instance_must_share_it_whole() -> None:
    a = ProxyEntry("a", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01", "/run/a.sock")
    cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi0", "sfo0", "02:00:00:00:00:01")]).check()
    with pytest.raises(ModelError, match="another function instance"):
        cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi0", "sfo9", "02:00:00:00:00:01")]).check()
    cfg(proxies=[a, ProxyEntry("c", 10, 255, "sfi1", "sfo1", "02:00:00:00:00:02")]).check()
    with pytest.raises(ModelError, match="same function instance"):
        cfg(proxies=[a, ProxyEntry("c", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01")]).check()
    with pytest.raises(ModelError, match="bound by proxy"):
        cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi1", "sfo1", "02:00:00:00:00:02",
                                   "/run/a.sock")]).check()


def test_yang_and_parser_agree_on_a_configuration_using_every_node() -> None:
    from lxml import etree

    from netconf_core.errors import NC_NS
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context
    from nsf_agent.sfc import config as sfcconf

    xml = f"""<data xmlns="{NC_NS}"><sfc xmlns="{sfcconf.NS}"><classifier>
      <rule><name>r</name><order>5</order><match><source-prefix>198.51.100.0/24</source-prefix>
        <destination-prefix>203.0.113.0/24</destination-prefix><protocol>6</protocol>
        <source-ports><start>1000</start><end>2000</end></source-ports>
        <destination-ports><start>80</start><end>80</end></destination-ports><dscp>46</dscp>
        <ingress-interface>eth0</ingress-interface></match>
        <path><spi>10</spi><si>250</si><first-hop>192.0.2.2</first-hop><md-type>md2</md-type>
        <ttl>9</ttl></path></rule>
      <reclassify><result>ddos-suspected</result><spi>20</spi><first-hop>192.0.2.2</first-hop>
      </reclassify>
      <next-function><sf-type>ips</sf-type><spi>30</spi><si>200</si>
        <first-hop>192.0.2.2</first-hop></next-function></classifier>
      <forwarder><sff-id>7</sff-id><locator>192.0.2.1</locator><hold-packets>8</hold-packets>
        <hold-time>250</hold-time><table>
        <entry><spi>10</spi><si>250</si><next-hop><locator>192.0.2.3</locator><kind>sf</kind>
          <weight>3</weight></next-hop><next-hop><locator>192.0.2.4</locator></next-hop></entry>
        <entry><spi>10</spi><si>249</si><terminate/></entry></table>
        <fast-path><enabled>false</enabled><interface>eth0</interface></fast-path></forwarder>
      <proxies><proxy><name>p</name><spi>10</spi><si>250</si><to-sf-interface>sfi0</to-sf-interface>
        <from-sf-interface>sfo0</from-sf-interface><sf-mac>02:00:00:00:00:05</sf-mac>
        <weight>2</weight><result-socket>/run/p.sock</result-socket></proxy></proxies>
    </sfc></data>"""
    root = etree.fromstring(xml)
    YangSchema(create_context(["i2nsf-sfc-nsf"])).validate_config(root)
    c, fast = sfcconf.parse(root)
    c.check()
    r = c.rules[0]
    assert (r.match.sport, r.match.dport, r.match.dscp, r.md_type, r.ttl, r.si) == (
        PortRange(1000, 2000), PortRange(80, 80), 46, 2, 9, 250)
    assert [(x.result, x.spi, x.si) for x in c.reclassify] == [("ddos-suspected", 20, 255)]
    assert [(x.result, x.spi, x.si) for x in c.steering] == [("ips", 30, 200)]
    assert (c.sff_id, c.locator, c.hold_packets, c.hold_ms) == (7, "192.0.2.1", 8, 250)
    assert c.table[0].next_hops == (NextHop("192.0.2.3", "sf", 3), NextHop("192.0.2.4"))
    assert c.table[1].next_hops == (NextHop(None, "terminate"),)
    assert c.proxies[0].weight == 2 and c.proxies[0].result_socket == "/run/p.sock"
    assert fast == {"enabled": False, "interfaces": ["eth0"]}
    assert SfcConfig.from_dict(c.to_dict()) == c

