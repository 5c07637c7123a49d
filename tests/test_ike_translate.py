"""RFC 9061 ietf-i2nsf-ike → strongSwan vici messages, without a daemon: the RFC example,
algorithm and lifetime mapping, credentials, every rejection with its error-path, the
transaction plan, and vici events/state → YANG data validated by libyang."""

from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from netconf_core.datastore import merge_tree
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent.appliers.ike import EV_NS, IkeApplier, ike_sa_state, plan
from nsf_agent.ike import translate
from nsf_agent.ike.translate import IkeConfig, Options

DATA = Path(__file__).resolve().parent / "data" / "rfc9061"
Q = translate.Q
ROOT = translate.ROOT


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context((*IPSEC_MODULES, "i2nsf-ike-events")))


def example() -> etree._Element:
    return etree.parse(str(DATA / "ike-g2g-gw1.xml")).getroot()


def canonical(schema: YangSchema, root: etree._Element) -> etree._Element:
    """The tree as the datastore hands it to appliers (validated, canonical)."""
    data = etree.Element(f"{{{NC_NS}}}data", nsmap={None: NC_NS})
    data.append(copy.deepcopy(root))
    tree = schema.parse_config(data)
    assert tree is not None
    try:
        text = tree.print_mem("xml", with_siblings=True, pretty=False)
    finally:
        tree.free()
    return etree.fromstring(f'<data xmlns="{NC_NS}">{text}</data>'.encode())


def find(root: etree._Element, path: str) -> etree._Element:
    el = root.find("/".join(Q + p for p in path.split("/")))
    assert el is not None, path
    return el


def conn_of(cfg: IkeConfig, name: str = "nsf_h1-nsf_h2") -> dict:
    return cfg.conns["i2nsf-" + name].message


def set_text(root: etree._Element, path: str, value: str) -> None:
    parent_path, _, leaf = path.rpartition("/")
    parent = find(root, parent_path) if parent_path else root
    el = parent.find(Q + leaf)
    if el is None:
        el = etree.SubElement(parent, Q + leaf)
    el.text = value


def error_of(root: etree._Element, opts: Options | None = None) -> RpcError:
    with pytest.raises(RpcError) as ei:
        translate.parse(root, opts)
    return ei.value


# ---- the RFC 9061 example ---------------------------------------------------------------------


def test_rfc_example_translates(schema: YangSchema) -> None:
    cfg = translate.parse(canonical(schema, example()))
    assert list(cfg.conns) == ["i2nsf-nsf_h1-nsf_h2"]
    msg = conn_of(cfg)
    assert msg["version"] == "2"
    assert msg["local_addrs"] == ["198.51.100.1"]
    assert msg["remote_addrs"] == ["198.51.100.2"]
    # AES-CBC-128 + HMAC-SHA2-512 + MODP-8192
    assert msg["proposals"] == ["aes128-sha512-modp8192"]
    assert (msg["rekey_time"], msg["reauth_time"]) == ("60s", "120s")
    assert msg["over_time"] == "3480s"  # 3600 s hard lifetime counted from reauth (120 s)
    assert msg["fragmentation"] == "no"
    assert msg["unique"] == "no"
    assert msg["local"] == {"id": "198.51.100.1", "auth": "psk"}
    assert msg["remote"] == {"id": "198.51.100.2", "auth": "psk"}
    child = msg["children"]["nsf_h1-nsf_h2"]
    assert child["local_ts"] == ["192.0.2.0/24"]
    assert child["remote_ts"] == ["203.0.113.0/24"]
    assert child["mode"] == "tunnel"
    assert child["esp_proposals"] == ["aes128-3des-sha1-modp8192-esn"]
    assert child["start_action"] == "start"
    assert (child["rekey_time"], child["life_time"]) == ("30s", "60s")
    assert (child["rekey_bytes"], child["life_bytes"]) == ("1000000", "2000000")
    assert (child["rekey_packets"], child["life_packets"]) == ("1000", "2000")
    assert child["inactivity"] == "120s"
    assert child["replay_window"] == "64"
    [secret] = cfg.secrets.values()
    assert secret.type == "IKE"
    assert secret.owners == ("198.51.100.1", "198.51.100.2")
    assert secret.data == bytes.fromhex("5d3ac812770e4ba9f16c28de9340b765")
    assert "5d3a" not in repr(secret) and "5d3a" not in repr(cfg)
    assert cfg.conns["i2nsf-nsf_h1-nsf_h2"].secrets == (secret.id,)


