"""RFC 5277 subscriptions (:interleave, filters, replay) and RFC 6470 events over SSH."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncharness import IKELESS_NS, AgentThread, ikeless_config, names, spd_entry

NCN = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
NETMOD_NOTIF = "urn:ietf:params:xml:ns:netmod:notification"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path / "state").start()
    yield a
    a.stop()


def sadb_expire(name: str, soft: bool = True) -> etree._Element:
    return etree.fromstring(
        f'<sadb-expire xmlns="{IKELESS_NS}"><ipsec-sa-name>{name}</ipsec-sa-name>'
        f"<soft-lifetime-expire>{'true' if soft else 'false'}</soft-lifetime-expire>"
        "<lifetime-current><bytes>1000</bytes><packets>10</packets></lifetime-current>"
        "</sadb-expire>"
    )


def next_event(m, tag: str, timeout: float = 5.0) -> etree._Element:  # type: ignore[no-untyped-def]
    """The next notification whose event element is `tag` (others are skipped)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = m.take_notification(block=True, timeout=max(0.01, deadline - time.monotonic()))
        if n is None:
            break
        root = etree.fromstring(n.notification_xml.encode())
        for child in root:
            if child.tag == tag:
                assert root.findtext(
                    "{urn:ietf:params:xml:ns:netconf:notification:1.0}eventTime")
                return child
    raise AssertionError(f"no {tag} notification within {timeout}s")


def test_applier_notification_reaches_subscriber(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=ikeless_config(spd_entry("first")))
        m.create_subscription()
        assert agent.applier.notify is not None
        agent.applier.notify(sadb_expire("sa-1"))
        ev = next_event(m, f"{{{IKELESS_NS}}}sadb-expire")
        assert ev.findtext(f"{{{IKELESS_NS}}}ipsec-sa-name") == "sa-1"
        # :interleave: rpcs keep working on the subscribed session
        m.edit_config(target="running", config=ikeless_config(spd_entry("during-sub")))
        assert names(m.get_config("running").xml) == ["first", "during-sub"]
        ev = next_event(m, f"{{{NCN}}}netconf-config-change")
        assert ev.findtext(f"{{{NCN}}}datastore") == "running"
        assert ev.findtext(f"{{{NCN}}}edit/{{{NCN}}}operation") == "create"
        target = ev.findtext(f"{{{NCN}}}edit/{{{NCN}}}target") or ""
        assert "spd-entry" in target and "during-sub" in target


def test_invalid_notification_is_dropped(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.create_subscription()
        bad = etree.fromstring(f'<sadb-expire xmlns="{IKELESS_NS}"><bogus/></sadb-expire>')
        agent.applier.notify(bad)
        agent.applier.notify(sadb_expire("good"))
        ev = next_event(m, f"{{{IKELESS_NS}}}sadb-expire")
        assert ev.findtext(f"{{{IKELESS_NS}}}ipsec-sa-name") == "good"


def test_filter_and_session_events(agent: AgentThread) -> None:
    with agent.connect() as m:
        flt = (f'<sadb-expire xmlns="{IKELESS_NS}">'
               "<ipsec-sa-name>wanted</ipsec-sa-name></sadb-expire>")
        m.create_subscription(filter=("subtree", flt))
        agent.applier.notify(sadb_expire("other"))
        agent.applier.notify(sadb_expire("wanted"))
        ev = next_event(m, f"{{{IKELESS_NS}}}sadb-expire")
        assert ev.findtext(f"{{{IKELESS_NS}}}ipsec-sa-name") == "wanted"
        with pytest.raises(RPCError) as ei:
            m.create_subscription()
        assert ei.value.tag == "in-use"
    with agent.connect() as w:
        w.create_subscription()
        other = agent.connect()
        ev = next_event(w, f"{{{NCN}}}netconf-session-start")
        assert ev.findtext(f"{{{NCN}}}session-id") == str(other.session_id)
        w.kill_session(other.session_id)
        ev = next_event(w, f"{{{NCN}}}netconf-session-end")
        assert ev.findtext(f"{{{NCN}}}termination-reason") == "killed"
        assert ev.findtext(f"{{{NCN}}}killed-by") == str(w.session_id)


def test_replay_start_stop(agent: AgentThread) -> None:
    t0 = datetime.now(UTC) - timedelta(seconds=1)
    agent.applier.notify(sadb_expire("old-1"))
    agent.applier.notify(sadb_expire("old-2"))
    with agent.connect() as m:
        stop = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
        m.create_subscription(start_time=t0.isoformat(), stop_time=stop)
        got = [next_event(m, f"{{{IKELESS_NS}}}sadb-expire").findtext(
            f"{{{IKELESS_NS}}}ipsec-sa-name") for _ in range(2)]
        assert got == ["old-1", "old-2"]
        next_event(m, f"{{{NETMOD_NOTIF}}}replayComplete")
        next_event(m, f"{{{NETMOD_NOTIF}}}notificationComplete")
        # the subscription ended: a new one is allowed on the same session
        m.create_subscription()
    with agent.connect() as m:
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        with pytest.raises(RPCError) as ei:
            m.create_subscription(start_time=future)
        assert ei.value.tag == "bad-element"
        with pytest.raises(RPCError) as ei:
            m.create_subscription(stream_name="NOPE")
        assert ei.value.tag == "invalid-value"


def test_confirmed_commit_events(agent: AgentThread) -> None:
    with agent.connect() as m:
        m.create_subscription()
        m.edit_config(target="candidate", config=ikeless_config(spd_entry("cc")))
        m.commit(confirmed=True, timeout="30")
        ev = next_event(m, f"{{{NCN}}}netconf-confirmed-commit")
        assert ev.findtext(f"{{{NCN}}}confirm-event") == "start"
        assert ev.findtext(f"{{{NCN}}}timeout") == "30"
        m.commit()
        ev = next_event(m, f"{{{NCN}}}netconf-confirmed-commit")
        assert ev.findtext(f"{{{NCN}}}confirm-event") == "complete"


def test_unprefixed_xpath_subscription_filter(agent: AgentThread) -> None:
    """Issue 14.4 for create-subscription: unprefixed names resolve to the notification."""
    with agent.connect() as m:
        m.create_subscription(filter=("xpath", "/sadb-expire[ipsec-sa-name='wanted']"))
        agent.applier.notify(sadb_expire("other"))
        agent.applier.notify(sadb_expire("wanted"))
        ev = next_event(m, f"{{{IKELESS_NS}}}sadb-expire")
        assert ev.findtext(f"{{{IKELESS_NS}}}ipsec-sa-name") == "wanted"
