"""RFC 9061's YANG modules (ietf-i2nsf-ikec, -ike, -ikeless) as written in `yang/`.

The modules must accept XML written for RFC 9061 unchanged and reject what RFC 9061 rejects.
The positive examples in tests/data/rfc9061/ follow the RFC's appendices (IKE case
gateway-to-gateway, IKE-less host-to-host, IKE-less gateway-to-gateway); the negative cases
each break one of them in exactly one place and check that libyang names the offender.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libyang
import pytest
from libyang.util import c2str

from netconf_core.yang_context import IPSEC_MODULES, create_context, module_file, yang_dir

DATA = Path(__file__).parent / "data" / "rfc9061"
YANG = yang_dir()
REVISION = "2021-07-14"

IKE_G2G = "ike-g2g-gw1.xml"
IKELESS_H2H = "ikeless-h2h-h1.xml"
IKELESS_G2G = "ikeless-g2g-gw1.xml"


@pytest.fixture(scope="module")
def ctx() -> Iterator[libyang.Context]:
    # Ask libyang to put the data path of the offending node into its error messages, so the
    # negative cases can check *where* the data was rejected, not only why; restore after.
    libyang.configure_logging(True)
    context = create_context()
    try:
        yield context
    finally:
        context.destroy()
        libyang.configure_logging(False)


def example(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def parse_config(context: libyang.Context, xml: str) -> libyang.DNode:
    """Parse and validate `xml` as NETCONF configuration (<config> content): unknown nodes and
    state data are errors, and the whole tree is validated (mandatory, when, must, unique...)."""
    root = context.parse_data_mem(xml, "xml", strict=True, no_state=True)
    assert root is not None, "no data parsed"
    return root


def values(root: libyang.DNode, xpath: str) -> list[str]:
    """Canonical values of the leaves (or data paths of the other nodes) `xpath` selects."""
    return [
        str(node.value()) if isinstance(node, libyang.DLeaf | libyang.DLeafList) else node.path()
        for node in root.find_all(xpath)
    ]


# ---------------------------------------------------------------------------------------------
# Modules: identity, features, lint


@pytest.mark.parametrize(
    ("name", "prefix", "features"),
    [
        ("ietf-i2nsf-ikec", "nsfikec", []),
        ("ietf-i2nsf-ike", "nsfike", []),
        ("ietf-i2nsf-ikeless", "nsfikels", ["ikeless-notification"]),
    ],
)
def test_module_identity(ctx: libyang.Context, name: str, prefix: str, features: list[str]) -> None:
    mod = ctx.get_module(name)
    assert mod.implemented()
    assert c2str(mod.cdata.ns) == f"urn:ietf:params:xml:ns:yang:{name}"
    assert mod.prefix() == prefix
    assert [r.date() for r in mod.revisions()] == [REVISION]
    assert sorted(f.name() for f in mod.features()) == features
    assert all(mod.feature_state(f) for f in features), "create_context enables every feature"
    path = module_file(name)
    assert path.name == f"{name}@{REVISION}.yang"
    assert path.parent == YANG
    assert module_file(name, REVISION) == path


def test_context_loads_exactly_the_rfc9061_modules() -> None:
    assert IPSEC_MODULES == ("ietf-i2nsf-ikec", "ietf-i2nsf-ike", "ietf-i2nsf-ikeless")
    context = create_context()
    try:
        top = {
            (node.module().name(), node.keyword(), node.name())
            for name in IPSEC_MODULES
            for node in context.get_module(name).children()
        }
    finally:
        context.destroy()
    assert top == {
        ("ietf-i2nsf-ike", "container", "ipsec-ike"),
        ("ietf-i2nsf-ikeless", "container", "ipsec-ikeless"),
        ("ietf-i2nsf-ikeless", "notification", "sadb-acquire"),
        ("ietf-i2nsf-ikeless", "notification", "sadb-expire"),
        ("ietf-i2nsf-ikeless", "notification", "sadb-seq-overflow"),
        ("ietf-i2nsf-ikeless", "notification", "sadb-bad-spi"),
    }


@pytest.mark.parametrize(
    "path",
    [
        "/ietf-i2nsf-ike:ipsec-ike/pad/pad-entry/peer-authentication/pre-shared/secret",
        "/ietf-i2nsf-ike:ipsec-ike/pad/pad-entry/peer-authentication/digital-signature/private-key",
        "/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry/ipsec-sa-config/esp-sa/encryption/key",
        "/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry/ipsec-sa-config/esp-sa/encryption/iv",
        "/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry/ipsec-sa-config/esp-sa/integrity/key",
    ],
)
def test_key_material_is_default_deny_all(ctx: libyang.Context, path: str) -> None:
    node = next(ctx.find_path(path))
    exts = {(e.module().name(), e.name()) for e in node.extensions()}
    assert ("ietf-netconf-acm", "default-deny-all") in exts


def _yang_files() -> list[Path]:
    return sorted(YANG.glob("*.yang"))


@pytest.mark.parametrize("path", _yang_files(), ids=lambda p: p.name)
def test_pyang_ietf_lint(path: Path) -> None:
    pytest.importorskip("pyang", reason="pyang is not installed (pip install pyang)")
    proc = subprocess.run(
        [sys.executable, "-m", "pyang", "--ietf", "-p", f"{YANG}:{YANG / 'standard'}", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert not re.search(r":\d+: error:", report), report
    if path.name.startswith("ietf-i2nsf-"):
        # Our RFC 9061 modules are held to "no warnings either".
        assert report.strip() == "", report


@pytest.mark.parametrize("path", _yang_files(), ids=lambda p: p.name)
def test_yanglint(path: Path) -> None:
    yanglint = shutil.which("yanglint")
    if yanglint is None:
        pytest.skip("yanglint is not installed (Debian package libyang2-tools)")
    proc = subprocess.run(
        [yanglint, "-p", str(YANG), "-p", str(YANG / "standard"), str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert report.strip() == "", report


# ---------------------------------------------------------------------------------------------
# RFC 9061 appendix examples: accepted as configuration, unchanged


def test_ike_case_gateway_to_gateway(ctx: libyang.Context) -> None:
    root = parse_config(ctx, example(IKE_G2G))
    try:
        ike = "/ietf-i2nsf-ike:ipsec-ike"
        assert values(root, f"{ike}/pad/pad-entry/name") == ["nsf_h1_pad", "nsf_h2_pad"]
        assert values(root, f"{ike}/pad/pad-entry/ipv4-address") == [
            "198.51.100.1",
            "198.51.100.2",
        ]
        conn = f"{ike}/conn-entry[name='nsf_h1-nsf_h2']"
        assert values(root, f"{conn}/autostartup") == ["start"]
        assert values(root, f"{conn}/local/local-pad-entry-name") == ["nsf_h1_pad"]
        assert values(root, f"{conn}/remote/remote-pad-entry-name") == ["nsf_h2_pad"]
        # The IKE SA encryption entry only gives its id: algorithm and key length default to
        # ENCR_AES_CBC (12) with 128 bits.
        assert values(root, f"{conn}/ike-sa-encr-alg[id='1']/algorithm-type") == ["12"]
        assert values(root, f"{conn}/ike-sa-encr-alg[id='1']/key-length") == ["128"]
        sa_cfg = (
            f"{conn}/spd/spd-entry[name='nsf_h1-nsf_h2']/ipsec-policy-config/processing-info/"
            "ipsec-sa-cfg"
        )
        assert values(root, f"{sa_cfg}/mode") == ["tunnel"]
        assert values(root, f"{sa_cfg}/esp-algorithms/encryption/algorithm-type") == ["12", "3"]
        assert values(root, f"{sa_cfg}/tunnel/remote") == ["198.51.100.2"]
        child = f"{conn}/child-sa-info"
        assert values(root, f"{child}/fs-groups") == ["18"]
        assert values(root, f"{child}/child-sa-lifetime-soft/action") == ["replace"]
        assert values(root, f"{child}/child-sa-lifetime-hard/bytes") == ["2000000"]
        # Defaults from ietf-i2nsf-ikec are filled in by validation.
        assert values(root, f"{conn}/encapsulation-type/sport") == ["4500"]
    finally:
        root.free()


def test_ikeless_case_host_to_host(ctx: libyang.Context) -> None:
    root = parse_config(ctx, example(IKELESS_H2H))
    try:
        ikeless = "/ietf-i2nsf-ikeless:ipsec-ikeless"
        assert values(root, f"{ikeless}/spd/spd-entry/direction") == ["inbound", "outbound"]
        assert values(root, f"{ikeless}/spd/spd-entry/reqid") == ["1", "1"]
        assert values(root, f"{ikeless}/sad/sad-entry/ipsec-sa-config/spi") == ["34501", "34502"]
        assert values(root, f"{ikeless}/sad/sad-entry/ipsec-sa-config/mode") == [
            "transport",
            "transport",
        ]
        out_sa = f"{ikeless}/sad/sad-entry[name='out/trans/198.51.100.1/198.51.100.2']"
        assert values(root, f"{out_sa}/ipsec-sa-config/esp-sa/encryption/key") == [
            "01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:10"
        ]
        assert values(root, f"{out_sa}/ipsec-sa-config/sa-lifetime-soft/action") == ["replace"]
        # No tunnel container in transport mode; inner-protocol 'any' is the enum arm (256).
        assert values(root, f"{out_sa}/ipsec-sa-config/tunnel") == []
        assert values(root, f"{out_sa}/ipsec-sa-config/traffic-selector/inner-protocol") == ["any"]
    finally:
        root.free()


def test_ikeless_case_gateway_to_gateway(ctx: libyang.Context) -> None:
    root = parse_config(ctx, example(IKELESS_G2G))
    try:
        ikeless = "/ietf-i2nsf-ikeless:ipsec-ikeless"
        actions = values(
            root, f"{ikeless}/spd/spd-entry/ipsec-policy-config/processing-info/action"
        )
        assert actions == ["discard", "protect", "protect"]
        telnet = f"{ikeless}/spd/spd-entry[name='in/tunnel/203.0.113.0-24/192.0.2.0-24/telnet']"
        assert values(root, f"{telnet}/ipsec-policy-config/traffic-selector/local-ports/start") == [
            "23"
        ]
        sa = f"{ikeless}/sad/sad-entry[name='out/tunnel/198.51.100.1/198.51.100.2']/ipsec-sa-config"
        assert values(root, f"{sa}/spi") == ["4096"]
        assert values(root, f"{sa}/tunnel/local") == ["198.51.100.1"]
        assert values(root, f"{sa}/tunnel/remote") == ["198.51.100.2"]
        assert values(root, f"{sa}/tunnel/dscp-values") == ["0", "46"]
        assert values(root, f"{sa}/esp-sa/encryption/encryption-algorithm") == ["20"]
        # AEAD: no integrity key is configured; the algorithm leaf keeps its default.
        assert values(root, f"{sa}/esp-sa/integrity/key") == []
    finally:
        root.free()


def test_examples_reparse_after_printing(ctx: libyang.Context) -> None:
    """What libyang prints back (as a NETCONF server would in <get-config>) parses again."""
    for name in (IKE_G2G, IKELESS_H2H, IKELESS_G2G):
        root = parse_config(ctx, example(name))
        try:
            printed = root.print_mem("xml", with_siblings=True)
        finally:
            root.free()
        again = parse_config(ctx, printed)
        again.free()


# ---------------------------------------------------------------------------------------------
# Notifications (feature ikeless-notification)

SADB_EXPIRE = """
<sadb-expire xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless">
  <ipsec-sa-name>out/trans/198.51.100.1/198.51.100.2</ipsec-sa-name>
  <soft-lifetime-expire>true</soft-lifetime-expire>
  <lifetime-current><time>60</time><bytes>1200</bytes><packets>12</packets></lifetime-current>
