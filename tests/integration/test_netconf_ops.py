"""RFC 6241 operations and capabilities over real SSH sessions, driven by ncclient."""

from __future__ import annotations

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
    wait_for,
)

EXPECTED_CAPS = [
    "urn:ietf:params:netconf:base:1.0",
    "urn:ietf:params:netconf:base:1.1",
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
]
SPD_FILTER = f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd/></ipsec-ikeless>'


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path / "state").start()
    yield a
    a.stop()


def test_capabilities_exact(agent: AgentThread) -> None:
    with agent.connect() as m:
        caps = list(m.server_capabilities)
        for c in EXPECTED_CAPS:
            assert c in caps
        assert not any(":url:" in c for c in caps)
        assert ("urn:ietf:params:netconf:capability:with-defaults:1.0?basic-mode=explicit"
                "&also-supported=report-all,report-all-tagged,trim") in caps
        ylib = [c for c in caps
                if c.startswith("urn:ietf:params:netconf:capability:yang-library:1.0")]
        assert len(ylib) == 1 and "revision=2019-01-04" in ylib[0] and "module-set-id=" in ylib[0]
        assert any(c.startswith(f"{IKELESS_NS}?module=ietf-i2nsf-ikeless&revision=2021-07-14")
                   for c in caps)
        netconf_mod = next(c for c in caps if "module=ietf-netconf&" in c)
        assert "confirmed-commit" in netconf_mod and "url" not in netconf_mod
        assert m.session_id is not None and int(m.session_id) > 0


def test_edit_get_config_running_and_filters(agent: AgentThread) -> None:
    with agent.connect() as m:
        assert len(m.get_config("running").data) == 0
        spd = spd_entry("a") + spd_entry("b", remote="198.51.100.3/32")
        m.edit_config(target="running", config=ikeless_config(spd, sad_entry("sa1", 1000)))
        assert names(m.get_config("running").xml) == ["a", "b"]
        # subtree filter with a content match
        f = (f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd><spd-entry><name>b</name>'
             "</spd-entry></spd></ipsec-ikeless>")
        r = m.get_config("running", filter=("subtree", f))
        assert names(r.xml) == ["b"]
        assert names(r.xml, "sad-entry") == []
        # xpath filter (advertised :xpath)
        r = m.get_config("running", filter=("xpath", (
            {"ikl": IKELESS_NS}, "/ikl:ipsec-ikeless/ikl:sad/ikl:sad-entry[ikl:name='sa1']")))
        assert names(r.xml, "sad-entry") == ["sa1"]
        assert names(r.xml) == []
        # get = running + state
        r = m.get(filter=("subtree", SPD_FILTER))
        assert names(r.xml) == ["a", "b"]
        # delete one entry
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS_NS}"><spd>'
            '<spd-entry nc:operation="delete"><name>a</name></spd-entry></spd></ipsec-ikeless>'
            "</config>"))
        assert names(m.get_config("running").xml) == ["b"]
        assert agent.applier.applied, "the applier saw the running changes"


def test_candidate_commit_discard_validate(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("c1")))
        assert names(m.get_config("candidate").xml) == ["c1"]
        assert names(m.get_config("running").xml) == []
        m.validate(source="candidate")
        m.discard_changes()
        assert names(m.get_config("candidate").xml) == []
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("c2")))
        m.commit()
        assert names(m.get_config("running").xml) == ["c2"]
        # test-only never changes anything
        before = agent.snapshot()
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("c3")),
                      test_option="test-only")
        assert agent.snapshot() == before
        # validate an inline config
        m.validate(source=etree.fromstring(ikeless_config(spd_entry("v"))))


def test_copy_and_delete_startup(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=ikeless_config(spd_entry("s1")))
        m.copy_config(source="running", target="startup")
        assert names(m.get_config("startup").xml) == ["s1"]
        m.delete_config(target="startup")
        assert names(m.get_config("startup").xml) == []
        src = f'<source xmlns="{NC_NS}">{ikeless_config(spd_entry("inline"))}</source>'
        m.copy_config(source=src, target="candidate")
        assert names(m.get_config("candidate").xml) == ["inline"]
        with pytest.raises(RPCError) as ei:
            m.delete_config(target="running")
        assert ei.value.tag == "invalid-value"


def test_rollback_on_error_and_error_options(agent: AgentThread) -> None:
    with agent.connect() as m:
        before = agent.snapshot()
        bad = ikeless_config(spd_entry("ok") + spd_entry("bad", direction="sideways"))
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=bad, error_option="rollback-on-error")
        assert ei.value.tag == "invalid-value"
        assert agent.snapshot() == before


def test_two_sessions_locks(agent: AgentThread) -> None:
    with agent.connect() as a, agent.connect() as b:
        a.lock("running")
        with pytest.raises(RPCError) as ei:
            b.lock("running")
        assert ei.value.tag == "lock-denied"
        assert ei.value.info and f"<session-id>{a.session_id}</session-id>" in \
            ei.value.info.replace("nc:", "")
        before = agent.snapshot()
        with pytest.raises(RPCError) as ei:
            b.edit_config(target="running", config=ikeless_config(spd_entry("x")))
        assert ei.value.tag == "in-use"
        assert agent.snapshot() == before
        with pytest.raises(RPCError) as ei:
            b.unlock("running")
        assert ei.value.tag == "operation-failed"
        a.edit_config(target="running", config=ikeless_config(spd_entry("by-a")))
        a.unlock("running")
        b.lock("running")
        b.unlock("running")
        # lock held by a session that goes away is released
        c = agent.connect()
        c.lock("candidate")
        c.close_session()
        wait_for(lambda: agent.call(lambda: agent.server.locks.holder("candidate")) is None,
                 what="lock release")
        b.lock("candidate")
        b.unlock("candidate")