def test_libipsec_negotiates_without_esn() -> None:
    cfg = translate.parse(example(), Options(libipsec=True))
    assert conn_of(cfg)["children"]["nsf_h1-nsf_h2"]["esp_proposals"] == [
        "aes128-3des-sha1-modp8192-noesn"]


def test_prefix_names_connections_and_secrets() -> None:
    cfg = translate.parse(example(), Options(prefix="agent7-"))
    assert list(cfg.conns) == ["agent7-nsf_h1-nsf_h2"]
    assert all(s.startswith("agent7-") for s in cfg.secrets)


# ---- algorithms -----------------------------------------------------------------------------


def _ike_algs(root: etree._Element, encr: list[tuple[int, int]], intr: list[int],
              dh: int) -> None:
    conn = find(root, "conn-entry")
    for el in conn.findall(Q + "ike-sa-encr-alg") + conn.findall(Q + "ike-sa-intr-alg"):
        conn.remove(el)
    anchor = conn.find(Q + "dh-group")
    for i, (alg, bits) in enumerate(encr):
        e = etree.Element(Q + "ike-sa-encr-alg")
        etree.SubElement(e, Q + "id").text = str(i + 1)
        etree.SubElement(e, Q + "algorithm-type").text = str(alg)
        etree.SubElement(e, Q + "key-length").text = str(bits)
        anchor.addprevious(e)
    for a in intr:
        e = etree.Element(Q + "ike-sa-intr-alg")
        e.text = str(a)
        anchor.addprevious(e)
    anchor.text = str(dh)


def test_ike_aead_and_classic_become_two_proposals() -> None:
    root = example()
    _ike_algs(root, [(20, 256), (12, 128), (28, 256)], [12, 14], 31)
    assert conn_of(translate.parse(root))["proposals"] == [
        "aes128-sha256-sha512-curve25519",
        "aes256gcm16-chacha20poly1305-prfsha256-prfsha512-curve25519",
    ]


@pytest.mark.parametrize(("encr", "intr", "dh", "path"), [
    ([(1, 128)], [12], 14, "/ike-sa-encr-alg[id='1']"),  # DES
    ([(12, 100)], [12], 14, "/ike-sa-encr-alg[id='1']"),  # bad AES key length
    ([(28, 192)], [12], 14, "/ike-sa-encr-alg[id='1']"),  # ChaCha20 is 256 bits
    ([(11, 128)], [12], 14, "/ike-sa-encr-alg[id='1']"),  # NULL is ESP only
    ([(12, 128)], [99], 14, "/ike-sa-intr-alg"),
    ([(12, 128)], [12], 0, "/dh-group"),
    ([(12, 128)], [12], 77, "/dh-group"),
])
def test_unsupported_ike_algorithms(encr, intr, dh, path) -> None:
    root = example()
    _ike_algs(root, encr, intr, dh)
    err = error_of(root)
    assert err.path == translate.conn_path("nsf_h1-nsf_h2") + path
    assert err.error_tag == "invalid-value"
    assert "nsf_h1-nsf_h2" in err.message


def _esp(root: etree._Element, encr: list[tuple[int, int]], integ: list[int],
         groups: list[int], esn: bool = False) -> None:
    cfg = find(root, "conn-entry/spd/spd-entry/ipsec-policy-config/processing-info/ipsec-sa-cfg")
    cfg.find(Q + "ext-seq-num").text = "true" if esn else "false"
    algs = cfg.find(Q + "esp-algorithms")
    for el in list(algs):
        if el.tag in (Q + "encryption", Q + "integrity"):
            algs.remove(el)
    for a in integ:
        etree.SubElement(algs, Q + "integrity").text = str(a)
    for i, (alg, bits) in enumerate(encr):
        e = etree.SubElement(algs, Q + "encryption")
        etree.SubElement(e, Q + "id").text = str(i + 1)
        etree.SubElement(e, Q + "algorithm-type").text = str(alg)
        etree.SubElement(e, Q + "key-length").text = str(bits)
    info = find(root, "conn-entry/child-sa-info")
    for el in info.findall(Q + "fs-groups"):
        info.remove(el)
    for g in reversed(groups):
        e = etree.Element(Q + "fs-groups")
        e.text = str(g)
        info.insert(0, e)


