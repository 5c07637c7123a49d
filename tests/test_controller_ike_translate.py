"""Controller, IKE case (no daemons): policies → ietf-i2nsf-ike edits, checked twice — by
libyang (the edit is applied to a real datastore with the agent's modules) and by the agent's
own translation to strongSwan vici messages (nsf_agent.ike.translate.parse)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from controller.core.inventory import NS as FP
from controller.ipsec import ike_config as ike
from controller.ipsec.ca import ControllerCA, write_private
from controller.ipsec.checks import check_config
from controller.ipsec.ike_bundle import swanctl_conf
from controller.ipsec.model import FlowConfig, parse_config
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent.ike import translate as agent_ike

HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests"


@pytest.fixture(scope="module")
def schema() -> Iterator[YangSchema]:
    ctx = create_context([*IPSEC_MODULES, "i2nsf-flow-policy", "i2nsf-ike-events"])
    yield YangSchema(ctx)
    ctx.destroy()


class MemStore:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    def get_meta(self, k: str) -> str | None:
        return self.meta.get(k)

    def put_meta(self, k: str, v: str) -> None:
        self.meta[k] = v


def nsf_xml(name: str, dp: str, prefixes: list[str], extra: str = "") -> str:
    pre = "".join(f"<protected-prefix>{p}</protected-prefix>" for p in prefixes)
    return (f"<nsf><name>{name}</name><management><address>192.0.2.250</address>"
            f"<username>admin</username><private-key-file>/k</private-key-file>"
            f"<host-key>{HOSTKEY}</host-key></management>"
            f"<data-plane-address>{dp}</data-plane-address>{pre}{extra}</nsf>")


GW = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"])
      + nsf_xml("gw2", "198.51.100.2", ["203.0.113.0/24"]))
PROFILE = ("<crypto-profile><name>gcm</name><key-length>256</key-length>"
           "<ike-sa><encryption-algorithm>20</encryption-algorithm><key-length>256</key-length>"
           "<dh-group>31</dh-group><pfs-group>19</pfs-group></ike-sa></crypto-profile>")


def policy_xml(name: str, a: str, b: str, auth: str = "psk", extra: str = "",
               a_prefix: str = "", b_prefix: str = "") -> str:
    ap = f"<prefix>{a_prefix}</prefix>" if a_prefix else ""
    bp = f"<prefix>{b_prefix}</prefix>" if b_prefix else ""
    return (f"<policy><name>{name}</name><endpoint-a><nsf>{a}</nsf>{ap}</endpoint-a>"
            f"<endpoint-b><nsf>{b}</nsf>{bp}</endpoint-b><crypto-profile>gcm</crypto-profile>"
            f"<ike><auth-method>{auth}</auth-method>{extra}</ike></policy>")


def flow_config(schema: YangSchema, nsfs: str = GW, policies: str = "", rws: str = "",
                profile: str = PROFILE) -> FlowConfig:
    xml = (f'<data xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>{nsfs}</nsfs>'
           f"<crypto-profiles>{profile}</crypto-profiles><policies>{policies}</policies>"
           f"<road-warriors>{rws}</road-warriors></flow-protection></data>")
    root = etree.fromstring(xml)
    schema.validate_config(root)
    cfg = parse_config(root)
    check_config(cfg)
    return cfg


def push(schema: YangSchema, desired: ike.Desired) -> dict[str, agent_ike.IkeConfig]:
    """Apply each NSF's edit to a datastore (libyang) and translate it like the agent."""
    out = {}
    for nsf, want in desired.nsfs.items():
        ds = Datastores(schema, [])
        ds.edit_config("running", ike.edit_config(want, (set(), set())))
        out[nsf] = agent_ike.parse(ds.get_config("running"),
                                   agent_ike.Options(libipsec=True))
    return out


