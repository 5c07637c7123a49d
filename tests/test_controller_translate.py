"""Controller translation: policy → ietf-i2nsf-ikeless edits for both NSFs.

Each NSF is simulated by a real datastore (netconf_core.datastore, libyang validation) so that
every generated edit is applied with NETCONF edit-config semantics and the resulting running
configuration is checked twice: by libyang, and by the agent's own parser (nsf_agent.ikeless),
which must see mirror-image SAs on both sides (outbound of a == inbound of b).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
from lxml import etree

from controller.core import inventory
from controller.ipsec import model, translate
from controller.ipsec.checks import check_config
from controller.ipsec.keys import KeyManager
from controller.ipsec.model import FlowConfig, parse_config
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent import ikeless

FP = model.NS
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests"


@pytest.fixture(scope="module")
def schema() -> Iterator[YangSchema]:
    ctx = create_context([*IPSEC_MODULES, "i2nsf-flow-policy"])
    yield YangSchema(ctx)
    ctx.destroy()


class MemIndex:
    """SPI index over a set, standing in for the store."""

    def __init__(self) -> None:
        self.used: set[tuple[str, str, int]] = set()

    def spi_in_use(self, nsf: str, dst: str, spi: int) -> bool:
        return (nsf, dst, spi) in self.used


def nsf_xml(name: str, dp: str, prefixes: list[str], nat: str | None = None) -> str:
    pre = "".join(f"<protected-prefix>{p}</protected-prefix>" for p in prefixes)
    natx = f"<nat><public-address>{nat}</public-address></nat>" if nat else ""
    return (f"<nsf><name>{name}</name><management><address>192.0.2.250</address>"
            f"<username>admin</username><private-key-file>/k</private-key-file>"
            f"<host-key>{HOSTKEY}</host-key></management>"
            f"<data-plane-address>{dp}</data-plane-address>{pre}{natx}</nsf>")


def flow_config(schema: YangSchema, nsfs: str, policies: str = "", groups: str = "",
                profile: str = "<crypto-profile><name>gcm</name></crypto-profile>"
                ) -> FlowConfig:
    xml = (f'<data xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>{nsfs}</nsfs>'
           f"<crypto-profiles>{profile}</crypto-profiles>"
           f"<policies>{policies}</policies><policy-groups>{groups}</policy-groups>"
           "</flow-protection></data>")
    root = etree.fromstring(xml)
    schema.validate_config(root)  # the northbound module accepts it
    cfg = parse_config(root)
    check_config(cfg)
    return cfg


def policy_xml(name: str, a: str, b: str, extra: str = "", a_extra: str = "",
               b_extra: str = "") -> str:
    return (f"<policy><name>{name}</name><endpoint-a><nsf>{a}</nsf>{a_extra}</endpoint-a>"
            f"<endpoint-b><nsf>{b}</nsf>{b_extra}</endpoint-b>"
            f"<crypto-profile>gcm</crypto-profile>{extra}</policy>")


GW = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"])
      + nsf_xml("gw2", "198.51.100.2", ["203.0.113.0/24"]))


class Agent:
    """An NSF's running datastore."""

    def __init__(self, schema: YangSchema) -> None:
        self.ds = Datastores(schema, [])

    def apply(self, conf: etree._Element) -> None:
        self.ds.edit_config("running", conf)

    def parsed(self) -> ikeless.IkelessConfig:
        return ikeless.parse(self.ds.get_config("running"))


def apply_all(agents: dict[str, Agent], edits: translate.Edits) -> None:
    for nsf, conf in edits.items():
        agents[nsf].apply(conf)


def setup(schema: YangSchema, cfg: FlowConfig, name: str = "p1", policy_id: int = 7
          ) -> tuple[translate.Plan, KeyManager, dict[str, Agent]]:
    plan = translate.make_plan(cfg.all_policies()[name], cfg, policy_id)
    km = KeyManager(MemIndex())
    agents = {plan.a.name: Agent(schema), plan.b.name: Agent(schema)}
    return plan, km, agents