@pytest.mark.parametrize(("encr", "integ", "groups", "want"), [
    ([(20, 128)], [], [0], ["aes128gcm16-noesn"]),
    ([(20, 256), (12, 256)], [12], [19], ["aes256-sha256-ecp256-noesn",
                                          "aes256gcm16-ecp256-noesn"]),
    ([(18, 128), (19, 192)], [], [31, 0], ["aes128gcm8-aes192gcm12-curve25519-modpnone-noesn"]),
    ([(21, 128)], [], [], ["aes128gmac-noesn"]),
    ([], [12], [], ["null-sha256-noesn"]),  # RFC 9061: no encryption entry = NULL
    ([(13, 128), (3, 192)], [5, 8], [14], ["aes128ctr-3des-aesxcbc-aescmac-modp2048-noesn"]),
])
def test_esp_proposals(encr, integ, groups, want) -> None:
    root = example()
    _esp(root, encr, integ, groups)
    assert conn_of(translate.parse(root))["children"]["nsf_h1-nsf_h2"]["esp_proposals"] == want


def test_esp_classic_cipher_needs_integrity() -> None:
    root = example()
    _esp(root, [(12, 128)], [], [])
    err = error_of(root)
    assert err.path.endswith("/ipsec-sa-cfg/esp-algorithms/integrity")


# ---- lifetimes, options ------------------------------------------------------------------------


def test_child_lifetimes_terminate_action_disables_rekey() -> None:
    root = example()
    set_text(root, "conn-entry/child-sa-info/child-sa-lifetime-soft/action", "terminate-hold")
    child = conn_of(translate.parse(root))["children"]["nsf_h1-nsf_h2"]
    assert (child["rekey_time"], child["life_time"]) == ("0", "30s")
    assert (child["rekey_packets"], child["life_packets"]) == ("0", "1000")


def test_no_lifetimes_means_no_limits() -> None:
    root = example()
    conn = find(root, "conn-entry")
    for tag in ("child-sa-info", "ike-sa-lifetime-soft", "ike-sa-lifetime-hard"):
        conn.remove(conn.find(Q + tag))
    msg = conn_of(translate.parse(root))
    child = msg["children"]["nsf_h1-nsf_h2"]
    assert (child["rekey_time"], child["life_time"]) == ("0s", "0s")
    assert child["esp_proposals"] == ["aes128-3des-sha1-esn"]  # no fs-groups: no PFS
    assert (msg["rekey_time"], msg["reauth_time"]) == ("0s", "0s")
    assert "over_time" not in msg


@pytest.mark.parametrize(("path", "value", "err_path"), [
    ("conn-entry/child-sa-info/child-sa-lifetime-hard/time", "20",
     "/child-sa-info/child-sa-lifetime-hard/time"),
    ("conn-entry/ike-sa-lifetime-hard/over-time", "100", "/ike-sa-lifetime-hard/over-time"),
    ("conn-entry/encapsulation-type/espencap", "espintcp", "/encapsulation-type/espencap"),
    ("conn-entry/encapsulation-type/sport", "4600", "/encapsulation-type/sport"),
    ("conn-entry/local/local-pad-entry-name", "nope", "/local/local-pad-entry-name"),
    ("conn-entry/spd/spd-entry/ipsec-policy-config/processing-info/ipsec-sa-cfg/pfp-flag",
     "true", "/spd/spd-entry[name='nsf_h1-nsf_h2']/ipsec-policy-config/processing-info/"
     "ipsec-sa-cfg/pfp-flag"),
    ("conn-entry/spd/spd-entry/ipsec-policy-config/processing-info/ipsec-sa-cfg/tunnel/df-bit",
     "set", "/spd/spd-entry[name='nsf_h1-nsf_h2']/ipsec-policy-config/processing-info/"
     "ipsec-sa-cfg/tunnel/df-bit"),
])
def test_rejections_point_at_the_node(path: str, value: str, err_path: str) -> None:
    root = example()
    if "encapsulation-type" in path and find(root, "conn-entry").find(
            Q + "encapsulation-type") is None:
        enc = etree.SubElement(find(root, "conn-entry"), Q + "encapsulation-type")
        etree.SubElement(enc, Q + "espencap").text = "espinudp"
    set_text(root, path, value)
    err = error_of(root)
    assert err.path == translate.conn_path("nsf_h1-nsf_h2") + err_path, err.message


