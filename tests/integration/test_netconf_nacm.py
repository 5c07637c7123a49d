"""RFC 8341 NACM rule lists over real SSH sessions (ncclient): groups, rule-lists, module /
path / rpc / notification rules, read / create / update / delete / exec, defaults, the
recovery user and the counters. Every denied request leaves the datastores unchanged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncharness import (
    IKELESS_NS,
    NC_NS,
    AgentThread,
    ikeless_config,
    names,
    sad_entry,
    spd_entry,
)

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
NCN_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"

NACM = f"""<config xmlns="{NC_NS}"><nacm xmlns="{NACM_NS}" xmlns:ik="{IKELESS_NS}">
<groups>
  <group><name>admin</name><user-name>admin</user-name></group>
  <group><name>ops</name><user-name>oper</user-name></group>
</groups>
<rule-list><name>admins</name><group>admin</group>
  <rule><name>all</name><module-name>*</module-name><access-operations>*</access-operations>
    <action>permit</action></rule>
</rule-list>
<rule-list><name>operators</name><group>ops</group>
  <rule><name>no-sad-read</name><module-name>ietf-i2nsf-ikeless</module-name>
    <path>/ik:ipsec-ikeless/ik:sad</path><access-operations>read</access-operations>
    <action>deny</action></rule>
  <rule><name>spd-write</name><module-name>ietf-i2nsf-ikeless</module-name>
    <path>/ik:ipsec-ikeless/ik:spd</path>
    <access-operations>create update delete</access-operations><action>permit</action></rule>
  <rule><name>no-lock</name><module-name>ietf-netconf</module-name><rpc-name>lock</rpc-name>
    <access-operations>exec</access-operations><action>deny</action></rule>
  <rule><name>no-config-change</name><module-name>ietf-netconf-notifications</module-name>
    <notification-name>netconf-config-change</notification-name>
    <access-operations>read</access-operations><action>deny</action></rule>