def check_twins(plan: translate.Plan, agents: dict[str, Agent],
                sas: list[translate.SaSpec], outbound_on_sender: bool = True) -> None:
    """Every SA is inbound on its receiver and (optionally) outbound on its sender, with the
    same SPI, keys and outer addresses on both."""
    pa, pb = agents[plan.a.name].parsed(), agents[plan.b.name].parsed()
    by = {"a": pa.sad_by_name(), "b": pb.sad_by_name()}
    for sa in sas:
        rx = by[sa.receiver][sa.name]
        assert rx.direction == "inbound"
        assert rx.spi == sa.spi
        assert rx.enc_key == sa.keys.enc_key
        if outbound_on_sender:
            tx = by[sa.sender][sa.name]
            assert tx.direction == "outbound"
            assert (tx.spi, tx.enc_key, tx.integ_key) == (rx.spi, rx.enc_key, rx.integ_key)
            # without NAT both NSFs see the same outer addresses
            if not (plan.a.nat or plan.b.nat):
                assert (tx.src, tx.dst) == (rx.src, rx.dst)


def test_install_gateway_to_gateway(schema: YangSchema) -> None:
    cfg = flow_config(schema, GW, policy_xml("p1", "gw1", "gw2"))
    plan, km, agents = setup(schema, cfg)
    sas = translate.new_sas(plan, km, 0)
    assert len(sas) == 2 and sas[0].spi != sas[1].spi
    apply_all(agents, translate.install_edit(plan, sas))
    check_twins(plan, agents, sas)
    a = agents["gw1"].parsed()
    assert len(a.spd) == 2
    out = next(e for e in a.sad if e.direction == "outbound")
    assert out.src == ipaddress.ip_address("198.51.100.1")
    assert out.dst == ipaddress.ip_address("198.51.100.2")
    assert out.selector.local_prefix == ipaddress.ip_network("192.0.2.0/24")
    assert out.selector.remote_prefix == ipaddress.ip_network("203.0.113.0/24")
    assert out.mode == "tunnel" and out.encap is None
    assert out.encryption is not None and out.encryption.number == 20
    assert len(out.enc_key) == 20  # AES-128-GCM: 16-byte key + 4-byte salt
    assert out.soft.time == 3240 and out.hard.time == 3600
    b = agents["gw2"].parsed()
    inb = next(e for e in b.sad if e.direction == "inbound")
    assert inb.selector.local_prefix == ipaddress.ip_network("203.0.113.0/24")
    # reqids tie each SA to the SPD entry of its direction on each NSF
    spd_b = {e.reqid: e.direction for e in b.spd}
    assert spd_b[inb.reqid] == "inbound"


def test_edit_shape_matches_rfc_example(schema: YangSchema) -> None:
    """Same element layout as tests/data/rfc9061/ikeless-g2g-gw1.xml."""
    cfg = flow_config(schema, GW, policy_xml("p1", "gw1", "gw2"))
    plan, km, _ = setup(schema, cfg)
    conf = translate.install_edit(plan, translate.new_sas(plan, km, 0))["gw1"]
    ns = {"i": ikeless.NS}
    sa = conf.find("i:ipsec-ikeless/i:sad/i:sad-entry/i:ipsec-sa-config", ns)
    assert [c.tag.rpartition("}")[2] for c in sa] == [
        "spi", "ext-seq-num", "seq-overflow", "anti-replay-window-size", "traffic-selector",
        "protocol-parameters", "mode", "esp-sa", "sa-lifetime-hard", "sa-lifetime-soft",
        "tunnel", "encapsulation-type"]
    key = sa.findtext("i:esp-sa/i:encryption/i:key", namespaces=ns)
    assert key is not None and len(key.split(":")) == 20


def test_make_before_break_rekey(schema: YangSchema) -> None:
    cfg = flow_config(schema, GW, policy_xml("p1", "gw1", "gw2"))
    plan, km, agents = setup(schema, cfg)
    g0 = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, g0))

    g1 = translate.new_sas(plan, km, 1)
    assert not {s.spi for s in g0} & {s.spi for s in g1}
    apply_all(agents, translate.add_inbound_edit(plan, g1))
    for nsf in ("gw1", "gw2"):
        sad = agents[nsf].parsed().sad
        assert sorted((e.direction, e.name.rsplit("/", 1)[1]) for e in sad) == [
            ("inbound", "0"), ("inbound", "1"), ("outbound", "0")]
    check_twins(plan, agents, g0)
    check_twins(plan, agents, g1, outbound_on_sender=False)

    apply_all(agents, translate.switch_outbound_edit(plan, g0, g1))
    for nsf in ("gw1", "gw2"):
        sad = agents[nsf].parsed().sad
        assert sorted((e.direction, e.name.rsplit("/", 1)[1]) for e in sad) == [
            ("inbound", "0"), ("inbound", "1"), ("outbound", "1")]
    check_twins(plan, agents, g1)

    apply_all(agents, translate.remove_old_edit(plan, g0))
    for nsf in ("gw1", "gw2"):
        p = agents[nsf].parsed()
        assert {e.name for e in p.sad} == {s.name for s in g1}
        assert len(p.spd) == 2  # SPD untouched by rekeys
    check_twins(plan, agents, g1)

    apply_all(agents, translate.delete_edit(plan, [s.name for s in g1]))
    for nsf in ("gw1", "gw2"):
        p = agents[nsf].parsed()
        assert p.spd == () and p.sad == ()
    # deleting again is harmless (remove, not delete)
    apply_all(agents, translate.delete_edit(plan, [s.name for s in g1]))