def test_fragmentation_mtu_must_match_the_daemon() -> None:
    root = example()
    set_text(root, "conn-entry/fragmentation/enabled", "true")
    set_text(root, "conn-entry/fragmentation/mtu", "1400")
    err = error_of(root, Options(fragment_size=1280))
    assert err.path.endswith("/fragmentation/mtu")
    assert conn_of(translate.parse(root, Options(fragment_size=1400)))["fragmentation"] == "yes"


def test_initial_contact_and_udp_encapsulation() -> None:
    root = example()
    set_text(root, "conn-entry/initial-contact", "true")
    enc = etree.SubElement(find(root, "conn-entry"), Q + "encapsulation-type")
    etree.SubElement(enc, Q + "espencap").text = "espinudp"
    etree.SubElement(enc, Q + "dport").text = "4501"
    msg = conn_of(translate.parse(root))
    assert msg["unique"] == "never"
    assert (msg["encap"], msg["remote_port"]) == ("yes", "4501")


def test_traffic_selector_ports_and_bypass_discard() -> None:
    root = example()
    spd = find(root, "conn-entry/spd")
    ts = find(root, "conn-entry/spd/spd-entry/ipsec-policy-config/traffic-selector")
    ts.find(Q + "inner-protocol").text = "6"
    for start, end in ((80, 80), (1000, 2000)):
        p = etree.SubElement(ts, Q + "remote-ports")
        etree.SubElement(p, Q + "start").text = str(start)
        etree.SubElement(p, Q + "end").text = str(end)
    byp = copy.deepcopy(find(root, "conn-entry/spd/spd-entry"))
    byp.find(Q + "name").text = "bypass-dns"
    pi = byp.find(f"{Q}ipsec-policy-config/{Q}processing-info")
    pi.find(Q + "action").text = "bypass"
    pi.remove(pi.find(Q + "ipsec-sa-cfg"))
    spd.append(byp)
    children = conn_of(translate.parse(root))["children"]
    main = children["nsf_h1-nsf_h2"]
    assert main["local_ts"] == ["192.0.2.0/24[6]"]
    assert main["remote_ts"] == ["203.0.113.0/24[6/80]", "203.0.113.0/24[6/1000-2000]"]
    assert children["bypass-dns"]["mode"] == "pass"
    assert children["bypass-dns"]["start_action"] == "trap"


def test_conflicting_tunnel_endpoints_are_rejected() -> None:
    root = example()
    spd = find(root, "conn-entry/spd")
    second = copy.deepcopy(find(root, "conn-entry/spd/spd-entry"))
    second.find(Q + "name").text = "other"
    second.find(f".//{Q}tunnel/{Q}remote").text = "198.51.100.3"
    spd.append(second)
    err = error_of(root)
    assert err.app_tag == "endpoint-conflict"


def test_start_needs_a_peer_address() -> None:
    root = example()
    conn = find(root, "conn-entry")
    sa = conn.find(f".//{Q}ipsec-sa-cfg")
    sa.find(Q + "mode").text = "transport"
    sa.remove(sa.find(Q + "tunnel"))
    pad = find(root, "pad").findall(Q + "pad-entry")[1]
    pad.remove(pad.find(Q + "ipv4-address"))
    etree.SubElement(pad, Q + "fqdn-string").text = "gw2.example.org"
    err = error_of(root)
    assert err.path.endswith("/autostartup")
    set_text(root, "conn-entry/autostartup", "add")
    msg = conn_of(translate.parse(root))
    assert msg["remote_addrs"] == ["%any"]
    assert msg["remote"]["id"] == "fqdn:gw2.example.org"
    assert msg["children"]["nsf_h1-nsf_h2"]["mode"] == "transport"


