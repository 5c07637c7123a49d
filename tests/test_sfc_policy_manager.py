"""SFC Policy Manager translation and SFC Catalog Manager scaling, without NSFs (fast).

The configurations are validated by libyang against i2nsf-sfc-policy first, so every XML
document here is one a NETCONF client could send."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from lxml import etree

from controller.sfc import paths
from controller.sfc.catalog import CatalogError, CatalogManager, Instance
from controller.sfc.model import NS, parse_config
from controller.sfc.paths import NextHop, SpiAllocator, compile
from netconf_core.errors import RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context


@pytest.fixture(autouse=True)
def shared_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The translation in general (one instance on several paths, the default); the
    one-hop-per-instance mode has its own test."""
    monkeypatch.setattr(paths, "SHARED_PROXIES", True)


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context(["i2nsf-sfc-policy"]))


TYPES = """
<sf-types>
  <sf-type><name>avc</name></sf-type>
  <sf-type><name>firewall</name>
    <scaling><high-watermark>70</high-watermark><low-watermark>20</low-watermark>
      <min-instances>1</min-instances><max-instances>2</max-instances>
      <hold-time>1000</hold-time></scaling></sf-type>
  <sf-type><name>ids</name></sf-type>
  <sf-type><name>dpi</name></sf-type>
  <sf-type><name>ddos</name></sf-type>
  <sf-type><name>anti-spoofing</name></sf-type>
  <sf-type><name>ips</name><steering-target>true</steering-target></sf-type>
</sf-types>
<forwarders>
  <forwarder><name>edge</name><sff-id>1</sff-id><locator>192.0.2.1</locator>
    <classifier>true</classifier><ingress-interface>a</ingress-interface></forwarder>
  <forwarder><name>core</name><sff-id>2</sff-id><locator>192.0.2.2</locator></forwarder>
</forwarders>
<trust-levels>
  <trust-level><name>trusted</name><source-prefix>198.51.100.0/25</source-prefix>
  </trust-level>
  <trust-level><name>untrusted</name><source-prefix>198.51.100.128/25</source-prefix>
    <source-prefix>203.0.113.0/24</source-prefix></trust-level>
</trust-levels>
"""

CHAINS = """
<chains>
  <chain><name>sfp-1</name><sf-type>avc</sf-type><sf-type>firewall</sf-type>
    <sf-type>ids</sf-type></chain>
  <chain><name>sfp-2</name><sf-type>avc</sf-type><sf-type>firewall</sf-type>
    <sf-type>ddos</sf-type><sf-type>ids</sf-type></chain>
  <chain><name>light</name><sf-type>ids</sf-type></chain>
  <chain><name>deep</name><spi>300</spi><sf-type>anti-spoofing</sf-type>
    <sf-type>firewall</sf-type><sf-type>dpi</sf-type></chain>
</chains>
<policies>
  <policy><name>web</name><priority>10</priority>
    <match><destination-prefix>192.0.2.100/32</destination-prefix><protocol>6</protocol>
      <destination-port><start>80</start></destination-port></match>
    <chain>sfp-1</chain></policy>
  <policy><name>trusted</name><match><trust-level>trusted</trust-level></match>
    <chain>light</chain></policy>
  <policy><name>untrusted</name><match><trust-level>untrusted</trust-level></match>
    <chain>deep</chain></policy>
</policies>
<reclassification>
  <rule><name>ddos</name><from-sf-type>ids</from-sf-type>
    <inspection-result>ddos-suspected</inspection-result><from-chain>sfp-1</from-chain>
    <to-chain>sfp-2</to-chain></rule>
</reclassification>
"""


def doc(body: str) -> etree._Element:
    return etree.fromstring(f'<sfc xmlns="{NS}">{body}</sfc>')


def valid(schema: YangSchema, body: str) -> etree._Element:
    root = doc(body)
    data = etree.Element("data")
    data.append(root)
    schema.validate_config(data)
    return root


