"""Leaves left out of a SAD entry take their YANG defaults (RFC 9061 ext-seq-num: false)."""

from __future__ import annotations

from lxml import etree

from nsf_agent import ikeless

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


def sad(extra: str) -> etree._Element:
    return etree.fromstring(
        f'<data xmlns="{NC}"><ipsec-ikeless xmlns="{IKELESS}"><spd><spd-entry><name>p</name>'
        "<direction>outbound</direction><reqid>1</reqid><ipsec-policy-config>"
        "<traffic-selector><local-prefix>10.0.0.1/32</local-prefix><remote-prefix>10.0.0.2/32"
        "</remote-prefix><inner-protocol>any</inner-protocol></traffic-selector>"
        "<processing-info><action>protect</action><ipsec-sa-cfg><mode>transport</mode>"
        "</ipsec-sa-cfg></processing-info></ipsec-policy-config></spd-entry></spd>"
        "<sad><sad-entry><name>a</name>"
        f"<reqid>1</reqid><ipsec-sa-config><spi>300</spi>{extra}<traffic-selector>"
        "<local-prefix>10.0.0.1/32</local-prefix><remote-prefix>10.0.0.2/32</remote-prefix>"
        "<inner-protocol>any</inner-protocol></traffic-selector><protocol-parameters>esp"
        "</protocol-parameters><mode>transport</mode></ipsec-sa-config></sad-entry></sad>"
        "</ipsec-ikeless></data>".encode())


def test_ext_seq_num_defaults_to_false() -> None:
    (entry,) = ikeless.parse(sad("")).sad
    assert entry.ext_seq_num is False
    (entry,) = ikeless.parse(sad("<ext-seq-num>true</ext-seq-num>")).sad
    assert entry.ext_seq_num is True