def test_psk_pair_one_connection_many_children(schema: YangSchema, tmp_path: Path) -> None:
    cfg = flow_config(schema, policies=(
        policy_xml("p1", "gw1", "gw2", a_prefix="192.0.2.0/25", b_prefix="203.0.113.0/25")
        + policy_xml("p2", "gw2", "gw1", a_prefix="203.0.113.128/25",
                     b_prefix="192.0.2.128/25")))
    store = MemStore()
    creds = ike.Credentials(store, ControllerCA(tmp_path))
    d = ike.build(cfg, creds)
    vici = push(schema, d)
    c1 = vici["gw1"].conns["i2nsf-fp/gw1/gw2"]
    c2 = vici["gw2"].conns["i2nsf-fp/gw1/gw2"]
    # one IKE connection per pair; the smaller name initiates
    assert list(vici["gw1"].conns) == ["i2nsf-fp/gw1/gw2"]
    assert c1.autostartup == "start" and c2.autostartup == "add"
    assert sorted(c1.children) == ["fp/p1/0", "fp/p2/0"]
    ch = c1.message["children"]["fp/p2/0"]  # type: ignore[index]
    assert ch["local_ts"] == ["192.0.2.128/25"] and ch["remote_ts"] == ["203.0.113.128/25"]
    assert ch["esp_proposals"] == ["aes256gcm16-ecp256-noesn"]
    assert ch["rekey_time"] == "3240s" and ch["life_time"] == "3600s"
    assert c1.message["proposals"] == ["aes256gcm16-prfsha256-curve25519"]
    assert c1.message["local_addrs"] == ["198.51.100.1"]
    assert c1.message["remote_addrs"] == ["198.51.100.2"]
    # the same generated PSK on both ends, kept in the store
    s1, = vici["gw1"].secrets.values()
    s2, = vici["gw2"].secrets.values()
    assert s1.data == s2.data and len(s1.data) == 32
    assert store.meta["ike:psk:gw1:gw2"] == s1.data.hex()
    assert "data" not in repr(s1) or s1.data.hex() not in repr(s1)
    # stable: the same configuration again gives the same digests
    assert {n: w.digest() for n, w in ike.build(cfg, creds).nsfs.items()} == {
        n: w.digest() for n, w in d.nsfs.items()}
    assert d.spd_policy == {"fp/p1/0": "p1", "fp/p2/0": "p2"}


def test_certificates_from_the_controller_ca(schema: YangSchema, tmp_path: Path) -> None:
    cfg = flow_config(schema, policies=policy_xml("p1", "gw1", "gw2", "certificate"))
    ca = ControllerCA(tmp_path)
    d = ike.build(cfg, ike.Credentials(MemStore(), ca))
    vici = push(schema, d)  # the agent's translation checks identity and key/cert match
    c = vici["gw1"].conns["i2nsf-fp/gw1/gw2"]
    assert c.message["local"]["auth"] == "pubkey"  # type: ignore[index]
    assert c.message["remote"]["id"] == "198.51.100.2"  # type: ignore[index]
    assert len(vici["gw1"].keys) == 1 and not vici["gw1"].secrets
    for p in (ca.key_path, ca.dir / "nsf" / "gw1.key", ca.dir / "nsf" / "gw1.crt"):
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((ca.dir / "nsf" / "gw1.crt").read_bytes())
    assert ca.issued(cert)
    # rotation: a new certificate for the same identity; the old CA stays trusted
    old = cert.serial_number
    assert ca.reissue("nsf", "gw1", "198.51.100.1").cert.serial_number != old
    ca.rotate()
    assert len(ca.trust_anchors()) == 2 and ca.issued(cert)
    assert len(ike.build(cfg, ike.Credentials(MemStore(), ca)).nsfs["gw1"].pads[
        "fp/peer/gw2/cert"].findall(f"{ike.Q}peer-authentication/{ike.Q}digital-signature/"
                                    f"{ike.Q}ca-data")) == 2


def test_road_warrior(schema: YangSchema, tmp_path: Path) -> None:
    rw = ("<road-warrior><name>alice</name><gateway>gw2</gateway>"
          "<identity>alice.rw.example</identity><inner-address>10.99.0.5</inner-address>"
          "<crypto-profile>gcm</crypto-profile></road-warrior>")
    cfg = flow_config(schema, rws=rw)
    mgr_ca = ControllerCA(tmp_path)
    d = ike.build(cfg, ike.Credentials(MemStore(), mgr_ca))
    vici = push(schema, d)
    c = vici["gw2"].conns["i2nsf-fp/rw/alice"]
    assert c.autostartup == "add"
    assert c.message["remote_addrs"] == ["0.0.0.0"]
    assert c.message["remote"]["id"] == "fqdn:alice.rw.example"  # type: ignore[index]
    ch = c.message["children"]["fp/rw/alice/0"]  # type: ignore[index]
    assert ch["remote_ts"] == ["10.99.0.5/32"] and ch["local_ts"] == ["203.0.113.0/24"]
    conf = swanctl_conf(cfg.road_warriors["alice"], cfg.nsfs["gw2"], cfg.profiles["gcm"])
    assert "remote_addrs = 198.51.100.2" in conf and "local_ts = 10.99.0.5/32" in conf
    assert "proposals = aes256gcm16-prfsha256-curve25519" in conf