def inst(name: str, t: str, fwd: str = "core", cap: int = 1000, **kw: object) -> Instance:
    loc = {"edge": "192.0.2.1", "core": "192.0.2.2"}[fwd]
    return Instance(name, t, "dms-1", ipaddress.ip_address(loc), cap, forwarder=fwd,
                    to_sf=f"{name[:10]}-i", from_sf=f"{name[:10]}-o",
                    sf_mac="02:00:00:00:00:01", **kw)  # type: ignore[arg-type]


def full_catalog() -> CatalogManager:
    cat = CatalogManager(clock=lambda: 0.0)
    for t in ("avc", "firewall", "ids", "dpi", "ddos", "anti-spoofing", "ips"):
        cat.register(inst(f"{t}-1", t, "core" if t != "avc" else "edge"))
    # ids re-classifies (rule ddos): an ids instance serves one hop (sfp-1, sfp-2, light)
    for n in (2, 3):
        cat.register(inst(f"ids-{n}", "ids"))
    return cat


def test_yang_accepts_the_seed_configuration(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    assert cfg.chains["sfp-2"].types == ("avc", "firewall", "ddos", "ids")
    assert cfg.types["firewall"].scaling.high == 70
    assert cfg.policies["web"].match.dport is not None
    assert cfg.policies["web"].match.dport.end == 80
    assert cfg.forwarders["edge"].classifier


@pytest.mark.parametrize("bad, why", [
    ("<chains><chain><name>x</name><sf-type>nat</sf-type></chain></chains>", "leafref"),
    ("<sf-types><sf-type><name>fw</name><scaling><high-watermark>20</high-watermark>"
     "<low-watermark>30</low-watermark></scaling></sf-type></sf-types>", "watermark"),
])
def test_yang_refuses(schema: YangSchema, bad: str, why: str) -> None:
    with pytest.raises(RpcError) as ei:
        valid(schema, bad)
    assert ei.value.error_tag in ("data-missing", "invalid-value", "operation-failed",
                                  "bad-element"), ei.value


def test_paths_spis_hops_and_tables(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    r, assignment = compile(cfg, full_catalog(), SpiAllocator())
    p1 = r.path_by_name("sfp-1")
    deep = r.path_by_name("deep")
    assert p1 is not None and deep is not None
    assert deep.spi == 300  # configured
    assert [h.si for h in p1.hops] == [255, 254, 253]
    assert [h.sf_type for h in p1.hops] == ["avc", "firewall", "ids"]
    assert len(set(assignment.values())) == len(assignment) == 5  # 4 chains + ips steering
    edge, core = r.agents["edge"], r.agents["core"]
    # avc is behind edge's proxy: edge sends to it, core sends to edge
    assert edge.table[(p1.spi, 255)] == (NextHop("proxy", ipaddress.ip_address("192.0.2.1"),
                                                 100, "avc-1"),)
    assert core.table[(p1.spi, 255)] == (NextHop("sff", ipaddress.ip_address("192.0.2.1"),
                                                 100),)
    assert edge.table[(p1.spi, 254)][0].kind == "sff"
    assert core.table[(p1.spi, 254)][0].instance == "firewall-1"
    assert core.table[(p1.spi, 252)] == (NextHop("terminate"),)
    # one instance on several paths: one entry per hop, the lowest named after the instance
    p2_ = r.path_by_name("sfp-2")
    assert p2_ is not None and p1.spi < p2_.spi
    assert {n: (x.spi, x.si) for n, x in edge.proxies.items()} == {
        "avc-1": (p1.spi, 255), f"avc-1-{p2_.spi}-255": (p2_.spi, 255)}
    assert core.proxies["firewall-1"].spi == p1.spi
    assert {(x.spi, x.si) for x in core.proxies.values() if x.instance == "firewall-1"} == {
        (p1.spi, 254), (p2_.spi, 254), (300, 254)}
    fw = {(x.to_sf, x.from_sf, x.sf_mac) for x in core.proxies.values()
          if x.instance == "firewall-1"}
    assert len(fw) == 1  # the entries share the instance whole (the agent requires it)
    # ids re-classifies: one hop per instance, never one ids on two paths
    ids_hops = [(x.instance, x.spi) for x in core.proxies.values() if x.instance.startswith("ids")]
    assert len(ids_hops) == 3 and len({i for i, _s in ids_hops}) == 3
    # classifier: priorities, trust levels expanded into source prefixes
    names = [(x.name, str(x.src), x.spi) for x in edge.rules]
    light = r.path_by_name("light")
    assert light is not None
    assert names == [("web", "None", p1.spi), ("trusted", "198.51.100.0/25", light.spi),
                     ("untrusted", "198.51.100.128/25", 300),
                     ("untrusted-2", "203.0.113.0/24", 300)]
    assert not core.rules and core.reclass == edge.reclass  # SFFs re-classify too
    p2 = r.path_by_name("sfp-2")
    assert p2 is not None
    ips = r.path_by_name("ips", "steering")
    assert ips is not None and core.steering["ips"] == (ips.spi, 255)
    # re-classification only for the rule; NSF-triggered steering to ips is the agents'
    # next-function map (classifier/next-function), on every SFF, not a re-classification
    assert [(e.result, e.from_spi, e.spi) for e in edge.reclass] == [
        ("ddos-suspected", p1.spi, p2.spi)]
    assert edge.steering == core.steering == {"ips": (ips.spi, 255)}
    from controller.sfc import render

    x = render.config_xml(render.agent_config(core))
    nf = x.findall(f".//{{{render.NS}}}classifier/{{{render.NS}}}next-function")
    assert [(e.findtext(f"{{{render.NS}}}sf-type"), e.findtext(f"{{{render.NS}}}spi"),
             e.findtext(f"{{{render.NS}}}first-hop")) for e in nf] == [
        ("ips", str(ips.spi), str(core.forwarder.locator))]
    assert not [e for e in x.iter(f"{{{render.NS}}}result") if e.text == "ips"]
    assert paths.loops(r) == []


def test_spis_are_stable_and_a_changed_chain_gets_a_new_one(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    alloc = SpiAllocator()
    r1, a1 = compile(cfg, full_catalog(), alloc)
    alloc.commit(a1)
    _r2, a2 = compile(cfg, full_catalog(), alloc)
    assert a1 == a2
    changed = CHAINS.replace("<sf-type>ids</sf-type></chain>\n  <chain><name>sfp-2",
                             "<sf-type>dpi</sf-type><sf-type>ids</sf-type></chain>\n"
                             "  <chain><name>sfp-2")
    r3, _a3 = compile(parse_config(valid(schema, TYPES + changed)), full_catalog(), alloc)
    old = r1.path_by_name("sfp-1")
    new = r3.path_by_name("sfp-1")
    assert old is not None and new is not None and old.spi != new.spi
    assert r3.path_by_name("light").spi == r1.path_by_name("light").spi  # type: ignore[union-attr]


def test_spi_exhaustion(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS + "<spi-range-start>10</spi-range-start>"
                             "<spi-range-end>12</spi-range-end>"))
    with pytest.raises(RpcError) as ei:
        compile(cfg, full_catalog(), SpiAllocator())
    assert "SPI exhaustion" in ei.value.message and ei.value.error_tag == "resource-denied"


def test_two_chains_with_one_spi(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS.replace(
        "<chain><name>light</name>", "<chain><name>light</name><spi>300</spi>")))
    with pytest.raises(RpcError, match="both configured with SPI 300"):
        compile(cfg, full_catalog(), SpiAllocator())


def test_cyclic_reclassification(schema: YangSchema) -> None:
    # without from-chain the rule also applies on sfp-2 (which contains ids): sfp-2 -> sfp-2
    body = TYPES + CHAINS.replace("<from-chain>sfp-1</from-chain>", "")
    with pytest.raises(RpcError, match="cyclic re-classification: sfp-2 -> sfp-2"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())
    two = TYPES + CHAINS.replace("</reclassification>", """
      <rule><name>back</name><from-sf-type>ddos</from-sf-type>
        <inspection-result>clean</inspection-result><to-chain>sfp-1</to-chain></rule>
      </reclassification>""")
    with pytest.raises(RpcError, match="sfp-1 -> sfp-2 -> sfp-1"):
        compile(parse_config(valid(schema, two)), full_catalog(), SpiAllocator())


def test_ambiguous_reclassification(schema: YangSchema) -> None:
    body = TYPES + CHAINS.replace("</reclassification>", """
      <rule><name>other</name><from-sf-type>ids</from-sf-type>
        <inspection-result>ddos-suspected</inspection-result><from-chain>sfp-1</from-chain>
        <to-chain>deep</to-chain></rule></reclassification>""")
    with pytest.raises(RpcError, match="both act on result"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())


def test_chain_with_no_possible_instance(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    cat = full_catalog()
    cat.unregister("dpi-1")  # and no DMS ever registered dpi → nobody can make one
    cat._known_dms.pop("dpi")
    with pytest.raises(RpcError) as ei:
        compile(cfg, cat, SpiAllocator())
    assert "chain deep: no instance of type 'dpi'" in ei.value.message
    assert ei.value.app_tag == "no-instance-possible"


def test_chain_waiting_for_the_dms_is_not_classified(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    cat = full_catalog()
    cat.unregister("dpi-1")  # dms-1 made one before: it can make another
    r, _ = compile(cfg, cat, SpiAllocator())
    deep = r.path_by_name("deep")
    assert deep is not None and not deep.ready
    assert all(x.spi != deep.spi for x in r.agents["edge"].rules)
    assert r.waiting == ["type dpi: waiting for an instance from the DMS"]


def test_no_classifier(schema: YangSchema) -> None:
    body = (TYPES + CHAINS).replace("<classifier>true</classifier>", "")
    with pytest.raises(RpcError, match="no forwarder is a classifier"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())
    body = (TYPES + CHAINS).replace("<ingress-interface>a</ingress-interface>", "")
    with pytest.raises(RpcError, match="names no ingress-interface"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())
    body = (TYPES + CHAINS).replace("<classifier>true</classifier>", "")
    with pytest.raises(RpcError, match="no forwarder is a classifier"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())


def test_policy_outside_its_trust_level(schema: YangSchema) -> None:
    body = TYPES + CHAINS.replace(
        "<match><trust-level>trusted</trust-level></match>",
        "<match><source-prefix>203.0.113.0/24</source-prefix>"
        "<trust-level>trusted</trust-level></match>")
    with pytest.raises(RpcError, match="no source prefix of it is at trust level"):
        compile(parse_config(valid(schema, body)), full_catalog(), SpiAllocator())


def test_load_balancing_weights_and_draining(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    cat = full_catalog()
    cat.report_load("firewall-1", pps=900)  # 90 % busy
    cat.register(inst("firewall-2", "firewall", "core"))
    r, _ = compile(cfg, cat, SpiAllocator())
    p1 = r.path_by_name("sfp-1")
    assert p1 is not None
    hops = r.agents["core"].table[(p1.spi, 254)]
    assert [(h.instance, h.weight) for h in hops] == [("firewall-1", 10), ("firewall-2", 100)]
    assert r.agents["edge"].table[(p1.spi, 254)] == (
        NextHop("sff", ipaddress.ip_address("192.0.2.2"), 110),)
    fw2 = cat.instances["firewall-2"]
    cat.instances["firewall-2"] = fw2.__class__(**{**fw2.__dict__, "state": "draining"})
    r, _ = compile(cfg, cat, SpiAllocator())
    hops = r.agents["core"].table[(p1.spi, 254)]
    assert [(h.instance, h.weight) for h in hops] == [("firewall-1", 10), ("firewall-2", 0)]


# ---- Catalog Manager ------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_catalog_refuses_bad_registrations() -> None:
    cat = CatalogManager()
    cat.register(inst("fw-1", "firewall"))
    with pytest.raises(CatalogError, match="already registered as type"):
        cat.register(inst("fw-1", "ids"))
    with pytest.raises(CatalogError, match="capacity must be positive"):
        cat.register(inst("fw-2", "firewall", cap=0))
    with pytest.raises(CatalogError, match="no instance"):
        cat.report_load("nope", 1.0)
    with pytest.raises(CatalogError, match="no instance"):
        cat.unregister("nope")
    assert list(cat.instances) == ["fw-1"]


def test_catalog_scale_out_with_hysteresis_then_scale_in(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES))
    fw = cfg.types["firewall"]  # high 70, low 20, min 1, max 2, hold 1 s
    clock = Clock()
    changes: list[str] = []
    cat = CatalogManager(clock=clock, on_change=changes.append)
    cat.register(inst("fw-1", "firewall"))
    cat.report_load("fw-1", 900)
    assert cat.evaluate([fw]) == []  # above, but not for hold-time yet
    clock.t += 0.5
    cat.report_load("fw-1", 650)  # dips below the watermark: the hold restarts
    assert cat.evaluate([fw]) == []
    clock.t += 0.5
    cat.report_load("fw-1", 900)
    assert cat.evaluate([fw]) == []
    clock.t += 1.0
    reqs = cat.evaluate([fw])
    assert [(r.kind, r.sf_type, r.dms) for r in reqs] == [("create", "firewall", "dms-1")]
    clock.t += 1.0
    assert cat.evaluate([fw]) == []  # pending: not asked twice
    cat.register(inst("fw-2", "firewall"))
    clock.t += 1.0
    assert cat.evaluate([fw]) == []  # at max-instances
    # load falls: one instance drains (weight 0), then is removed once idle
    cat.report_load("fw-1", 50)
    cat.report_load("fw-2", 40)
    assert cat.evaluate([fw]) == []
    clock.t += 1.1
    assert cat.evaluate([fw]) == []
    assert cat.instances["fw-2"].state == "draining"
    assert changes[-1] == "instance fw-2 (firewall) draining"
    assert [i.name for i in cat.by_type("firewall")] == ["fw-1"]
    clock.t += 0.1
    cat.report_load("fw-2", 0)
    reqs = cat.evaluate([fw])
    assert [(r.kind, r.instance) for r in reqs] == [("remove", "fw-2")]
    assert cat.evaluate([fw]) == []  # asked once
    cat.unregister("fw-2")
    clock.t += 5
    cat.report_load("fw-1", 10)
    assert cat.evaluate([fw]) == []  # min-instances 1


def test_catalog_keeps_instances_between_the_watermarks(schema: YangSchema) -> None:
    fw = parse_config(valid(schema, TYPES)).types["firewall"]
    clock = Clock()
    cat = CatalogManager(clock=clock)
    cat.register(inst("fw-1", "firewall", cap=100))
    cat.register(inst("fw-2", "firewall", cap=100))
    cat.report_load("fw-1", 30)
    cat.report_load("fw-2", 50)  # mean 40 %: between 20 and 70
    for _ in range(3):
        clock.t += 1.0
        assert cat.evaluate([fw]) == []
    assert cat.instances["fw-1"].state == cat.instances["fw-2"].state == "active"


def test_catalog_asks_for_the_minimum(schema: YangSchema) -> None:
    cfg = parse_config(valid(schema, TYPES.replace(
        "<sf-type><name>dpi</name></sf-type>",
        "<sf-type><name>dpi</name><scaling><dms>dms-9</dms></scaling></sf-type>")))
    cat = CatalogManager(clock=Clock())
    reqs = cat.evaluate([cfg.types["dpi"]])
    assert [(r.kind, r.dms) for r in reqs] == [("create", "dms-9")]
    assert cat.evaluate([cfg.types["dpi"]]) == []


def test_catalog_dump_restore() -> None:
    cat = CatalogManager()
    cat.register(inst("fw-1", "firewall", capabilities=("stateful",)))
    again = CatalogManager()
    again.restore(cat.dump())
    a, b = again.instances["fw-1"].to_dict(), cat.instances["fw-1"].to_dict()
    a.pop("registered"), b.pop("registered")  # restarts with the new process's clock
    assert a == b
    assert again.dms_for(parse_config(None).types.get("x") or _t("firewall")) == "dms-1"


def _t(name: str):  # type: ignore[no-untyped-def]
    from controller.sfc.model import SfType
    return SfType(name)


# ---- make-before-break steps ------------------------------------------------------------------

def test_steps_add_switch_remove(schema: YangSchema) -> None:
    from controller.sfc import render

    cfg = parse_config(valid(schema, TYPES + CHAINS))
    alloc = SpiAllocator()
    r1, a1 = compile(cfg, full_catalog(), alloc)
    alloc.commit(a1)
    old = render.configs(r1)
    assert render.steps(old, render.configs(compile(cfg, full_catalog(), alloc)[0])) == []
    # first push: entries (no classifier), then the classifier
    first = render.steps({}, old)
    assert len(first) == 2
    assert not first[0]["edge"].rules and first[0]["edge"].table  # type: ignore[union-attr]
    assert first[1]["edge"].rules  # type: ignore[union-attr]
    assert first[1]["core"].reclass and not first[1]["core"].rules  # type: ignore[union-attr]
    # sfp-1 gets another list of types: new SPI installed next to the old, classifier
    # switched, old entries removed
    changed = CHAINS.replace("<sf-type>ids</sf-type></chain>\n  <chain><name>sfp-2",
                             "<sf-type>dpi</sf-type><sf-type>ids</sf-type></chain>\n"
                             "  <chain><name>sfp-2")
    r2, _ = compile(parse_config(valid(schema, TYPES + changed)), full_catalog(), alloc)
    old_spi = r1.path_by_name("sfp-1").spi  # type: ignore[union-attr]
    new_spi = r2.path_by_name("sfp-1").spi  # type: ignore[union-attr]
    s = render.steps(old, render.configs(r2))
    assert len(s) == 3
    core_install = s[0]["core"]
    assert core_install is not None
    assert (old_spi, 254) in core_install.table and (new_spi, 254) in core_install.table
    edge_install = s[0]["edge"]
    assert edge_install is not None and {x.spi for x in edge_install.rules} >= {old_spi}
    edge_switch = s[1]["edge"]
    assert edge_switch is not None
    assert new_spi in {x.spi for x in edge_switch.rules}
    assert old_spi not in {x.spi for x in edge_switch.rules}
    assert (old_spi, 254) in edge_switch.table  # in flight packets still forwarded
    core_clean = s[2]["core"]
    assert core_clean is not None and (old_spi, 254) not in core_clean.table


def test_steps_weights_only_is_one_step(schema: YangSchema) -> None:
    from controller.sfc import render

    cfg = parse_config(valid(schema, TYPES + CHAINS))
    cat = full_catalog()
    alloc = SpiAllocator()
    r1, a1 = compile(cfg, cat, alloc)
    alloc.commit(a1)
    cat.report_load("firewall-1", 500)
    r2, _ = compile(cfg, cat, alloc)
    s = render.steps(render.configs(r1), render.configs(r2))
    assert len(s) == 1


def test_config_xml_shape() -> None:
    from controller.sfc import render

    loc = ipaddress.ip_address("192.0.2.2")
    c = render.AgentConfig(2, "192.0.2.2", table={
        (7, 255): (NextHop("proxy", loc, 3, "fw-1"), NextHop("sff", loc, 2)),
        (7, 254): (NextHop("terminate"),)})
    x = etree.tostring(render.config_xml(c)).decode()
    assert 'operation="replace"' in x
    assert "<terminate/>" in x
    assert x.count("<next-hop>") == 1 and "<weight>5</weight>" in x


def test_rendered_agent_configuration_is_valid_i2nsf_sfc_nsf(schema: YangSchema) -> None:
    """What the controller pushes passes the agents' own YANG validation."""
    from controller.sfc import render

    nsf = YangSchema(create_context(["i2nsf-sfc-nsf"]))
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    r, _ = compile(cfg, full_catalog(), SpiAllocator())
    for name, c in render.configs(r).items():
        x = render.config_xml(c)
        data = etree.Element("data")
        for child in x:
            child.attrib.pop("{urn:ietf:params:xml:ns:netconf:base:1.0}operation", None)
            data.append(child)
        nsf.validate_config(data)
        assert data.find(f"{{{render.NS}}}sfc/{{{render.NS}}}forwarder") is not None, name


def test_pushed_state_round_trips_through_json(schema: YangSchema) -> None:
    import json

    from controller.sfc import render

    cfg = parse_config(valid(schema, TYPES + CHAINS))
    r, _ = compile(cfg, full_catalog(), SpiAllocator())
    for c in render.configs(r).values():
        back = render.from_json(json.loads(json.dumps(render.to_json(c))))
        assert back.key() == c.key()


def test_instances_are_shared_out_when_proxies_cannot_be_shared(
        schema: YangSchema, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "SHARED_PROXIES", False)
    cfg = parse_config(valid(schema, TYPES + CHAINS))
    cat = full_catalog()  # one instance per type: sfp-1 and sfp-2 both want firewall, ids
    r, _ = compile(cfg, cat, SpiAllocator())
    p1, p2 = r.path_by_name("sfp-1"), r.path_by_name("sfp-2")
    assert p1 is not None and p2 is not None
    assert not (p1.ready and p2.ready)  # one ids instance cannot serve light, sfp-1, sfp-2
    assert r.demand["firewall"] == 3 and r.demand["ids"] == 3  # sfp-1, sfp-2, deep / light
    for t in ("firewall", "ids", "avc"):
        cat.register(inst(f"{t}-2", t, "edge" if t == "avc" else "core"))
        cat.register(inst(f"{t}-3", t, "edge" if t == "avc" else "core"))
    r, _ = compile(cfg, cat, SpiAllocator())
    p1, p2 = r.path_by_name("sfp-1"), r.path_by_name("sfp-2")
    assert p1 is not None and p2 is not None and p1.ready and p2.ready
    used = [i.name for p in r.paths.values() for h in p.hops for i, _w in h.instances
            if h.sf_type == "firewall"]
    assert sorted(used) == ["firewall-1", "firewall-2", "firewall-3"]  # one hop each
    proxies = [p for a in r.agents.values() for p in a.proxies.values()]
    assert len(proxies) == len({p.instance for p in proxies})  # one entry per instance
    assert all(p.name == p.instance for p in proxies)  # named by it: stable across moves


def test_catalog_asks_for_what_the_paths_need(schema: YangSchema) -> None:
    fw = parse_config(valid(schema, TYPES)).types["firewall"]  # min 1, max 2
    cat = CatalogManager(clock=Clock())
    cat.register(inst("fw-1", "firewall"))
    assert [r.kind for r in cat.evaluate([fw], {"firewall": 2})] == ["create"]
    assert cat.evaluate([fw], {"firewall": 2}) == []  # pending


def test_shared_instance_keeps_its_main_entry_and_socket(schema: YangSchema) -> None:
    """An instance that gets a second path keeps its main entry (named after it, with the
    result socket); the install step adds the new entry next to it, nothing renamed."""
    from controller.sfc import render

    one = """<chains><chain><name>a</name><sf-type>firewall</sf-type></chain></chains>"""
    two = one.replace("</chains>", "<chain><name>b</name><sf-type>avc</sf-type>"
                      "<sf-type>firewall</sf-type></chain></chains>")
    cat = full_catalog()
    fw = cat.instances["firewall-1"]
    cat.instances["firewall-1"] = replace(fw, report_socket="/run/fw-1.sock")
    alloc = SpiAllocator()
    r1, a1 = compile(parse_config(valid(schema, TYPES + one)), cat, alloc)
    alloc.commit(a1)
    r2, _ = compile(parse_config(valid(schema, TYPES + two)), cat, alloc)
    old, new = render.configs(r1), render.configs(r2)
    a, b = r2.path_by_name("a"), r2.path_by_name("b")
    assert a is not None and b is not None
    core = new["core"].proxies
    assert core["firewall-1"].report_socket == "/run/fw-1.sock"
    assert (core["firewall-1"].spi, core["firewall-1"].si) == (a.spi, 255)
    assert f"firewall-1-{b.spi}-254" in core
    assert core[f"firewall-1-{b.spi}-254"].report_socket is None  # one socket per instance
    assert old["core"].proxies["firewall-1"] == core["firewall-1"]  # unchanged entry
    install = render.steps(old, new)[0]["core"]
    assert install is not None and set(install.proxies) == set(core)


def test_an_sff_gaining_an_instance_is_ready_before_others_send_to_it(
        schema: YangSchema) -> None:
    """A new instance on forwarder `far`: `far` gets its proxy and entries in one step, and
    only then (next step) does `edge` (no firewall of its own) add `far` to its next hops —
    else `far` would get flows while it still forwards by its old entry."""
    from controller.sfc import render

    types = TYPES.replace("</forwarders>", "<forwarder><name>far</name><sff-id>3</sff-id>"
                          "<locator>192.0.2.3</locator></forwarder></forwarders>")
    cfg = parse_config(valid(schema, types + CHAINS))
    cat = full_catalog()
    alloc = SpiAllocator()
    r1, a1 = compile(cfg, cat, alloc)
    alloc.commit(a1)
    cat.register(Instance("firewall-9", "firewall", "dms-1", ipaddress.ip_address("192.0.2.3"),
                          1000, forwarder="far", to_sf="fw9-i", from_sf="fw9-o",
                          sf_mac="02:00:00:00:00:09"))
    r2, _ = compile(cfg, cat, alloc)
    old, new = render.configs(r1), render.configs(r2)
    p1 = r2.path_by_name("sfp-1")
    assert p1 is not None
    far = ipaddress.ip_address("192.0.2.3")
    assert far in {h.locator for h in new["edge"].table[(p1.spi, 254)]}
    out = render.steps(old, new)
    assert len(out) == 2, [sorted(s) for s in out]
    first, second = out
    assert "far" in first and "firewall-9" in first["far"].proxies  # type: ignore[union-attr]
    assert "edge" not in first or far not in {  # edge still sends to core only
        h.locator for h in first["edge"].table[(p1.spi, 254)]}  # type: ignore[union-attr]
    assert set(second) == {"edge"} and second["edge"].key() == new["edge"].key()  # type: ignore[union-attr]


def test_an_instance_moving_hop_keeps_serving_the_old_one_until_clean_up(
        schema: YangSchema, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hop per instance (SHARED_PROXIES off): when instances are shared out again, an
    instance's entry (named after it, with its socket) moves to its new hop; the install
    step keeps the old hop served by an entry of its own without socket, clean-up drops it."""
    from controller.sfc import render

    monkeypatch.setattr(paths, "SHARED_PROXIES", False)
    two = ("<chains><chain><name>a</name><sf-type>firewall</sf-type></chain>"
           "<chain><name>b</name><sf-type>firewall</sf-type></chain></chains>")
    one = "<chains><chain><name>b</name><sf-type>firewall</sf-type></chain></chains>"
    cat = full_catalog()
    cat.instances["firewall-1"] = replace(cat.instances["firewall-1"], report_socket="/s")
    cat.register(inst("firewall-2", "firewall"))
    alloc = SpiAllocator()
    r1, a1 = compile(parse_config(valid(schema, TYPES + two)), cat, alloc)
    alloc.commit(a1)
    r2, _ = compile(parse_config(valid(schema, TYPES + one)), cat, alloc)
    old, new = render.configs(r1), render.configs(r2)
    was = old["core"].proxies["firewall-1"]
    now = new["core"].proxies["firewall-1"]
    a_, b_ = r1.path_by_name("a"), r2.path_by_name("b")
    assert a_ is not None and b_ is not None
    assert (was.spi, now.spi) == (a_.spi, b_.spi)  # firewall-1 moves from a's hop to b's
    out = render.steps(old, new)
    install = out[0]["core"]
    assert install is not None
    moved = install.proxies[f"firewall-1-{was.spi}-{was.si}"]
    assert (moved.spi, moved.si) == (was.spi, was.si) and moved.report_socket is None
    assert install.proxies["firewall-1"] == now and now.report_socket == "/s"
    assert (a_.spi, 255) in install.table  # a's hop still forwarded until clean-up
    last = out[-1]["core"]
    assert last is not None and set(last.proxies) == set(new["core"].proxies)