# ---- PAD: secrets, EAP, certificates -----------------------------------------------------------


def _pads(root: etree._Element) -> list[etree._Element]:
    return find(root, "pad").findall(Q + "pad-entry")


def test_missing_psk() -> None:
    root = example()
    for pad in _pads(root):
        auth = pad.find(Q + "peer-authentication")
        auth.remove(auth.find(Q + "pre-shared"))
    err = error_of(root)
    assert err.error_tag == "data-missing"
    assert err.path == translate.pad_path("nsf_h2_pad") + "/peer-authentication/pre-shared/secret"
    assert err.app_tag == "missing-secret"


def test_psk_of_the_remote_entry_wins_the_local_one_is_a_fallback() -> None:
    root = example()
    auth = _pads(root)[1].find(Q + "peer-authentication")
    auth.remove(auth.find(Q + "pre-shared"))
    [sec] = translate.parse(root).secrets.values()
    assert sec.data == bytes.fromhex("5d3ac812770e4ba9f16c28de9340b765")  # the local one
    root = example()
    _pads(root)[1].find(f".//{Q}secret").text = "00:11"
    [sec] = translate.parse(root).secrets.values()
    assert sec.data == b"\x00\x11"


def test_eap() -> None:
    root = example()
    auth = _pads(root)[1].find(Q + "peer-authentication")
    auth.find(Q + "auth-method").text = "eap"
    m = etree.Element(Q + "eap-method")
    etree.SubElement(m, Q + "eap-type").text = "26"
    auth.insert(1, m)
    cfg = translate.parse(root)
    assert conn_of(cfg)["remote"]["auth"] == "eap-mschapv2"
    assert {s.type for s in cfg.secrets.values()} == {"EAP", "IKE"}
    m.find(Q + "eap-type").text = "99"
    err = error_of(root)
    assert err.path.endswith("/peer-authentication/eap-method/eap-type")
    assert err.app_tag == "unsupported-eap-method"


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i2nsf test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str,
              ip: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca[1].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(ca[0], hashes.SHA256()))
    return key, cert


def _signature_pads(root: etree._Element, local: tuple, remote_ca: x509.Certificate,
                    local_key: object | None = None) -> None:
    for i, pad in enumerate(_pads(root)):
        auth = pad.find(Q + "peer-authentication")
        auth.find(Q + "auth-method").text = "digital-signature"
        auth.remove(auth.find(Q + "pre-shared"))
        ds = etree.SubElement(auth, Q + "digital-signature")
        if i == 0:
            etree.SubElement(ds, Q + "cert-data").text = _b64(
                local[1].public_bytes(serialization.Encoding.DER))
            key = local_key or local[0]
            etree.SubElement(ds, Q + "private-key").text = _b64(key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption()))
        else:
            etree.SubElement(ds, Q + "ca-data").text = _b64(
                remote_ca.public_bytes(serialization.Encoding.DER))


def test_certificates(schema: YangSchema) -> None:
    ca = make_ca()
    gw1 = make_cert(ca, "gw1", "198.51.100.1")
    root = example()
    _signature_pads(root, gw1, ca[1])
    cfg = translate.parse(canonical(schema, root))
    msg = conn_of(cfg)
    assert msg["local"]["auth"] == "pubkey"
    # credentials outside the connection: a rotation must not change its definition
    assert "certs" not in msg["local"] and "cacerts" not in msg["remote"]
    assert list(cfg.certs.values()) == [gw1[1].public_bytes(serialization.Encoding.PEM)]
    assert list(cfg.authorities.values()) == [ca[1].public_bytes(serialization.Encoding.PEM)]
    assert msg["send_cert"] == "always"
    assert [s.kind for s in plan(IkeConfig(), cfg)] == [
        "load-key", "load-cert", "load-authority", "load-conn"]
    # a new certificate and key for the same identity: credentials only, no load-conn
    gw1b = make_cert(ca, "gw1", "198.51.100.1")
    root2 = example()
    _signature_pads(root2, gw1b, ca[1])
    cfg2 = translate.parse(canonical(schema, root2))
    assert [s.kind for s in plan(cfg, cfg2)] == ["load-key", "load-cert", "unload-key"]
    assert not cfg.secrets
    [key] = cfg.keys.values()
    assert key.type == "ecdsa" and key.pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert conn_of(cfg) is not None and "PRIVATE" not in repr(cfg)