def test_nat_traversal(schema: YangSchema) -> None:
    nsfs = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"])
            + nsf_xml("br", "10.0.0.2", ["203.0.113.0/24"], nat="198.51.100.77"))
    cfg = flow_config(schema, nsfs, policy_xml("p1", "gw1", "br"))
    plan, km, agents = setup(schema, cfg)
    sas = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, sas))
    check_twins(plan, agents, sas)
    gw = agents["gw1"].parsed().sad_by_name()
    br = agents["br"].parsed().sad_by_name()
    a2b = next(s for s in sas if s.a2b)
    tx, rx = gw[a2b.name], br[a2b.name]
    # gw1 sends to the NAT's public address; br receives on its private one
    assert (str(tx.src), str(tx.dst)) == ("198.51.100.1", "198.51.100.77")
    assert (str(rx.src), str(rx.dst)) == ("198.51.100.1", "10.0.0.2")
    for e in (tx, rx):
        assert e.encap is not None and e.encap.kind == "espinudp"
        assert (e.encap.sport, e.encap.dport) == (4500, 4500)
    assert tx.encap is not None and tx.encap.oaddr == (ipaddress.ip_address("10.0.0.2"),)
    assert rx.encap is not None and rx.encap.oaddr == ()
    b2a = next(s for s in sas if not s.a2b)
    assert str(br[b2a.name].dst) == "198.51.100.1" and str(gw[b2a.name].src) == "198.51.100.77"


def test_nat_public_port_is_used_by_the_peer(schema: YangSchema) -> None:
    nat_nsf = nsf_xml("br", "10.0.0.2", ["203.0.113.0/24"]).replace(
        "</nsf>", "<nat><public-address>198.51.100.77</public-address>"
        "<public-port>14500</public-port></nat></nsf>")
    cfg = flow_config(schema, nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"]) + nat_nsf,
                      policy_xml("p1", "gw1", "br"))
    plan, km, agents = setup(schema, cfg)
    sas = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, sas))
    gw = agents["gw1"].parsed().sad_by_name()
    a2b = next(s for s in sas if s.a2b)
    b2a = next(s for s in sas if not s.a2b)
    assert gw[a2b.name].encap is not None
    assert (gw[a2b.name].encap.sport, gw[a2b.name].encap.dport) == (4500, 14500)
    assert (gw[b2a.name].encap.sport, gw[b2a.name].encap.dport) == (14500, 4500)


def test_transport_mode_cbc_hmac(schema: YangSchema) -> None:
    prof = ("<crypto-profile><name>gcm</name><encryption-algorithm>12</encryption-algorithm>"
            "<key-length>256</key-length><integrity-algorithm>12</integrity-algorithm>"
            "</crypto-profile>")
    nsfs = nsf_xml("h1", "198.51.100.1", []) + nsf_xml("h2", "198.51.100.2", [])
    cfg = flow_config(schema, nsfs, policy_xml(
        "p1", "h1", "h2", "<inner-protocol>17</inner-protocol><mode>transport</mode>",
        b_extra="<ports><start>53</start><end>53</end></ports>"), profile=prof)
    plan, km, agents = setup(schema, cfg)
    sas = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, sas))
    check_twins(plan, agents, sas)
    out = next(e for e in agents["h1"].parsed().sad if e.direction == "outbound")
    assert out.mode == "transport" and out.tunnel is None
    assert (str(out.src), str(out.dst)) == ("198.51.100.1", "198.51.100.2")
    assert len(out.enc_key) == 32 and len(out.integ_key) == 32
    assert out.selector.protocol == 17
    assert out.selector.remote_ports == (ikeless.PortRange(53, 53),)
    inb = next(e for e in agents["h2"].parsed().sad if e.direction == "inbound")
    assert inb.selector.local_ports == (ikeless.PortRange(53, 53),)


