"""Issue 13.5: the controller's northbound errors name the field and the expected form
(libyang's text kept in error-info); prefixes with host bits and the same prefix on both
ends of a policy are refused instead of silently changed. Real libyang schema, no server
(the northbound wiring is tested in tests/integration/test_controller_netconf.py)."""

from __future__ import annotations

import pytest
from lxml import etree

from controller.core.yang_errors import INFO_TAG, HumaneSchema, field_label
from controller.ipsec.checks import check_config, refuse_host_bits
from controller.ipsec.model import parse_config
from controller.server import MODULES
from netconf_core.errors import RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"


@pytest.fixture(scope="module")
def schemas() -> tuple[YangSchema, HumaneSchema]:
    ctx = create_context(MODULES)
    return YangSchema(ctx), HumaneSchema(ctx)


def nsf(name: str = "s1", dp: str = "192.0.2.1", pp: str = "10.1.0.0/16",
        port: str = "830", addr: str = "127.0.0.1", hk: str = "ssh-ed25519 AAAA") -> str:
    return (f"<nsf><name>{name}</name><management><address>{addr}</address><port>{port}</port>"
            f"<username>admin</username><host-key>{hk}</host-key></management>"
            f"<data-plane-address>{dp}</data-plane-address>"
            f"<protected-prefix>{pp}</protected-prefix></nsf>")


PROFILE = "<crypto-profiles><crypto-profile><name>p</name></crypto-profile></crypto-profiles>"


def data(body: str) -> etree._Element:
    return etree.fromstring(f'<data xmlns="{NC}"><flow-protection xmlns="{FP}">{body}'
                            "</flow-protection></data>")


def policy(a_prefix: str = "", b_prefix: str = "") -> str:
    ap = f"<prefix>{a_prefix}</prefix>" if a_prefix else ""
    bp = f"<prefix>{b_prefix}</prefix>" if b_prefix else ""
    return (f"<policies><policy><name>x</name><endpoint-a><nsf>s1</nsf>{ap}</endpoint-a>"
            f"<endpoint-b><nsf>s2</nsf>{bp}</endpoint-b><crypto-profile>p</crypto-profile>"
            "</policy></policies>")


CASES = [  # (configuration, words the message must hold)
    ("<nsfs>" + nsf(pp="10.1.0.0/33") + "</nsfs>",
     ["nsf 's1', protected-prefix", "'10.1.0.0/33'", "IPv4 or IPv6 prefix", "0 to 32"]),
    ("<nsfs>" + nsf(dp="192.0.2.300") + "</nsfs>",
     ["nsf 's1', data-plane-address", "'192.0.2.300'", "IPv4 or IPv6 address"]),
    ("<nsfs>" + nsf(port="70000") + "</nsfs>",
     ["nsf 's1', management/port", "'70000'", "port number from 0 to 65535"]),
    ("<nsfs>" + nsf(addr="not a host!") + "</nsfs>",
     ["management/address", "IP address or a DNS name"]),
    ("<nsfs>" + nsf(hk="rsa AAA") + "</nsfs>",
     ["management/host-key", "OpenSSH public key line", "SHA256:"]),
    ("<nsfs>" + nsf(name="-x") + "</nsfs>", ["nsf name", "'-x'", "starts with a letter"]),
    (PROFILE.replace("</name>", "</name><ext-seq-num>yes</ext-seq-num>"),
     ["crypto-profile 'p', ext-seq-num", "true or false"]),
    (PROFILE.replace("</name>", "</name><encryption-algorithm>aes</encryption-algorithm>"),
     ["crypto-profile 'p', encryption-algorithm", "'aes'", "whole number",
      "IANA IKEv2 Transform Type 1"]),
    ("<nsfs>" + nsf() + nsf("s2", "192.0.2.2", "10.2.0.0/16") + "</nsfs>" + PROFILE
     + policy().replace("<crypto-profile>p</crypto-profile>",
                        "<mode>tunel</mode><crypto-profile>p</crypto-profile>"),
     ["policy 'x', mode", "'tunel'", "one of transport, tunnel"]),
    ("<nsfs>" + nsf() + nsf("s2", "192.0.2.2", "10.2.0.0/16") + "</nsfs>" + policy(),
     ["policy 'x', crypto-profile", "'p' does not exist"]),
    ("<nsfs><nsf><name>s1</name><management><address>1.2.3.4</address><username>a"
     "</username><host-key>ssh-ed25519 AAAA</host-key></management></nsf></nsfs>",
     ["data-plane-address is missing", "mandatory"]),
]