def test_candidate_lock_denied_when_modified(agent: AgentThread) -> None:
    with agent.connect() as a, agent.connect() as b:
        a.edit_config(target="candidate", config=ikeless_config(spd_entry("pending")))
        with pytest.raises(RPCError) as ei:
            b.lock("candidate")
        assert ei.value.tag == "lock-denied"
        a.discard_changes()
        b.lock("candidate")


def test_kill_session_releases_lock(agent: AgentThread) -> None:
    with agent.connect() as a:
        b = agent.connect()
        b.lock("running")
        with pytest.raises(RPCError):
            a.lock("running")
        a.kill_session(b.session_id)
        a.lock("running")
        wait_for(lambda: not b.connected, what="killed session to drop")
        with pytest.raises(RPCError) as ei:
            a.kill_session(a.session_id)
        assert ei.value.tag == "invalid-value"
        with pytest.raises(RPCError) as ei:
            a.kill_session("9999")
        assert ei.value.tag == "invalid-value"


def test_unknown_operation_and_namespace(agent: AgentThread) -> None:
    with agent.connect() as m:
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(f'<frobnicate xmlns="{NC_NS}"/>'))
        assert ei.value.tag == "operation-not-supported"
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring('<frob xmlns="urn:example:nothing"/>'))
        assert ei.value.tag == "unknown-namespace"
        before = agent.snapshot()
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=(
                f'<config xmlns="{NC_NS}"><foo xmlns="urn:example:unknown"><x>1</x></foo>'
                "</config>"))
        assert ei.value.tag == "unknown-namespace"
        assert agent.snapshot() == before


def test_invalid_value_and_missing_key(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=ikeless_config(spd_entry("keep")))
        before = agent.snapshot()
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=ikeless_config(sad=sad_entry("sa", 1000).replace(
                "<spi>1000</spi>", "<spi>not-a-number</spi>")))
        assert ei.value.tag == "invalid-value"
        assert agent.snapshot() == before
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=ikeless_config(
                "<spd-entry><direction>inbound</direction></spd-entry>"))
        assert ei.value.tag == "missing-element"
        assert agent.snapshot() == before
        with pytest.raises(RPCError) as ei:  # ncclient checks this itself; send it raw
            m.dispatch(etree.fromstring(
                f'<edit-config xmlns="{NC_NS}"><target><candidate/></target>'
                f"<default-operation>bogus</default-operation>"
                f"{ikeless_config(spd_entry('z'))}</edit-config>"))
        assert ei.value.tag == "invalid-value"
        assert agent.snapshot() == before


def test_monitoring_and_yang_library(agent: AgentThread) -> None:
    ncm = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
    with agent.connect() as a, agent.connect() as b:
        a.lock("startup")
        r = a.get(filter=("subtree", f'<netconf-state xmlns="{ncm}"/>'))
        root = etree.fromstring(r.xml.encode())
        sids = {e.text for e in root.iter(f"{{{ncm}}}session-id")}
        assert {str(a.session_id), str(b.session_id)} <= sids
        caps = [e.text for e in root.iter(f"{{{ncm}}}capability")]
        assert "urn:ietf:params:netconf:capability:candidate:1.0" in caps
        schemas = [e.text for e in root.iter(f"{{{ncm}}}identifier")]
        assert "ietf-i2nsf-ikeless" in schemas
        lock = root.find(f".//{{{ncm}}}locked-by-session")
        assert lock is not None and lock.text == str(a.session_id)
        assert int(root.findtext(f".//{{{ncm}}}statistics/{{{ncm}}}in-sessions") or 0) >= 2
        ylib = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
        r = a.get(filter=("subtree", f'<yang-library xmlns="{ylib}"/>'))
        mods = [e.text for e in etree.fromstring(r.xml.encode()).iter(f"{{{ylib}}}name")]
        assert "ietf-i2nsf-ikeless" in mods


def test_get_schema_returns_module_text(agent: AgentThread) -> None:
    yang_dir = Path(__file__).resolve().parents[2] / "yang"
    with agent.connect() as m:
        text = m.get_schema("ietf-i2nsf-ikeless").data
        assert text == (yang_dir / "ietf-i2nsf-ikeless@2021-07-14.yang").read_text()
        text = m.get_schema("ietf-i2nsf-ikec", version="2021-07-14", format="yang").data
        assert "module ietf-i2nsf-ikec" in text
        with pytest.raises(RPCError) as ei:
            m.get_schema("no-such-module")
        assert ei.value.tag == "invalid-value"


def test_applier_failure_leaves_running(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("f")))
        before = agent.snapshot()
        agent.applier.fail_next = "kernel said no"
        with pytest.raises(RPCError) as ei:
            m.commit()
        assert ei.value.tag == "operation-failed"
        assert "kernel said no" in (ei.value.message or "")
        assert agent.snapshot() == before
        m.commit()
        assert names(m.get_config("running").xml) == ["f"]