def test_several_prefixes_make_several_flows(schema: YangSchema) -> None:
    nsfs = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/25", "192.0.2.128/25"])
            + nsf_xml("gw2", "198.51.100.2", ["203.0.113.0/24", "2001:db8::/64"]))
    cfg = flow_config(schema, nsfs, policy_xml("p1", "gw1", "gw2"))
    plan, km, agents = setup(schema, cfg)
    assert len(plan.flows) == 2  # the IPv6 prefix has no IPv4 partner
    sas = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, sas))
    check_twins(plan, agents, sas)
    spd = agents["gw1"].parsed().spd
    assert len({e.reqid for e in spd}) == 4


def test_policy_group_mesh(schema: YangSchema) -> None:
    nsfs = "".join(nsf_xml(f"s{i}", f"198.51.100.{i}", [f"10.{i}.0.0/16"]) for i in range(1, 5))
    grp = ("<policy-group><name>tenant-x</name><member>s1</member><member>s2</member>"
           "<member>s3</member><crypto-profile>gcm</crypto-profile></policy-group>")
    cfg = flow_config(schema, nsfs, groups=grp)
    before = set(cfg.all_policies())
    assert before == {"tenant-x:s1:s2", "tenant-x:s1:s3", "tenant-x:s2:s3"}
    cfg2 = flow_config(schema, nsfs, groups=grp.replace(
        "<member>s3</member>", "<member>s3</member><member>s4</member>"))
    after = set(cfg2.all_policies())
    assert before < after
    assert after - before == {"tenant-x:s1:s4", "tenant-x:s2:s4", "tenant-x:s3:s4"}
    plan, km, agents = setup(schema, cfg2, "tenant-x:s1:s4")
    sas = translate.new_sas(plan, km, 0)
    apply_all(agents, translate.install_edit(plan, sas))
    check_twins(plan, agents, sas)


def test_names_round_trip() -> None:
    n = translate.sad_name("tenant-x:s1:s2", 3, False, 12)
    assert translate.parse_sad_name(n) == translate.SadRef("tenant-x:s1:s2", 3, False, 12)
    assert translate.parse_sad_name("out/tunnel/198.51.100.1/198.51.100.2") is None
    assert translate.parse_spd_name(translate.spd_name("p", 0, "inbound")) == (
        "p", 0, "inbound")
    assert translate.reqid(1, 0, "outbound") != translate.reqid(1, 0, "inbound")
    with pytest.raises(ValueError):
        translate.reqid(0, 0, "outbound")


def test_spi_unique_per_nsf_and_destination() -> None:
    idx = MemIndex()
    km = KeyManager(idx, spi_min=1000, spi_max=1003)
    got = {km.allocate_spi([("a", "198.51.100.2"), ("b", "198.51.100.2")]) for _ in range(4)}
    assert got == {1000, 1001, 1002, 1003}
    with pytest.raises(RuntimeError):
        km.allocate_spi([("a", "198.51.100.2")], attempts=50)
    # another destination on the same NSF is a separate space
    assert km.allocate_spi([("a", "198.51.100.3")]) in got
    km.release([("a", "198.51.100.2"), ("b", "198.51.100.2")], 1001)
    idx.used.add(("b", "198.51.100.2", 1001))  # ...but the store has it
    with pytest.raises(RuntimeError):
        km.allocate_spi([("b", "198.51.100.2")], attempts=50)
    with pytest.raises(ValueError):
        KeyManager(idx, spi_min=10)


# ---- bad input ---------------------------------------------------------------------------


def errors_of(fn: object) -> list[RpcError]:
    with pytest.raises(RpcError) as ei:
        fn()  # type: ignore[operator]
    return ei.value.all()


def test_yang_rejects_same_endpoints_and_bad_lifetimes(schema: YangSchema) -> None:
    errs = errors_of(lambda: flow_config(schema, GW, policy_xml("p1", "gw1", "gw1")))
    assert any("different NSFs" in e.message for e in errs)
    prof = ("<crypto-profile><name>gcm</name><lifetime-soft><time>3600</time></lifetime-soft>"
            "</crypto-profile>")
    errs = errors_of(lambda: flow_config(schema, GW, profile=prof))
    assert any("soft time lifetime" in e.message for e in errs)
    prof = "<crypto-profile><name>gcm</name><integrity-algorithm>12</integrity-algorithm>" \
           "</crypto-profile>"
    errs = errors_of(lambda: flow_config(schema, GW, profile=prof))
    assert any("AEAD" in e.message for e in errs)
    errs = errors_of(lambda: flow_config(schema, GW, policy_xml("p1", "gw1", "nope")))
    assert errs[0].error_tag == "data-missing"