@pytest.mark.parametrize(("body", "words"), CASES)
def test_libyang_errors_name_the_field_and_the_form(schemas: tuple[YangSchema, HumaneSchema],
                                                    body: str, words: list[str]) -> None:
    plain, humane = schemas
    with pytest.raises(RpcError) as raw:
        plain.validate_config(data(body))
    with pytest.raises(RpcError) as nice:
        humane.validate_config(data(body))
    e, r = nice.value, raw.value
    for w in words:
        assert w in e.message, (w, e.message)
    # same error otherwise: tag, path, app-tag; libyang's text in error-info
    assert (e.error_tag, e.path, e.app_tag) == (r.error_tag, r.path, r.app_tag)
    info = [i for i in e.info_xml if i.tag == INFO_TAG]
    assert [i.text for i in info] == [r.message]
    xml = etree.tostring(e.to_xml()).decode()
    assert "libyang-message" in xml and e.message in xml


def test_field_labels() -> None:
    assert field_label("/i2nsf-flow-policy:flow-protection/policies/policy[name='a b']/"
                       "endpoint-a/prefix") == "policy 'a b', endpoint-a/prefix"
    assert field_label(None) == "configuration"


def _check(body: str) -> RpcError | None:
    d = data(body)
    try:
        refuse_host_bits(d)
        check_config(parse_config(d))
    except RpcError as exc:
        return exc
    return None


def test_prefix_with_host_bits_is_refused() -> None:
    e = _check("<nsfs>" + nsf(pp="10.5.0.1/24") + nsf("s2", "192.0.2.2", "10.2.0.0/16")
               + "</nsfs>" + PROFILE + policy(b_prefix="10.2.3.4/16"))
    assert e is not None
    errs = {x.path: x for x in e.all()}
    p1 = "/i2nsf-flow-policy:flow-protection/nsfs/nsf[name='s1']/protected-prefix"
    p2 = "/i2nsf-flow-policy:flow-protection/policies/policy[name='x']/endpoint-b/prefix"
    assert set(errs) == {p1, p2}
    assert "10.5.0.1/24 has host bits set; did you mean 10.5.0.0/24?" in errs[p1].message
    assert errs[p2].app_tag == "prefix-host-bits"
    # the network address itself, a host route and IPv6 are fine
    assert _check("<nsfs>" + nsf(pp="10.5.0.0/24") + nsf("s2", "192.0.2.2", "10.2.3.4/32")
                  + "</nsfs>" + PROFILE + policy(a_prefix="2001:db8::/32",
                                                 b_prefix="2001:db9::/32")) is None


@pytest.mark.parametrize(("a", "b", "rel"), [
    ("10.1.0.0/16", "10.1.0.0/16", "is the same prefix as"),
    ("10.1.0.0/16", "10.1.2.0/24", "overlaps"),
])
def test_same_prefix_on_both_ends_is_refused(a: str, b: str, rel: str) -> None:
    e = _check("<nsfs>" + nsf() + nsf("s2", "192.0.2.2", "10.2.0.0/16") + "</nsfs>"
               + PROFILE + policy(a, b))
    assert e is not None and e.app_tag == "same-prefix-both-ends", e
    assert f"endpoint a's prefix {a} {rel} endpoint b's {b}" in e.message
    # from the NSFs' protected prefixes too
    e = _check("<nsfs>" + nsf(pp=a) + nsf("s2", "192.0.2.2", b) + "</nsfs>" + PROFILE
               + policy())
    assert e is not None and e.app_tag == "same-prefix-both-ends"