def test_certificate_for_the_wrong_identity() -> None:
    ca = make_ca()
    root = example()
    _signature_pads(root, make_cert(ca, "gw1", "198.51.100.99"), ca[1])
    err = error_of(root)
    assert err.app_tag == "identity-mismatch"
    assert err.path == (translate.pad_path("nsf_h1_pad")
                        + "/peer-authentication/digital-signature/cert-data")


def test_private_key_must_match_the_certificate() -> None:
    ca = make_ca()
    root = example()
    _signature_pads(root, make_cert(ca, "gw1", "198.51.100.1"), ca[1],
                    local_key=ec.generate_private_key(ec.SECP256R1()))
    err = error_of(root)
    assert err.app_tag == "key-mismatch"
    assert err.path.endswith("/digital-signature/private-key")


def test_garbage_certificate() -> None:
    root = example()
    ca = make_ca()
    _signature_pads(root, make_cert(ca, "gw1", "198.51.100.1"), ca[1])
    _pads(root)[0].find(f".//{Q}cert-data").text = _b64(b"not a certificate")
    err = error_of(root)
    assert err.app_tag == "bad-certificate"


# ---- the transaction plan ---------------------------------------------------------------------


def test_plan_orders_credentials_connections_removals() -> None:
    old = translate.parse(example())
    root = example()
    conn = find(root, "conn-entry")
    conn.find(Q + "name").text = "renamed"
    for s in _pads(root):
        s.find(f".//{Q}secret").text = "aa:bb"
    new = translate.parse(root)
    steps = plan(old, new)
    assert [s.kind for s in steps] == ["load-shared", "load-conn", "unload-conn", "terminate"]
    assert steps[0].undo[0].message["data"] == bytes.fromhex("5d3ac812770e4ba9f16c28de9340b765")
    assert [u.kind for u in steps[1].undo] == ["unload-conn", "terminate"]
    assert [u.kind for u in steps[2].undo] == ["load-conn"]
    assert steps[2].path == translate.conn_path("nsf_h1-nsf_h2")
    assert plan(new, new) == []
    back = plan(new, IkeConfig())
    assert [s.kind for s in back] == ["unload-conn", "terminate", "unload-shared"]
    assert "aa" not in repr(back)


# ---- events and state → YANG ------------------------------------------------------------------


SA = {
    "uniqueid": b"3", "version": b"2", "state": b"ESTABLISHED",
    "local-host": b"198.51.100.1", "local-port": b"4500", "local-id": b"198.51.100.1",
    "remote-host": b"198.51.100.2", "remote-port": b"4500", "remote-id": b"198.51.100.2",
    "initiator": b"yes", "initiator-spi": b"1caa5440024c60bd",
    "responder-spi": b"a24ab83153798e90", "nat-remote": b"yes", "nat-any": b"yes",
    "established": b"19", "rekey-time": b"37", "reauth-time": b"97",
    "child-sas": {"nsf_h1-nsf_h2-5": {
        "name": b"nsf_h1-nsf_h2", "uniqueid": b"5", "reqid": b"1", "state": b"INSTALLED",
        "mode": b"TUNNEL", "protocol": b"ESP", "encap": b"yes", "spi-in": b"7780f15c",
        "spi-out": b"b0362660", "encr-alg": b"AES_CBC", "encr-keysize": b"128",
        "integ-alg": b"HMAC_SHA1_96", "dh-group": b"MODP_8192", "bytes-in": b"168",
        "packets-in": b"2", "bytes-out": b"168", "packets-out": b"2", "rekey-time": b"20",
        "life-time": b"50", "install-time": b"10", "local-ts": [b"192.0.2.0/24"],
        "remote-ts": [b"203.0.113.0/24"]}},
}


def _applier_offline(tmp_path: Path) -> IkeApplier:
    """An applier that never starts charon (attach mode to a socket nobody serves)."""
    ap = IkeApplier(tmp_path, vici_socket=tmp_path / "none.vici", libipsec=True)
    ap._cfg = translate.parse(example(), ap.options)
    return ap