def test_semantic_checks(schema: YangSchema) -> None:
    # the IKE case is supported (controller/ipsec/ike_config.py); its own checks still apply
    errs = errors_of(lambda: flow_config(schema, GW, policy_xml(
        "p1", "gw1", "gw2", "<ike><pre-shared-key-file>/nonexistent/psk"
        "</pre-shared-key-file></ike>")))
    assert errs[0].error_tag == "data-missing" and "pre-shared key" in errs[0].message

    errs = errors_of(lambda: flow_config(schema, GW, policy_xml(
        "p1", "gw1", "gw2", "<lifetime-soft><time>4000</time></lifetime-soft>")))
    assert "soft time lifetime (4000)" in errs[0].message

    two = policy_xml("p1", "gw1", "gw2") + policy_xml(
        "p2", "gw2", "gw1", b_extra="<prefix>192.0.2.128/25</prefix>")
    errs = errors_of(lambda: flow_config(schema, GW, two))
    assert errs[0].app_tag == "overlapping-selectors"
    # disjoint ports do not overlap
    ok = policy_xml("p1", "gw1", "gw2", "<inner-protocol>6</inner-protocol>",
                    b_extra="<ports><start>80</start><end>80</end></ports>") + policy_xml(
        "p2", "gw1", "gw2", "<inner-protocol>6</inner-protocol>",
        b_extra="<ports><start>443</start><end>443</end></ports>")
    assert len(flow_config(schema, GW, ok).policies) == 2

    nat = (nsf_xml("gw1", "198.51.100.1", ["192.0.2.0/24"])
           + nsf_xml("gw2", "10.0.0.2", ["203.0.113.0/24"], nat="198.51.100.9"))
    errs = errors_of(lambda: flow_config(schema, nat, policy_xml(
        "p1", "gw1", "gw2", "<mode>transport</mode>")))
    assert "NAT" in errs[0].message

    prof = ("<crypto-profile><name>gcm</name><key-length>100</key-length></crypto-profile>")
    errs = errors_of(lambda: flow_config(schema, GW, profile=prof))
    assert "key-length 128 or 192 or 256" in errs[0].message

    nopfx = nsf_xml("gw1", "198.51.100.1", []) + nsf_xml("gw2", "198.51.100.2", [])
    errs = errors_of(lambda: flow_config(schema, nopfx, policy_xml("p1", "gw1", "gw2")))
    assert "no prefix pair" in errs[0].message


def test_keys_never_in_repr(schema: YangSchema) -> None:
    cfg = flow_config(schema, GW, policy_xml("p1", "gw1", "gw2"))
    plan, km, _ = setup(schema, cfg)
    sas = translate.new_sas(plan, km, 0)
    text = repr(sas) + str(sas[0].keys) + repr(plan)
    for sa in sas:
        assert sa.keys.enc_key.hex() not in text
        assert sa.keys.iv.hex() not in text


def test_model_round_trips_through_dicts(schema: YangSchema) -> None:
    nsfs = GW.replace("<private-key-file>/k</private-key-file>", "<password>s3cret</password>")
    cfg = flow_config(schema, nsfs + nsf_xml("br", "10.0.0.2", ["10.9.0.0/16"],
                                             nat="198.51.100.9"),
                      policy_xml("p1", "gw1", "gw2", "<lifetime-hard><bytes>100000"
                                 "</bytes></lifetime-hard><lifetime-soft><bytes>9000</bytes>"
                                 "</lifetime-soft>",
                                 a_extra="<ports><start>1</start><end>2</end></ports>"))
    for n in cfg.nsfs.values():
        d = n.to_dict()
        assert "s3cret" not in str(d)
        assert model.Nsf.from_dict(d) == inventory.nsf_without_secret(n)
    for p in cfg.profiles.values():
        assert model.CryptoProfile.from_dict(p.to_dict()) == p
    for pol in cfg.policies.values():
        assert model.Policy.from_dict(pol.to_dict()) == pol
