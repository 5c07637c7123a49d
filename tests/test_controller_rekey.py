"""Rekey state machine driven by an injected clock (no sleeps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.rekey import Action, Phase, PolicyTimer, RekeyScheduler
from controller.store import SqliteStore


def run(s: RekeyScheduler, now: float, expect: Phase | None = None) -> Action:
    acts = s.due(now)
    assert len(acts) == 1, acts
    if expect is not None:
        assert acts[0].kind is expect
    return acts[0]


def installed(soft: int = 100, hard: int = 120, **kw: float) -> RekeyScheduler:
    s = RekeyScheduler(**kw)
    s.add("p", soft, hard, now=0.0)
    a = run(s, 0.0, Phase.INSTALL)
    assert (a.generation, a.old_generation) == (0, None)
    assert s.status("p") == "pending"
    assert s.completed(a, 0.0)
    assert s.status("p") == "active"
    return s


def test_make_before_break_cycle() -> None:
    s = installed()
    assert s.next_wakeup() == 90.0  # soft 100 minus a 10 % margin
    assert s.next_rekey("p") == 90.0
    assert s.due(89.9) == []
    a1 = run(s, 90.0, Phase.ADD_INBOUND)
    assert (a1.generation, a1.old_generation) == (1, 0)
    assert s.status("p") == "rekeying"
    assert s.next_wakeup() is None  # in flight
    s.completed(a1, 90.5)
    a2 = run(s, 90.5, Phase.SWITCH_OUTBOUND)
    assert (a2.generation, a2.old_generation) == (1, 0)
    s.completed(a2, 91.0)
    assert s.due(92.9) == []  # grace period of 2 s for packets in flight
    a3 = run(s, 93.0, Phase.REMOVE_OLD)
    assert (a3.generation, a3.old_generation) == (1, 0)
    s.completed(a3, 93.1)
    t = s.timers["p"]
    assert (t.phase, t.generation, t.old) == (Phase.IDLE, 1, None)
    # the new generation's age counts from when its SAs were written (step 1)
    assert s.next_wakeup() == pytest.approx(90.5 + 90)


def simulate(s: RekeyScheduler, until: float, hard: int,
             fail_every: int = 0) -> tuple[int, dict[int, tuple[float, float | None]]]:
    """Drive the scheduler like the event loop would, acting on an imaginary pair of NSFs;
    returns the number of rekeys and, per generation, (created, removed-from-outbound)."""
    now = 0.0
    life: dict[int, tuple[float, float | None]] = {0: (0.0, None)}  # from installed()
    rekeys = 0
    n = 0
    while now < until:
        wake = s.next_wakeup()
        assert wake is not None
        now = max(now, wake)
        for a in s.due(now):
            n += 1
            now += 0.05  # each NETCONF transaction takes a while
            if fail_every and n % fail_every == 0:
                s.failed(a, now, "injected failure")
                continue
            if a.kind in (Phase.INSTALL, Phase.ADD_INBOUND):
                assert a.generation is not None
                life[a.generation] = (now, None)
            elif a.kind is Phase.SWITCH_OUTBOUND:
                assert a.old_generation is not None
                life[a.old_generation] = (life[a.old_generation][0], now)
                rekeys += 1
            s.completed(a, now)
            # never does a generation still carrying traffic outlive its hard lifetime
            for created, switched in life.values():
                if switched is None:
                    assert now - created < hard
    return rekeys, life


def test_short_lifetimes_many_rekeys_never_reach_hard() -> None:
    s = installed(soft=3, hard=5)
    rekeys, life = simulate(s, until=40.0, hard=5)
    assert rekeys >= 10
    assert len(life) == rekeys + 1


def test_retries_with_backoff_still_beat_hard_lifetime() -> None:
    s = installed(soft=20, hard=30)
    rekeys, _ = simulate(s, until=300.0, hard=30, fail_every=3)
    assert rekeys >= 10


def test_failure_backoff_and_stale_reports() -> None:
    s = installed()
    a = run(s, 90.0, Phase.ADD_INBOUND)
    assert s.failed(a, 90.0, "gw2: connection refused")
    assert s.status("p") == "failed"
    assert s.timers["p"].last_error == "gw2: connection refused"
    assert s.next_wakeup() == 91.0
    assert not s.completed(a, 90.5)  # that attempt is over
    a = run(s, 91.0, Phase.ADD_INBOUND)
    assert a.generation == 1  # same target generation on retry
    s.failed(a, 91.0, "again")
    assert s.next_wakeup() == 93.0
    a = run(s, 93.0, Phase.ADD_INBOUND)
    s.failed(a, 93.0, "again")
    assert s.next_wakeup() == 97.0
    # hard lifetime (120) passes while the NSF stays unreachable: re-create instead
    for _ in range(10):
        w = s.next_wakeup()
        assert w is not None
        acts = s.due(w)
        if acts[0].kind is Phase.INSTALL:
            break
        s.failed(acts[0], w, "down")
    a = acts[0]
    assert a.kind is Phase.INSTALL and a.generation == 2
    assert s.timers["p"].created_at is not None and w >= 120
    s.completed(a, w)
    assert s.status("p") == "active" and s.timers["p"].generation == 2


def test_soft_expire_event() -> None:
    s = installed()
    assert not s.on_soft_expire("p", 7, 10.0)  # unknown generation
    assert not s.on_soft_expire("nope", 0, 10.0)
    assert s.on_soft_expire("p", 0, 10.0)  # bytes ran out early: rekey now
    a = run(s, 10.0, Phase.ADD_INBOUND)
    assert not s.on_soft_expire("p", 0, 10.1)  # already rekeying
    s.completed(a, 10.2)
    s.completed(run(s, 10.2, Phase.SWITCH_OUTBOUND), 10.3)
    # the old inbound SAs may report soft expiry during the grace period: ignored
    assert not s.on_soft_expire("p", 0, 11.0)


def test_hard_expire_event() -> None:
    s = installed()
    assert s.on_hard_expire("p", 0, 50.0)  # live SAs gone (e.g. byte limit)
    a = run(s, 50.0, Phase.INSTALL)
    assert a.generation == 1
    assert s.status("p") == "rekeying"
    s.completed(a, 50.0)
    assert s.next_wakeup() == 140.0
    # during the grace period a hard expiry of the old generation just ends it early
    s.completed(run(s, 140.0, Phase.ADD_INBOUND), 140.0)
    s.completed(run(s, 140.0, Phase.SWITCH_OUTBOUND), 140.0)
    assert s.on_hard_expire("p", 1, 140.5)
    run(s, 140.5, Phase.REMOVE_OLD)
    assert not s.on_hard_expire("p", 0, 140.5)  # long gone


def test_hard_expire_mid_rekey_supersedes_in_flight_action() -> None:
    s = installed()
    a = run(s, 90.0, Phase.ADD_INBOUND)
    assert s.on_hard_expire("p", 0, 90.1)
    assert not s.completed(a, 90.2)  # superseded by the re-creation
    b = run(s, 90.2, Phase.INSTALL)
    assert b.generation == 2  # past both the old (0) and the abandoned (1) generation


def test_on_demand_acquire() -> None:
    s = RekeyScheduler()
    s.add("p", 100, 120, now=0.0, on_demand=True)
    a = run(s, 0.0, Phase.INSTALL_SPD)
    assert a.generation is None
    s.completed(a, 0.0)
    assert s.timers["p"].phase is Phase.WAITING_ACQUIRE
    assert s.next_wakeup() is None and s.due(1000.0) == []
    assert s.status("p") == "active"
    with pytest.raises(ValueError):
        s.request_rekey("p", 5.0)
    assert s.on_acquire("p", 5.0)
    a = run(s, 5.0, Phase.INSTALL)
    assert a.generation == 0
    s.completed(a, 5.0)
    assert not s.on_acquire("p", 5.5)  # raced with the install
    assert s.on_acquire("p", 30.0)  # SAs lost: re-create
    assert run(s, 30.0, Phase.INSTALL).generation == 1
    assert not s.on_acquire("unknown", 1.0)


def test_manual_rekey() -> None:
    s = installed()
    assert s.request_rekey("p", 10.0) == 1
    a = run(s, 10.0, Phase.ADD_INBOUND)
    assert s.request_rekey("p", 10.1) == 2  # queued behind the running one
    s.completed(a, 10.1)
    s.completed(run(s, 10.1, Phase.SWITCH_OUTBOUND), 10.2)
    s.completed(run(s, 12.2, Phase.REMOVE_OLD), 12.2)
    a = run(s, 12.2, Phase.ADD_INBOUND)
    assert (a.generation, a.old_generation) == (2, 1)


def test_lifetime_change_reaims_idle_timer() -> None:
    s = installed()
    s.set_lifetimes("p", 50, 60)
    assert s.next_wakeup() == 45.0
    s.set_lifetimes("p", 0, 0)
    assert s.next_wakeup() is None  # no time-based rekey at all


def test_restart_resumes_from_store(tmp_path: Path) -> None:
    """Controller killed mid-rekey: the store has the timer; the step is redone at once and
    the idle deadlines of other policies are kept."""
    db = SqliteStore(tmp_path / "c.db")
    s = installed()
    s.add("q", 100, 120, now=10.0)
    s.completed(run(s, 10.0, Phase.INSTALL), 10.0)
    s.completed(run(s, 90.0, Phase.ADD_INBOUND), 90.0)
    for a in s.due(90.0):  # p: SWITCH_OUTBOUND in flight when we die
        assert a.kind is Phase.SWITCH_OUTBOUND
    q_due = s.timers["q"].due
    for name, t in s.timers.items():
        db.put_policy(name, {"name": name})
        db.put_schedule(name, t.due, t.to_dict())
    db.close()

    db = SqliteStore(tmp_path / "c.db")
    s2 = RekeyScheduler()
    for _name, _due, state in db.list_schedule():
        s2.resume(PolicyTimer.from_dict(json.loads(json.dumps(state))), now=95.0)
    db.close()
    acts = s2.due(95.0)
    assert [(a.policy, a.kind, a.generation, a.old_generation) for a in acts] == [
        ("p", Phase.SWITCH_OUTBOUND, 1, 0)]
    assert s2.timers["q"].due == q_due == 100.0
    s2.completed(acts[0], 95.0)
    assert s2.timers["p"].generation == 1


def test_timer_round_trip() -> None:
    t = PolicyTimer("p", 10, 20, Phase.REMOVE_OLD, generation=3, created_at=1.5, old=2,
                    due=4.0, in_flight=9, attempts=1, last_error="x")
    back = PolicyTimer.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.phase is Phase.REMOVE_OLD and back.in_flight is None
    assert (back.generation, back.old, back.due, back.last_error) == (3, 2, 4.0, "x")
