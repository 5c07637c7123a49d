"""The controller's northbound takes NACM settings from its configuration file as the agent
does: recovery users (RFC 8341 §3.4.1, NACM does not apply to them), external groups from
`[[users]] groups`, and a yang-library schema location. Real controller process, real SSH."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ctlproc import ControllerProcess
from ncclient.operations import RPCError

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
FP_NS = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"

# Nobody may write flow policy but the recovery user; "ops" (the user database's group of
# oper) may not even read it.
NACM = f"""<config xmlns="{NC_NS}"><nacm xmlns="{NACM_NS}">
<write-default>deny</write-default>
<rule-list><name>operators</name><group>ops</group>
  <rule><name>no-policy-read</name><module-name>i2nsf-flow-policy</module-name>
    <access-operations>read</access-operations><action>deny</action></rule>
</rule-list></nacm></config>"""


def profile(name: str) -> str:
    return (f'<config xmlns="{NC_NS}"><flow-protection xmlns="{FP_NS}"><crypto-profiles>'
            f"<crypto-profile><name>{name}</name></crypto-profile></crypto-profiles>"
            "</flow-protection></config>")


@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[ControllerProcess]:
    c = ControllerProcess(tmp_path, restconf=False, metrics=False)
    text = c.config.read_text()
    text = text.replace("[server]\n", '[server]\nnacm_recovery_users = ["admin"]\n'
                        'schema_location = "https://ctl.example/yang/{name}@{revision}.yang"\n', 1)
    text = text.replace("read_secrets = false\n", 'read_secrets = false\ngroups = ["ops"]\n')
    c.config.write_text(text)
    c.start()
    yield c
    c.stop()


def test_recovery_users_groups_and_schema_location_from_the_config(
        ctl: ControllerProcess) -> None:
    with ctl.netconf("admin") as m:
        m.edit_config(target="running", config=profile("p1"))
        m.edit_config(target="running", config=NACM)  # NACM is active from here on
        m.edit_config(target="running", config=profile("p2"))  # recovery user: not checked
        lib = m.get(filter=("subtree", '<yang-library xmlns="urn:ietf:params:xml:ns:yang:'
                            'ietf-yang-library"/>')).xml
    assert "https://ctl.example/yang/i2nsf-flow-policy@" in lib
    assert "file://" not in lib
    with ctl.netconf("oper") as m:
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=profile("p3"))
        assert ei.value.tag == "access-denied", ei.value
        # in "ops" only through the user database (external groups)
        assert "crypto-profile" not in m.get_config("running").xml
    with ctl.netconf("admin") as m:
        data = m.get_config("running").xml
    assert "<name>p2</name>" in data and "<name>p3</name>" not in data