def test_checks(schema: YangSchema, tmp_path: Path) -> None:
    def errors(**kw: str) -> list[RpcError]:
        with pytest.raises(RpcError) as ei:
            flow_config(schema, **kw)
        return [ei.value, *ei.value.others]

    # policies of one pair must agree on what their shared IKE SA uses
    errs = errors(policies=policy_xml("p1", "gw1", "gw2", a_prefix="192.0.2.0/25")
                  + policy_xml("p2", "gw1", "gw2", "certificate", a_prefix="192.0.2.128/25"))
    assert errs[0].app_tag == "ike-pair-conflict" and "auth-method" in errs[0].message
    # missing pre-shared key file
    errs = errors(policies=policy_xml("p1", "gw1", "gw2", extra=(
        f"<pre-shared-key-file>{tmp_path}/none</pre-shared-key-file>")))
    assert errs[0].error_tag == "data-missing" and errs[0].app_tag == "missing-psk"
    short = tmp_path / "short"
    short.write_text("abc")
    errs = errors(policies=policy_xml("p1", "gw1", "gw2", extra=(
        f"<pre-shared-key-file>{short}</pre-shared-key-file>")))
    assert "at least 16" in errs[0].message
    # an operator certificate for the wrong identity
    ca = ControllerCA(tmp_path)
    cred = ca.issue("wrong", "198.51.100.99")
    write_private(tmp_path / "gw1.crt", cred.cert_pem)
    write_private(tmp_path / "gw1.key", cred.key_pem)
    nsfs = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"], (
        f"<ike><certificate-file>{tmp_path}/gw1.crt</certificate-file>"
        f"<private-key-file>{tmp_path}/gw1.key</private-key-file></ike>"))
        + nsf_xml("gw2", "198.51.100.2", ["203.0.113.0/24"]))
    errs = errors(nsfs=nsfs, policies=policy_xml("p1", "gw1", "gw2", "certificate"))
    assert errs[0].app_tag == "identity-mismatch"
    # IKE algorithms the agent cannot translate
    errs = errors(policies=policy_xml("p1", "gw1", "gw2"), profile=(
        "<crypto-profile><name>gcm</name><ike-sa><dh-group>99</dh-group></ike-sa>"
        "</crypto-profile>"))
    assert errs[0].app_tag == "unsupported-algorithm"
    # an unknown auth method is refused by the northbound YANG model itself
    with pytest.raises(RpcError):
        flow_config(schema, policies=policy_xml("p1", "gw1", "gw2", "kerberos"))


def test_road_warrior_with_a_virtual_ip_pool(schema: YangSchema, tmp_path: Path) -> None:
    rw = ("<road-warrior><name>bob</name><gateway>gw2</gateway>"
          "<identity>bob.rw.example</identity><pool>10.98.0.0/24</pool>"
          "<crypto-profile>gcm</crypto-profile></road-warrior>")
    cfg = flow_config(schema, rws=rw)
    d = ike.build(cfg, ike.Credentials(MemStore(), ControllerCA(tmp_path)))
    vici = push(schema, d)
    c = vici["gw2"].conns["i2nsf-fp/rw/bob"]
    assert c.message["pools"] == ["i2nsf-fp/rw/bob"]
    assert vici["gw2"].pools == {"i2nsf-fp/rw/bob": {"addrs": "10.98.0.0/24"}}
    ch = c.message["children"]["fp/rw/bob/0"]  # type: ignore[index]
    assert ch["remote_ts"] == ["dynamic"] and ch["local_ts"] == ["203.0.113.0/24"]
    conf = swanctl_conf(cfg.road_warriors["bob"], cfg.nsfs["gw2"], cfg.profiles["gcm"])
    assert "vips = 0.0.0.0" in conf and "local_ts = dynamic" in conf
    # overlapping pools of two road warriors on one gateway are refused
    rw2 = rw.replace("bob", "carol").replace("10.98.0.0/24", "10.98.0.128/25")
    with pytest.raises(RpcError) as ei:
        flow_config(schema, rws=rw + rw2)
    assert "overlaps" in ei.value.message