def test_events_become_valid_notifications(schema: YangSchema, tmp_path: Path) -> None:
    ap = _applier_offline(tmp_path)
    name = "i2nsf-nsf_h1-nsf_h2"
    ike = {k: v for k, v in SA.items() if k != "child-sas"}
    got = []
    got += ap.on_event("ike-updown", {"up": b"yes", name: ike})
    got += ap.on_event("child-updown", {"up": b"yes", name: SA})
    got += ap.on_event("ike-rekey", {name: {"old": ike, "new": ike}})
    got += ap.on_event("child-rekey", {name: {**ike, "child-sas": {"c": {
        "old": SA["child-sas"]["nsf_h1-nsf_h2-5"], "new": SA["child-sas"]["nsf_h1-nsf_h2-5"]}}}})
    got += ap.on_event("log", {"group": b"IKE", "level": b"1", "ikesa-name": name.encode(),
                               "ikesa-uniqueid": b"3", "msg": b"received DELETE for IKE_SA"})
    got += ap.on_event("child-updown", {name: SA})
    got += ap.on_event("ike-updown", {name: ike})
    got += ap.on_event("ike-updown", {"up": b"yes", "someone-else": ike})
    kinds = [etree.QName(n).localname for n in got]
    assert kinds == ["ike-sa-up", "child-sa-up", "ike-sa-rekeyed", "child-sa-rekeyed",
                     "child-sa-down", "ike-sa-down"]
    for n in got:
        schema.validate_notification(n)
    up = got[0]
    assert up.findtext(f"{{{EV_NS}}}connection-name") == "nsf_h1-nsf_h2"
    assert up.findtext(f"{{{EV_NS}}}initiator-ikesa-spi") == str(0x1caa5440024c60bd)
    assert got[1].findtext(f"{{{EV_NS}}}spi-in") == str(0x7780f15c)
    assert got[-1].findtext(f"{{{EV_NS}}}reason") == "received DELETE for IKE_SA"


def test_auth_failure_from_the_log(schema: YangSchema, tmp_path: Path) -> None:
    ap = _applier_offline(tmp_path)
    msg = {"group": b"IKE", "level": b"1", "ikesa-name": b"i2nsf-nsf_h1-nsf_h2",
           "ikesa-uniqueid": b"7",
           "msg": b"tried 1 shared key for '198.51.100.1' - '198.51.100.2', but MAC mismatched"}
    [n] = ap.on_event("log", msg)
    schema.validate_notification(n)
    assert etree.QName(n).localname == "auth-failure"
    assert n.findtext(f"{{{EV_NS}}}peer") == "198.51.100.2"
    assert n.findtext(f"{{{EV_NS}}}local-failure") == "true"
    assert ap.on_event("log", msg) == []  # once per IKE SA
    [n] = ap.on_event("log", {**msg, "ikesa-uniqueid": b"8",
                              "msg": b"received AUTHENTICATION_FAILED notify error"})
    assert n.findtext(f"{{{EV_NS}}}local-failure") == "false"
    assert ap.on_event("log", {**msg, "ikesa-uniqueid": b"9", "msg": b"sending packet"}) == []


def test_state_is_valid_yang(schema: YangSchema) -> None:
    running = canonical(schema, example())
    root = etree.Element(Q + "ipsec-ike", nsmap={None: translate.NS})
    ent = etree.SubElement(root, Q + "conn-entry")
    etree.SubElement(ent, Q + "name").text = "nsf_h1-nsf_h2"
    ent.append(ike_sa_state(SA))
    merge_tree(schema, running, root)
    st = running.find(f"{Q}ipsec-ike/{Q}conn-entry/{Q}state")
    assert st.findtext(Q + "responder-ikesa-spi") == str(0xa24ab83153798e90)
    assert st.findtext(f"{Q}encapsulation-type/{Q}espencap") == "espinudp"
    child = st.find(f"{{{EV_NS}}}child-sa")
    assert child.findtext(f"{{{EV_NS}}}spd-entry-name") == "nsf_h1-nsf_h2"
    assert child.findtext(f"{{{EV_NS}}}packets-out") == "2"
    from _libyang import lib  # type: ignore[import-not-found]

    xml = b"".join(etree.tostring(c) for c in running)
    tree = schema._parse(xml, lib.LYD_PARSE_STRICT | lib.LYD_PARSE_ONLY, 0)  # types, names
    assert tree is not None
    tree.free()