</rule-list>
</nacm></config>"""


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path / "state").start()
    with a.connect() as m:
        m.edit_config(target="running", config=ikeless_config(
            spd_entry("s1"), sad_entry("sa1", 4096)))
        m.edit_config(target="running", config=NACM)  # NACM is off until this commit
    yield a
    a.stop()


def _denied(ei: pytest.ExceptionInfo[RPCError]) -> None:
    assert ei.value.tag == "access-denied", ei.value


def test_read_rules_hide_denied_subtrees(agent: AgentThread) -> None:
    with agent.connect("oper") as m:
        data = etree.fromstring(m.get_config("running").xml.encode())
        assert names(etree.tostring(data)) == ["s1"]
        assert data.find(f".//{{{IKELESS_NS}}}sad") is None
        assert data.find(f".//{{{NACM_NS}}}nacm") is None  # nacm is default-deny-all
        got = etree.fromstring(m.get().xml.encode())
        assert got.find(f".//{{{IKELESS_NS}}}sad") is None
        assert names(etree.tostring(got)) == ["s1"]
    with agent.connect("admin") as m:
        data = etree.fromstring(m.get_config("running").xml.encode())
        assert data.find(f".//{{{IKELESS_NS}}}sad-entry") is not None


def test_write_rules_create_update_delete(agent: AgentThread) -> None:
    with agent.connect("oper") as m:
        m.edit_config(target="running", config=ikeless_config(spd_entry("s2", reqid=2)))
        m.edit_config(target="running", config=ikeless_config(spd_entry("s2", reqid=3)))
        m.edit_config(target="running", config=ikeless_config(
            f'<spd-entry xmlns:nc="{NC_NS}" nc:operation="delete"><name>s2</name>'
            "</spd-entry>"))
        before = agent.snapshot()
        for cfg in (ikeless_config(sad=sad_entry("sa2", 5000)),  # create under sad
                    ikeless_config(sad=sad_entry("sa1", 4097)),  # update in sad
                    f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><nacm xmlns="{NACM_NS}">'
                    "<enable-nacm>false</enable-nacm></nacm></config>"):  # NACM itself
            with pytest.raises(RPCError) as ei:
                m.edit_config(target="running", config=cfg)
            _denied(ei)
            assert agent.snapshot() == before
        with pytest.raises(RPCError) as ei:  # a copy-config that would drop the SAD
            m.copy_config(source="startup", target="running")
        _denied(ei)
        with pytest.raises(RPCError) as ei:
            m.delete_config("startup")  # default-deny-all rpc
        _denied(ei)
        assert agent.snapshot() == before


def test_exec_rules(agent: AgentThread) -> None:
    with agent.connect("oper") as m, agent.connect("admin") as a:
        before = agent.snapshot()
        with pytest.raises(RPCError) as ei:
            m.lock("running")
        _denied(ei)
        assert ei.value.type == "protocol" and ei.value.path.strip() == "/ietf-netconf:lock"
        assert "NACM authorization failed" in ei.value.message
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<kill-session xmlns="{NC_NS}"><session-id>{a.session_id}</session-id>'
                "</kill-session>"))
        _denied(ei)
        assert a.connected
        m.get_config("running")  # exec-default permit
        a.lock("running")  # the admin rule list permits everything
        a.unlock("running")
        assert agent.snapshot() == before


def test_notification_rules_and_counters(agent: AgentThread) -> None:
    with agent.connect("oper") as m:
        m.create_subscription()
        with agent.connect("admin") as a:
            a.edit_config(target="running", config=ikeless_config(spd_entry("s9", reqid=9)))
        # netconf-config-change (denied) came before the admin's session-end, which passes
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while f"{{{NCN_NS}}}netconf-session-end" not in seen:
            assert time.monotonic() < deadline, seen
            n = m.take_notification(block=True, timeout=1)
            if n is not None:
                seen += [c.tag for c in etree.fromstring(n.notification_xml.encode())]
        assert f"{{{NCN_NS}}}netconf-session-start" in seen
        assert f"{{{NCN_NS}}}netconf-config-change" not in seen
    with agent.connect("admin") as a:
        r = etree.fromstring(a.get(filter=("subtree", f'<nacm xmlns="{NACM_NS}"/>')).xml
                             .encode())
        count = {k: int(r.findtext(f".//{{{NACM_NS}}}{k}") or -1) for k in (
            "denied-operations", "denied-data-writes", "denied-notifications")}
        assert count["denied-notifications"] >= 1


def test_counters_count_denials(agent: AgentThread) -> None:
    with agent.connect("oper") as m:
        with pytest.raises(RPCError):
            m.lock("running")
        with pytest.raises(RPCError):
            m.edit_config(target="running", config=ikeless_config(sad=sad_entry("sa3", 6000)))
    with agent.connect("admin") as a:
        r = etree.fromstring(a.get(filter=("subtree", f'<nacm xmlns="{NACM_NS}"/>')).xml
                             .encode())
        assert int(r.findtext(f".//{{{NACM_NS}}}denied-operations") or 0) == 1
        assert int(r.findtext(f".//{{{NACM_NS}}}denied-data-writes") or 0) == 1


def test_recovery_user_and_disabling(agent: AgentThread) -> None:
    agent.server.nacm.recovery_users = frozenset({"oper"})
    try:
        with agent.connect("oper") as m:
            m.edit_config(target="running", config=ikeless_config(sad=sad_entry("sa4", 7000)))
            assert m.get_config("running").xml.count("<sad-entry>") == 2
    finally:
        agent.server.nacm.recovery_users = frozenset()
    with agent.connect("admin") as a:
        a.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}"><nacm xmlns="{NACM_NS}"><enable-nacm>false'
            "</enable-nacm></nacm></config>"))
    with agent.connect("oper") as m:  # NACM off: everything again
        assert "sad-entry" in m.get_config("running").xml
        m.lock("running")
        m.unlock("running")


def test_nmda_operations_are_checked_too(agent: AgentThread) -> None:
    nmda = "urn:ietf:params:xml:ns:yang:ietf-netconf-nmda"
    ds = "urn:ietf:params:xml:ns:yang:ietf-datastores"
    with agent.connect("oper") as m:
        for store in ("running", "operational"):
            r = m.dispatch(etree.fromstring(
                f'<get-data xmlns="{nmda}" xmlns:ds="{ds}"><datastore>ds:{store}</datastore>'
                "</get-data>"))
            root = etree.fromstring(r.xml.encode())
            assert root.find(f".//{{{IKELESS_NS}}}sad") is None, store
            assert names(etree.tostring(root)) == ["s1"], store
        before = agent.snapshot()
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<edit-data xmlns="{nmda}" xmlns:ds="{ds}"><datastore>ds:running</datastore>'
                f'<config><ipsec-ikeless xmlns="{IKELESS_NS}"><sad>{sad_entry("sa9", 9000)}'
                "</sad></ipsec-ikeless></config></edit-data>"))
        _denied(ei)
        assert agent.snapshot() == before


def test_recovery_users_from_the_agent_configuration(tmp_path: Path) -> None:
    from nsf_agent.config import parse_config, render_config

    cfg = parse_config({"server": {"nacm_recovery_users": ["oper"],
                                   "schema_location": "https://x.example/{name}.yang"}},
                       tmp_path)
    assert "nacm_recovery_users = [\"oper\"]" in render_config(cfg)
    a = AgentThread(tmp_path / "state", nacm_recovery_users=["oper"]).start()
    try:
        with a.connect() as m:
            m.edit_config(target="running", config=NACM)
        with a.connect("oper") as m:  # the recovery user: no rule applies
            m.edit_config(target="running", config=ikeless_config(sad=sad_entry("r1", 4500)))
            m.lock("running")
            m.unlock("running")
        assert a.server.nacm.recovery_users == frozenset({"oper"})
    finally:
        a.stop()


def test_external_groups_from_the_user_database(tmp_path: Path) -> None:
    from ncharness import PASSWORD_HASH

    from netconf_core.auth import User
    from netconf_core.configfile import parse_users

    (u,) = parse_users([{"name": "guest", "password_hash": PASSWORD_HASH, "groups": ["ops"]}],
                       tmp_path)
    assert u.groups == ["ops"]
    a = AgentThread(tmp_path / "state", users=[User("admin", PASSWORD_HASH), u]).start()
    try:
        with a.connect() as m:
            m.edit_config(target="running", config=ikeless_config(sad=sad_entry("x1", 4600)))
            m.edit_config(target="running", config=NACM)
        with a.connect("guest") as m:  # in "ops" by the user database only
            assert "sad-entry" not in m.get_config("running").xml
        with a.connect() as m:
            m.edit_config(target="running", config=(
                f'<config xmlns="{NC_NS}"><nacm xmlns="{NACM_NS}"><enable-external-groups>'
                "false</enable-external-groups></nacm></config>"))
        with a.connect("guest") as m:  # no group now: read-default permit
            assert "sad-entry" in m.get_config("running").xml
    finally:
        a.stop()