</sadb-expire>"""

SADB_ACQUIRE = """
<sadb-acquire xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless">
  <ipsec-policy-name>out/trans/198.51.100.1/198.51.100.2</ipsec-policy-name>
  <traffic-selector>
    <local-prefix>198.51.100.1/32</local-prefix>
    <remote-prefix>198.51.100.2/32</remote-prefix>
    <inner-protocol>17</inner-protocol>
    <local-ports><start>5000</start><end>5000</end></local-ports>
  </traffic-selector>
</sadb-acquire>"""

SADB_SEQ_OVERFLOW = """
<sadb-seq-overflow xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless">
  <ipsec-sa-name>out/trans/198.51.100.1/198.51.100.2</ipsec-sa-name>
</sadb-seq-overflow>"""

SADB_BAD_SPI = """
<sadb-bad-spi xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless">
  <spi>4242</spi>
</sadb-bad-spi>"""


def parse_notification(context: libyang.Context, xml: str) -> libyang.DNode:
    node = context.parse_op_mem("xml", xml, libyang.DataType.NOTIF_YANG)
    assert node is not None
    node.validate(notification=True)
    return node


@pytest.mark.parametrize(
    "xml",
    [SADB_ACQUIRE, SADB_EXPIRE, SADB_SEQ_OVERFLOW, SADB_BAD_SPI],
    ids=["sadb-acquire", "sadb-expire", "sadb-seq-overflow", "sadb-bad-spi"],
)
def test_notifications_validate(ctx: libyang.Context, xml: str) -> None:
    node = parse_notification(ctx, xml)
    node.free()


@pytest.mark.parametrize(
    ("xml", "expected"),
    [
        (SADB_BAD_SPI.replace("<spi>4242</spi>", ""), 'Mandatory node "spi"'),
        (
            SADB_EXPIRE.replace("<soft-lifetime-expire>true", "<soft-lifetime-expire>soft"),
            'Invalid boolean value "soft"',
        ),
        (
            SADB_ACQUIRE.replace("<end>5000</end>", "<end>4999</end>"),
            "end port number MUST be equal or greater",
        ),
    ],
    ids=["bad-spi-without-spi", "expire-non-boolean", "acquire-reversed-ports"],
)
def test_notifications_rejected(ctx: libyang.Context, xml: str, expected: str) -> None:
    with pytest.raises(libyang.LibyangError) as err:
        parse_notification(ctx, xml).free()
    assert expected in str(err.value)


def test_notifications_need_the_feature() -> None:
    context = create_context(features={"ietf-i2nsf-ikeless": []})
    try:
        with pytest.raises(libyang.LibyangError, match='"sadb-acquire" not found'):
            context.parse_op_mem("xml", SADB_ACQUIRE, libyang.DataType.NOTIF_YANG)
    finally:
        context.destroy()


# ---------------------------------------------------------------------------------------------
# Data RFC 9061 rejects: each case changes one example in exactly one place.


@dataclass(frozen=True)
class Bad:
    id: str
    example: str
    old: str
    new: str
    message: str  # must appear in libyang's error text
    location: str  # must appear in the data (or schema) path libyang reports; "" if none


IKELESS = "/ietf-i2nsf-ikeless:ipsec-ikeless"
SAD_OUT = f"{IKELESS}/sad/sad-entry[name='out/trans/198.51.100.1/198.51.100.2']"
SPD_IN = f"{IKELESS}/spd/spd-entry[name='in/trans/198.51.100.2/198.51.100.1']"
CONN = "/ietf-i2nsf-ike:ipsec-ike/conn-entry[name='nsf_h1-nsf_h2']"

# One case per line group: id, example, text replaced, replacement, message, location.
# fmt: off
BAD_CASES = [
    Bad("enum-direction", IKELESS_H2H,
        "<direction>inbound</direction>", "<direction>sideways</direction>",
        'Invalid enumeration value "sideways"', f"{SPD_IN}/direction"),
    Bad("enum-mode", IKELESS_H2H,
        "<mode>transport</mode>\n        <esp-sa>", "<mode>beet</mode>\n        <esp-sa>",
        'Invalid enumeration value "beet"', f"{SAD_OUT}/ipsec-sa-config/mode"),
    Bad("enum-spd-action", IKE_G2G,
        "<action>protect</action>", "<action>encrypt</action>",
        'Invalid enumeration value "encrypt"', "/processing-info/action"),
    Bad("enum-auth-method", IKE_G2G,
        "<auth-method>pre-shared</auth-method>", "<auth-method>password</auth-method>",
        'Invalid enumeration value "password"', "/peer-authentication/auth-method"),
    Bad("spi-above-uint32", IKELESS_H2H,
        "<spi>34501</spi>", "<spi>4294967296</spi>",
        'Value "4294967296" is out of type uint32 min/max bounds',
        f"{SAD_OUT}/ipsec-sa-config/spi"),
    Bad("spi-negative", IKELESS_H2H,
        "<spi>34501</spi>", "<spi>-1</spi>",
        'Value "-1" is out of type uint32 min/max bounds', f"{SAD_OUT}/ipsec-sa-config/spi"),
    Bad("mtu-below-range", IKE_G2G,
        "<enabled>false</enabled>", "<enabled>true</enabled><mtu>60</mtu>",
        'Unsatisfied range - value "60" is out of the allowed range',
        f"{CONN}/fragmentation/mtu"),
    Bad("inner-protocol-above-uint8", IKELESS_H2H,
        "<inner-protocol>any</inner-protocol>", "<inner-protocol>300</inner-protocol>",
        'Invalid union value "300"', "/traffic-selector/inner-protocol"),
    Bad("missing-mandatory-spi", IKELESS_H2H,
        "<spi>34501</spi>", "",
        'Mandatory node "spi" instance does not exist',
        "/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry/ipsec-sa-config/spi"),
    Bad("missing-mandatory-direction", IKELESS_H2H,
        "<direction>inbound</direction>", "",
        'Mandatory node "direction" instance does not exist',
        "/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry/direction"),
    Bad("missing-mandatory-tunnel-remote", IKELESS_G2G,
        "<remote>198.51.100.2</remote>\n          <df-bit>", "<df-bit>",
        'Mandatory node "remote" instance does not exist', "/ipsec-sa-config/tunnel"),
    Bad("missing-mandatory-prefix", IKELESS_H2H,
        "<remote-prefix>198.51.100.2/32</remote-prefix>", "",
        'Mandatory node "remote-prefix" instance does not exist',
        "/spd-entry/ipsec-policy-config/traffic-selector/remote-prefix"),
    Bad("missing-pad-identity", IKE_G2G,
        "<ipv4-address>198.51.100.2</ipv4-address>", "",
        'Mandatory choice "identity" data do not exist',
        "/ietf-i2nsf-ike:ipsec-ike/pad/pad-entry/identity"),
    Bad("missing-ike-encr-alg", IKE_G2G,
        "<ike-sa-encr-alg>\n      <id>1</id>\n    </ike-sa-encr-alg>", "",
        'Too few "ike-sa-encr-alg" instances',
        "/ietf-i2nsf-ike:ipsec-ike/conn-entry/ike-sa-encr-alg"),
    Bad("missing-list-key-spd", IKELESS_H2H,
        "<name>in/trans/198.51.100.2/198.51.100.1</name>\n      <direction>", "<direction>",
        'List instance is missing its key "name"', "/ietf-i2nsf-ikeless:ipsec-ikeless/spd"),
    Bad("missing-list-key-port-end", IKELESS_G2G,
        "<end>23</end>", "",
        'List instance is missing its key "end"', "/traffic-selector"),
    Bad("duplicate-list-key", IKE_G2G,
        "<name>nsf_h2_pad</name>", "<name>nsf_h1_pad</name>",
        'Duplicate instance of "pad-entry"', "pad-entry[name='nsf_h1_pad']"),
    Bad("port-range-end-below-start", IKELESS_G2G,
        "<start>23</start>\n            <end>23</end>", "<start>23</start><end>22</end>",
        "The end port number MUST be equal or greater\nthan the start port number",
        "/local-ports[start='23'][end='22']/end"),
    Bad("hex-key-with-0x", IKELESS_H2H,
        "<key>01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:10</key>",
        "<key>0x0123456789abcdeffedcba9876543210</key>",
        'Unsatisfied pattern - "0x0123456789abcdeffedcba9876543210" does not conform',
        f"{SAD_OUT}/ipsec-sa-config/esp-sa/encryption/key"),
    Bad("hex-key-half-octet", IKELESS_H2H,
        "<key>01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:10</key>",
        "<key>01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:1</key>",
        'Unsatisfied pattern - "01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:1"',
        f"{SAD_OUT}/ipsec-sa-config/esp-sa/encryption/key"),
    Bad("hex-psk-not-hex", IKE_G2G,
        "<secret>5d:3a:c8:12:77:0e:4b:a9:f1:6c:28:de:93:40:b7:65</secret>",
        "<secret>correct horse battery staple</secret>",
        'Unsatisfied pattern - "correct horse battery staple"', "/pre-shared/secret"),
    Bad("ipv4-identity-given-ipv6", IKE_G2G,
        "<ipv4-address>198.51.100.1</ipv4-address>", "<ipv4-address>2001:db8::1</ipv4-address>",
        'Unsatisfied pattern - "2001:db8::1" does not conform', "/pad-entry[name='nsf_h1_pad']/"),
    Bad("ipv6-identity-given-ipv4", IKE_G2G,
        "<ipv4-address>198.51.100.1</ipv4-address>", "<ipv6-address>198.51.100.1</ipv6-address>",
        'Unsatisfied pattern - "198.51.100.1" does not conform',
        "/pad-entry[name='nsf_h1_pad']/ipv6-address"),
    Bad("tunnel-endpoint-garbage", IKELESS_G2G,
        "<local>198.51.100.1</local>", "<local>gateway-one</local>",
        'Invalid union value "gateway-one"', "/tunnel/local"),
    Bad("ipv4-octet-out-of-range", IKELESS_H2H,
        "<local-prefix>198.51.100.1/32</local-prefix>",
        "<local-prefix>198.51.100.300/32</local-prefix>",
        'Invalid union value "198.51.100.300/32"', "/traffic-selector/local-prefix"),
    Bad("prefix-without-length", IKELESS_H2H,
        "<local-prefix>198.51.100.1/32</local-prefix>", "<local-prefix>198.51.100.1</local-prefix>",
        'Invalid union value "198.51.100.1"', "/traffic-selector/local-prefix"),
    Bad("unknown-node", IKELESS_H2H,
        "<reqid>1</reqid>", "<reqid>1</reqid><priority>5</priority>",
        'Node "priority" not found as a child of "spd-entry" node', ""),
    # Drafts of RFC 9061 had a configurable seq-number-counter; the RFC keeps it as state only.
    Bad("seq-number-counter-in-config", IKELESS_H2H,
        "<spi>34501</spi>", "<spi>34501</spi><seq-number-counter>100</seq-number-counter>",
        'Node "seq-number-counter" not found as a child of "ipsec-sa-config" node', ""),
    Bad("unknown-namespace", IKELESS_H2H,
        "<ipsec-policy-config>",
        '<ipsec-policy-config><x:priority xmlns:x="urn:example:vendor">5</x:priority>',
        'No module with namespace "urn:example:vendor" in the context', ""),
    Bad("state-in-config", IKELESS_H2H,
        "</ipsec-sa-config>\n    </sad-entry>",
        "</ipsec-sa-config><ipsec-sa-state><replay-stats><failed>1</failed></replay-stats>"
        "</ipsec-sa-state>\n    </sad-entry>",
        'Unexpected data state node "ipsec-sa-state" found', ""),
    Bad("tunnel-in-transport-mode", IKELESS_H2H,
        "</esp-sa>",
        "</esp-sa><tunnel><local>198.51.100.1</local><remote>198.51.100.2</remote></tunnel>",
        "When condition \"../mode = 'tunnel'\" not satisfied", f"{SAD_OUT}/ipsec-sa-config/tunnel"),
    Bad("sa-cfg-on-discard-policy", IKE_G2G,
        "<action>protect</action>", "<action>discard</action>",
        "When condition \"../action = 'protect'\" not satisfied", "/processing-info/ipsec-sa-cfg"),
    Bad("psk-with-signature-method", IKE_G2G,
        "<auth-method>pre-shared</auth-method>", "<auth-method>digital-signature</auth-method>",
        "When condition \"../auth-method[.='pre-shared' or", "pad-entry[name='nsf_h1_pad']"),
    Bad("mtu-without-fragmentation", IKE_G2G,
        "<enabled>false</enabled>", "<enabled>false</enabled><mtu>1400</mtu>",
        "When condition \"../enabled='true'\" not satisfied", f"{CONN}/fragmentation/mtu"),
    Bad("dscp-mapping-with-bypass", IKE_G2G,
        "<bypass-dscp>true</bypass-dscp>",
        "<bypass-dscp>true</bypass-dscp>"
        "<dscp-mapping><id>1</id><outer-dscp>10</outer-dscp></dscp-mapping>",
        'Must condition "../bypass-dscp = "false"" not satisfied', "/tunnel/dscp-mapping"),
    Bad("dscp-values-only-in-sad", IKE_G2G,
        "<bypass-dscp>true</bypass-dscp>",
        "<bypass-dscp>true</bypass-dscp><dscp-values>0</dscp-values>",
        'Node "dscp-values" not found as a child of "tunnel" node', ""),
    Bad("dscp-above-63", IKE_G2G,
        "<bypass-dscp>true</bypass-dscp>",
        "<bypass-dscp>false</bypass-dscp>"
        "<dscp-mapping><id>1</id><outer-dscp>64</outer-dscp></dscp-mapping>",
        'value "64" is out of the allowed range', "/dscp-mapping[id='1']/outer-dscp"),
]
# fmt: on


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.id for c in BAD_CASES])
def test_invalid_data_rejected(ctx: libyang.Context, case: Bad) -> None:
    source = example(case.example)
    assert source.count(case.old) >= 1, f"{case.id}: the example no longer contains {case.old!r}"
    broken = source.replace(case.old, case.new, 1)
    with pytest.raises(libyang.LibyangError) as err:
        parse_config(ctx, broken).free()
    text = str(err.value)
    assert case.message in text, text
    if case.location:
        assert case.location in text, text


def test_bad_case_ids_are_unique() -> None:
    ids = [c.id for c in BAD_CASES]
    assert len(ids) == len(set(ids))
