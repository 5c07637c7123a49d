"""Confirmed commit (:confirmed-commit:1.1): timeout, session loss, persist, cancel, restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncharness import NC_NS, AgentThread, ikeless_config, names, spd_entry, wait_for


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path / "state").start()
    yield a
    a.stop()


def running_names(agent: AgentThread) -> list[str]:
    data = agent.call(lambda: agent.agent.datastores.get_config("running"))  # type: ignore[union-attr]
    return names(etree.tostring(data))


def test_rolled_back_when_timeout_expires(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=ikeless_config(spd_entry("base")))
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("trial")))
        m.commit(confirmed=True, timeout="1")
        assert names(m.get_config("running").xml) == ["base", "trial"]
        wait_for(lambda: running_names(agent) == ["base"], timeout=5, what="rollback")
        assert names(m.get_config("candidate").xml) == ["base"]


def test_rolled_back_when_confirming_session_drops(agent: AgentThread) -> None:
    with agent.connect() as watcher:
        m = agent.connect()
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("trial")))
        m.commit(confirmed=True, timeout="600")
        assert names(watcher.get_config("running").xml) == ["trial"]
        # another session may not confirm a non-persistent confirmed commit
        with pytest.raises(RPCError) as ei:
            watcher.commit()
        assert ei.value.tag == "in-use"
        m.close_session()
        wait_for(lambda: names(watcher.get_config("running").xml) == [], what="rollback")


def test_confirmed_then_confirmed(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("one")))
        m.commit(confirmed=True, timeout="600")
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("two")))
        m.commit(confirmed=True, timeout="600")  # follow-up: extends, keeps the snapshot
        m.commit()  # confirming commit
        assert names(m.get_config("running").xml) == ["one", "two"]
        assert agent.call(lambda: agent.server.confirmed.pending) is None


def test_persist_confirmed_from_other_session_and_cancel(agent: AgentThread) -> None:
    m = agent.connect()
    m.edit_config(target="candidate", config=ikeless_config(spd_entry("p1")))
    m.commit(confirmed=True, timeout="600", persist="token-1")
    m.close_session()  # persistent: survives the session
    with agent.connect() as other:
        assert names(other.get_config("running").xml) == ["p1"]
        with pytest.raises(RPCError) as ei:
            other.commit(persist_id="wrong")
        assert ei.value.tag == "invalid-value"
        other.commit(persist_id="token-1")
        assert names(other.get_config("running").xml) == ["p1"]
        # cancel-commit restores the pre-commit running
        other.edit_config(target="candidate", config=ikeless_config(spd_entry("p2")))
        other.commit(confirmed=True, timeout="600", persist="token-2")
        assert names(other.get_config("running").xml) == ["p1", "p2"]
        other.cancel_commit(persist_id="token-2")
        assert names(other.get_config("running").xml) == ["p1"]
        with pytest.raises(RPCError):
            other.cancel_commit()


def test_cancel_commit_same_session(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("c")))
        m.commit(confirmed=True)
        m.cancel_commit()
        assert names(m.get_config("running").xml) == []


def test_unconfirmed_commit_rolled_back_after_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    a = AgentThread(state).start()
    try:
        m = a.connect()
        m.edit_config(target="running", config=ikeless_config(spd_entry("before")))
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("unconfirmed")))
        m.commit(confirmed=True, timeout="600", persist="x")
        assert names(m.get_config("running").xml) == ["before", "unconfirmed"]
    finally:
        # simulate a crash: do not let the server finish the confirmed commit
        a.call(lambda: setattr(a.server.confirmed, "pending", None))
        a.stop()
    b = AgentThread(state).start()
    try:
        with b.connect() as m:
            assert names(m.get_config("running").xml) == ["before"]
    finally:
        b.stop()


def test_confirmed_commit_error_cases(agent: AgentThread) -> None:
    with agent.connect() as m:
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<commit xmlns="{NC_NS}"><confirm-timeout>5</confirm-timeout></commit>'))
        assert ei.value.tag == "invalid-value"
        with pytest.raises(RPCError) as ei:
            m.dispatch(etree.fromstring(
                f'<commit xmlns="{NC_NS}"><confirmed/><confirm-timeout>0</confirm-timeout>'
                "</commit>"))
        assert ei.value.tag == "invalid-value"
        with pytest.raises(RPCError) as ei:
            m.commit(persist_id="nothing-pending")
        assert ei.value.tag == "invalid-value"
