"""Rekey state machine driven by an injected clock (no sleeps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.core.store import SqliteStore
from controller.ipsec.rekey import Action, Phase, PolicyTimer, RekeyScheduler


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
    assert a3.then_add is None  # the next rekey is far away: nothing to carry along
    s.completed(a3, 93.1)
    t = s.timers["p"]
    assert (t.phase, t.generation, t.old) == (Phase.IDLE, 1, None)
    # the new generation's age counts from when its SAs were written (step 1 was issued
    # at 90.0; it finished at 90.5), so the controller never thinks an SA younger than
    # the NSF does
    assert s.next_wakeup() == pytest.approx(90.0 + 90)


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
                life[a.generation] = (a.issued, None)
            elif a.kind is Phase.REMOVE_OLD and a.then_add is not None:
                life[a.then_add] = (a.issued, None)
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
    assert rekeys + 1 <= len(life) <= rekeys + 2  # the last one may be on its way in


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
    # the queued rekey's first step rides along with this rekey's switch
    a = run(s, 10.1, Phase.SWITCH_OUTBOUND)
    assert (a.generation, a.old_generation, a.then_add, a.also_remove) == (1, 0, 2, None)
    s.completed(a, 10.2)
    assert s.status("p") == "rekeying"
    assert s.due(12.1) == []  # generation 0's grace first: one old generation at a time
    # ... and the removal of generation 0 rides along with the next switch
    a = run(s, 12.2, Phase.SWITCH_OUTBOUND)
    assert (a.generation, a.old_generation, a.then_add, a.also_remove) == (2, 1, None, 0)
    s.completed(a, 12.3)
    a = run(s, 14.3, Phase.REMOVE_OLD)
    assert (a.generation, a.old_generation, a.then_add) == (2, 1, None)
    s.completed(a, 14.3)
    assert s.status("p") == "active" and s.timers["p"].old is None


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


def test_lifetime_change_keeps_the_hard_deadline_of_installed_sas() -> None:
    """SAs on the NSFs keep the lifetimes they were written with: cutting the hard
    lifetime in the configuration must not make the scheduler think they expired (that
    re-created every policy, break-before-make, instead of rekeying it)."""
    s = installed(soft=3240, hard=3600)
    s.set_lifetimes("p", 2, 6)
    s.request_rekey("p", 100.0)
    a = run(s, 100.0, Phase.ADD_INBOUND)
    s.completed(a, 100.5)
    a = run(s, 100.5, Phase.SWITCH_OUTBOUND)
    s.completed(a, 101.0)
    # the new generation was written with hard 6 s at 100.0
    assert s.timers["p"].hard_at == pytest.approx(106.0)
    assert run(s, 106.0).kind is Phase.INSTALL


def batches(s: RekeyScheduler, until: float, took: float, hard: float
            ) -> tuple[int, int, list[Action]]:
    """Drive the scheduler like the engine: everything due goes in one batch that takes
    `took` seconds. Returns (switches, batches, actions)."""
    now, switches, n, seen = 0.0, 0, 0, []
    created: dict[int, float] = {0: 0.0}
    while now < until:
        acts = s.due(now)
        if not acts:
            wake = s.next_wakeup()
            assert wake is not None
            now = max(now, wake)
            continue
        n += 1
        seen += acts
        for a in acts:
            assert a.kind is not Phase.INSTALL, "re-created: a rekey came too late"
            for g in (a.generation if a.kind is Phase.ADD_INBOUND else None, a.then_add):
                if g is not None:
                    created[g] = a.issued
        now += took
        for a in acts:
            s.completed(a, now)
            if a.kind is Phase.SWITCH_OUTBOUND:
                switches += 1
                assert a.old_generation is not None
                assert now - created[a.old_generation] < hard  # never past its hard life
    return switches, n, seen


def test_overloaded_rekeys_take_one_transaction_each() -> None:
    """Transactions slower than the rekey interval (soft 3 s: a rekey every 2.7 s; a batch
    takes 2.8 s): each switch also brings in the next generation and removes the one before
    last, so a rekey costs one transaction, and no SA outlives its hard lifetime (a
    generation lives three transactions: added, switched to, switched away)."""
    s = installed(soft=3, hard=10, grace=0.2)
    switches, n, acts = batches(s, until=120.0, took=2.8, hard=10)
    assert switches >= 30
    assert n <= switches + 3
    steady = [a for a in acts if a.issued > 20]
    assert all(a.kind is Phase.SWITCH_OUTBOUND and a.then_add == a.generation + 1
               and a.also_remove == a.old_generation - 1 for a in steady), steady[:3]


def test_removal_carries_the_next_rekey_when_it_is_due() -> None:
    """Slightly slow transactions (1.5 s for a 2.7 s interval): the rekey is due when the
    old generation's grace ends, so its first step goes with the removal (two transactions
    per rekey instead of three)."""
    s = installed(soft=3, hard=9, grace=0.2)
    switches, n, acts = batches(s, until=120.0, took=1.5, hard=9)
    assert switches >= 25
    assert n <= 2 * switches + 3
    assert any(a.kind is Phase.REMOVE_OLD and a.then_add is not None for a in acts)


def test_failed_combined_step_is_retried_whole() -> None:
    s = installed(soft=100, hard=120)
    s.request_rekey("p", 10.0)
    a = run(s, 10.0, Phase.ADD_INBOUND)
    assert s.request_rekey("p", 10.05) == 2  # queued behind this one
    s.completed(a, 10.1)
    a = run(s, 10.1, Phase.SWITCH_OUTBOUND)
    assert (a.generation, a.old_generation, a.then_add, a.also_remove) == (1, 0, 2, None)
    assert s.failed(a, 10.2, "gw2 down")
    assert s.timers["p"].rekey_pending  # still wanted
    b = run(s, 11.2, Phase.SWITCH_OUTBOUND)  # after a 1 s backoff: the same step again
    assert (b.generation, b.old_generation, b.then_add, b.also_remove) == (1, 0, 2, None)
    assert b.seq != a.seq and not s.completed(a, 11.2)
    s.completed(b, 11.3)
    t = s.timers["p"]
    assert (t.generation, t.target, t.old, t.phase, t.rekey_pending) == (
        1, 2, 0, Phase.SWITCH_OUTBOUND, False)
    assert s.due(13.2) == []  # generation 0's grace (2 s) first
    c = run(s, 13.3, Phase.SWITCH_OUTBOUND)
    assert (c.generation, c.old_generation, c.then_add, c.also_remove) == (2, 1, None, 0)