def test_virtual_ip_pool(schema: YangSchema) -> None:
    root = example()
    conn = find(root, "conn-entry")
    find(conn, "autostartup").text = "add"
    etree.SubElement(conn, f"{{{EV_NS}}}virtual-ip-pool").text = "203.0.113.0/24"
    cfg = translate.parse(canonical(schema, root))
    msg = conn_of(cfg)
    assert msg["pools"] == ["i2nsf-nsf_h1-nsf_h2"]
    assert cfg.pools == {"i2nsf-nsf_h1-nsf_h2": {"addrs": "203.0.113.0/24"}}
    [child] = msg["children"].values()
    assert child["remote_ts"] == ["dynamic"]  # inside the pool: the peer's virtual IP
    steps = plan(IkeConfig(), cfg)
    assert [s.kind for s in steps] == ["load-shared", "load-pool", "load-conn"]
    assert steps[1].message == {"i2nsf-nsf_h1-nsf_h2": {"addrs": "203.0.113.0/24"}}
    assert [u.kind for u in steps[1].undo] == ["unload-pool"]
    assert [s.kind for s in plan(cfg, IkeConfig())] == [
        "unload-conn", "terminate", "unload-pool", "unload-shared"]
    # a pool is for peers that connect to us
    find(conn, "autostartup").text = "start"
    assert error_of(root).app_tag == "pool-needs-responder"


def test_child_sa_failure_from_the_log(schema: YangSchema, tmp_path: Path) -> None:
    ap = _applier_offline(tmp_path)
    base = {"group": b"IKE", "level": b"0", "ikesa-name": b"i2nsf-nsf_h1-nsf_h2",
            "ikesa-uniqueid": b"4"}
    assert ap.on_event("log", {**base, "msg": b"establishing CHILD_SA nsf_h1-nsf_h2{2}"}) == []
    [n] = ap.on_event("log", {**base, "level": b"1",
                              "msg": b"received TS_UNACCEPTABLE notify, no CHILD_SA built"})
    schema.validate_notification(n)
    assert etree.QName(n).localname == "child-sa-failed"
    assert n.findtext(f"{{{EV_NS}}}spd-entry-name") == "nsf_h1-nsf_h2"
    assert "TS_UNACCEPTABLE" in n.findtext(f"{{{EV_NS}}}reason")
    # the follow-up line of the same attempt is not a second failure
    assert ap.on_event("log", {**base, "msg": b"failed to establish CHILD_SA, keeping IKE_SA"
                               }) == []
    # the responder does not know which child: the connection only
    [n] = ap.on_event("log", {**base, "ikesa-uniqueid": b"5", "msg":
                              b"traffic selectors 10.0.0.0/24 === 10.9.0.0/24 unacceptable"})
    assert n.find(f"{{{EV_NS}}}spd-entry-name") is None
    schema.validate_notification(n)


def test_auth_failure_while_the_connection_is_being_loaded(schema: YangSchema,
                                                          tmp_path: Path) -> None:
    """charon can fail a peer's authentication before load-conn has returned: the event
    still names the peer and identity of the connection being loaded."""
    ap = _applier_offline(tmp_path)
    ap._loading, ap._cfg = ap._cfg, IkeConfig()
    [n] = ap.on_event("log", {"group": b"IKE", "level": b"1", "ikesa-uniqueid": b"7",
                              "ikesa-name": b"i2nsf-nsf_h1-nsf_h2",
                              "msg": b"received AUTHENTICATION_FAILED notify error"})
    schema.validate_notification(n)
    assert n.findtext(f"{{{EV_NS}}}connection-name") == "nsf_h1-nsf_h2"
    assert n.findtext(f"{{{EV_NS}}}peer") == "198.51.100.2"
    assert n.findtext(f"{{{EV_NS}}}remote-id")
