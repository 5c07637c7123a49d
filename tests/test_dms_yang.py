"""The i2nsf-dms and i2nsf-sfc-catalog modules: they compile together, and the RPC inputs
and notifications the DMS and the Catalog Manager exchange validate (or are refused)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent.sadb import parse_rpc_input

DMS = "urn:i2nsf-sdn:yang:i2nsf-dms"
CAT = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"


class _Srv:
    def __init__(self, schema: YangSchema) -> None:
        self.schema = schema


@pytest.fixture(scope="module")
def schema() -> Iterator[YangSchema]:
    ctx = create_context(["i2nsf-dms", "i2nsf-sfc-catalog"])
    try:
        yield YangSchema(ctx)
    finally:
        ctx.destroy()


def _rpc(schema: YangSchema, xml: str) -> etree._Element:
    return parse_rpc_input(_Srv(schema), etree.fromstring(xml))  # type: ignore[arg-type]


def test_create_instance_firewall_input_gets_defaults(schema: YangSchema) -> None:
    out = _rpc(schema, f"""<create-instance xmlns="{DMS}"><name>fw1</name><type>firewall</type>
      <firewall><rule><seq>10</seq><action>drop</action><protocol>6</protocol>
      <destination-port>23</destination-port><ct-state>new</ct-state></rule></firewall>
      </create-instance>""")
    assert out.findtext(f"{{{DMS}}}firewall/{{{DMS}}}default-action") == "drop"
    assert out.findtext(f"{{{DMS}}}firewall/{{{DMS}}}rule/{{{DMS}}}report") == "true"


@pytest.mark.parametrize("bad", [
    "<name>fw1</name><type>no-such-type</type>",
    "<type>firewall</type>",
    "<name>bad/name</name><type>firewall</type>",
    "<name>x</name><type>ddos</type><ddos><per-source-pps>0</per-source-pps></ddos>",
])
def test_create_instance_bad_input_is_an_rpc_error(schema: YangSchema, bad: str) -> None:
    with pytest.raises(RpcError):
        _rpc(schema, f'<create-instance xmlns="{DMS}">{bad}</create-instance>')


def test_register_instance_input(schema: YangSchema) -> None:
    out = _rpc(schema, f"""<register-instance xmlns="{CAT}"><name>ids1</name><type>ids</type>
      <dms>dms-a</dms><locator><address>192.0.2.1</address></locator>
      <interfaces><to-sf>ids1-i</to-sf><from-sf>ids1-o</from-sf>
      <sf-mac>02:00:00:00:00:01</sf-mac></interfaces><capacity>50000</capacity>
      <capability>payload-signatures</capability><capability>ipv4</capability>
      </register-instance>""")
    assert out.findtext(f"{{{CAT}}}locator/{{{CAT}}}transport") == "gre"
    with pytest.raises(RpcError):
        _rpc(schema, f"""<register-instance xmlns="{CAT}"><name>ids1</name><type>ids</type>
          <dms>dms-a</dms><capacity>1</capacity></register-instance>""")


def test_inspection_alert_notification(schema: YangSchema) -> None:
    schema.validate_notification(etree.fromstring(f"""<inspection-alert xmlns="{DMS}">
      <instance>ids1</instance><type>ids</type><sid>1000001</sid><msg>evil</msg>
      <flow><source-address>192.0.2.1</source-address>
      <destination-address>198.51.100.2</destination-address><protocol>6</protocol>
      <source-port>40000</source-port><destination-port>80</destination-port></flow>
      <verdict>alert</verdict><reclassify>needs-dpi</reclassify></inspection-alert>"""))
    with pytest.raises(RpcError):
        schema.validate_notification(etree.fromstring(
            f'<inspection-alert xmlns="{DMS}"><verdict>maybe</verdict></inspection-alert>'))
