"""NSF-side fencing of controller instances (#21): a real agent over SSH NETCONF refuses a
commit carrying a lower controller epoch than the one it holds, and nothing changes —
neither running nor what its applier saw. Edits are stamped with the controller's own
`add_fence`, as every HA controller transaction is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations.rpc import RPCError

from controller.core.fence import FENCE_NS, add_fence
from tests.integration.ncharness import AgentThread, ikeless_config, names, spd_entry


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path / "agent").start()
    yield a
    a.stop()


def _commit(m: object, config: str) -> None:
    m.edit_config(target="candidate", config=config)  # type: ignore[attr-defined]
    m.commit()  # type: ignore[attr-defined]


def _epoch(m: object) -> str | None:
    reply = m.get_config(source="running").data_xml  # type: ignore[attr-defined]
    el = etree.fromstring(reply.encode()).find(f".//{{{FENCE_NS}}}epoch")
    return None if el is None else el.text


def test_agent_refuses_a_lower_controller_epoch(agent: AgentThread) -> None:
    with agent.connect() as m:
        _commit(m, add_fence(ikeless_config(spd=spd_entry("fp/p1/0/out")).encode(), 5
                             ).decode())
        assert _epoch(m) == "5"
        before, applied = agent.snapshot()["running"], len(agent.applier.applied)

        stale = add_fence(ikeless_config(spd=spd_entry("fp/stale/0/out", reqid=7)).encode(), 4)
        m.edit_config(target="candidate", config=stale.decode())
        with pytest.raises(RPCError) as exc:
            m.commit()
        assert exc.value.tag == "operation-failed"
        assert "carries controller epoch 4" in exc.value.message
        assert "already accepted epoch 5" in exc.value.message
        assert exc.value.app_tag == "stale-controller-epoch"
        m.discard_changes()
        assert agent.snapshot()["running"] == before  # nothing changed
        assert len(agent.applier.applied) == applied
        reply = m.get_config(source="running").data_xml
        assert names(reply) == ["fp/p1/0/out"]

        # removing the fence is refused too
        gone = (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                f'<controller-fence xmlns="{FENCE_NS}" '
                'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" nc:operation="delete"/>'
                "</config>")
        m.edit_config(target="candidate", config=gone)
        with pytest.raises(RPCError, match="removing the fence"):
            m.commit()
        m.discard_changes()
        assert agent.snapshot()["running"] == before

        # the same or a newer epoch goes through; an edit without the leaf keeps it
        _commit(m, add_fence(ikeless_config(spd=spd_entry("fp/p2/0/out", reqid=2)).encode(),
                             5).decode())
        _commit(m, add_fence(ikeless_config(spd=spd_entry("fp/p3/0/out", reqid=3)).encode(),
                             6).decode())
        _commit(m, ikeless_config(spd=spd_entry("fp/p4/0/out", reqid=4)))
        assert _epoch(m) == "6"
        assert sorted(names(m.get_config(source="running").data_xml)) == [
            "fp/p1/0/out", "fp/p2/0/out", "fp/p3/0/out", "fp/p4/0/out"]


def test_add_fence_forms() -> None:
    el = etree.fromstring(ikeless_config())
    for edit in (el, etree.tostring(el), b'<config xmlns="urn:x"/>'):
        out = add_fence(edit, 9)
        root = etree.fromstring(out) if isinstance(out, bytes) else out
        assert root.find(f"{{{FENCE_NS}}}controller-fence/{{{FENCE_NS}}}epoch").text == "9"
    assert len(el) == 1  # the caller's element is not modified


def test_only_nsfs_serving_the_fence_get_the_epoch(caplog: pytest.LogCaptureFixture) -> None:
    """An NSF without i2nsf-controller-fence (an older agent) is still provisioned: its
    edits carry no epoch (they would fail with unknown-namespace), with one warning."""
    from types import SimpleNamespace

    from controller.core.engine import Engine
    from controller.core.store import SqliteStore

    eng = Engine(SqliteStore(":memory:"), None, time.monotonic, lambda *a: None,
                 lambda s: None)
    new = SimpleNamespace(client=SimpleNamespace(server_capabilities=[
        f"{FENCE_NS}?module=i2nsf-controller-fence&revision=2026-12-04"]))
    old = SimpleNamespace(client=SimpleNamespace(server_capabilities=[
        f"{FENCE_NS}-other?module=x"]))
    assert eng._fences("gw1", new)  # type: ignore[arg-type]
    with caplog.at_level("WARNING"):
        assert not eng._fences("gw2", old)  # type: ignore[arg-type]
        assert not eng._fences("gw2", old)  # type: ignore[arg-type]
        assert not eng._fences("gw3", None)
    warned = [r for r in caplog.records if "does not serve i2nsf-controller-fence" in
              r.getMessage()]
    assert [r.getMessage().split()[1] for r in warned] == ["gw2", "gw3"]
