"""Rekey scheduling as a pure state machine (no I/O, no clock of its own).

Without IKE nobody but the controller replaces SAs, so every policy has a timer here. The
asyncio side asks `due(now)` for the actions to run, runs them (NETCONF transactions on both
NSFs) and reports `completed`/`failed`; NSF notifications come in through `on_soft_expire`,
`on_hard_expire` and `on_acquire`. Time is always passed in, so tests drive it with a fake
clock and the state survives restarts through `to_dict`/`from_dict` (stored per policy).

A rekey is make-before-break, in three actions:
  1. ADD_INBOUND      the new generation's SAs are added as inbound SAs on both NSFs;
  2. SWITCH_OUTBOUND  on each NSF the old outbound SA is replaced by the new one (the peer
                      already accepts it, so no packet is lost);
  3. REMOVE_OLD       after a grace period for packets in flight, the old inbound SAs go.
Each action is idempotent (the executor re-sends the same stored SAs), so a failed or
interrupted action is simply retried, with exponential backoff.

When the next rekey is already due as step 3 starts (short lifetimes, a loaded controller,
a queued `rekey-policy`), step 3 also carries the next rekey's step 1 (`Action.then_add`):
removing the old inbound SAs and adding the next generation's are independent, so they go
in one edit and a rekey costs two NSF transactions instead of three. A generation's age
counts from when its step was issued (its SAs are written then), never from when the
transaction finished, so the controller's idea of an SA's age is never younger than the
NSF's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)


class Phase(StrEnum):
    INSTALL_SPD = "install-spd"  # on-demand policy: SPD entries only
    WAITING_ACQUIRE = "waiting-acquire"  # on-demand: SAs on the first sadb-acquire
    INSTALL = "install"  # (re)create: replace all SAs of the policy with generation `target`
    IDLE = "idle"  # generation `generation` in use; time-based rekey at `due`
    ADD_INBOUND = "add-inbound"
    SWITCH_OUTBOUND = "switch-outbound"
    REMOVE_OLD = "remove-old"


@dataclass(frozen=True)
class Action:
    """What the executor must do now. `generation` is the generation installed or switched
    to; `old_generation` the one being replaced or removed."""

    policy: str
    kind: Phase
    generation: int | None
    old_generation: int | None
    seq: int  # identifies this attempt; late reports of superseded attempts are ignored
    issued: float = 0.0  # when due() handed it out: the new SAs are no older than this
    # REMOVE_OLD, SWITCH_OUTBOUND: also add this generation's inbound SAs (the next
    # rekey's step 1)
    then_add: int | None = None
    # SWITCH_OUTBOUND: also remove this older generation's inbound SAs (its grace is over)
    also_remove: int | None = None


@dataclass
class PolicyTimer:
    policy: str
    soft_time: int  # seconds, 0: no time-based rekey
    hard_time: int  # seconds, 0: none
    phase: Phase
    generation: int | None = None  # live generation (outbound SAs), None before the first
    created_at: float | None = None  # when the live generation's SAs were written
    target: int | None = None  # generation being introduced
    target_created_at: float | None = None
    old: int | None = None  # generation waiting for removal
    old_until: float | None = None  # end of its grace period
    due: float | None = None
    in_flight: int | None = None
    attempts: int = 0
    last_error: str | None = None
    reason: str = ""
    rekey_pending: bool = False  # a rekey was asked for while another was running
    # hard deadline of the live / incoming generation, from the lifetimes it was written
    # with (a later lifetime change does not shorten SAs already on the NSFs)
    hard_at: float | None = None
    target_hard_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        # fields are plain values: no need for asdict's deep copy (stored on every step)
        d = {f: getattr(self, f) for f in _TIMER_FIELDS}
        d["phase"] = self.phase.value
        d["in_flight"] = None  # an action in flight at shutdown is redone after restart
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyTimer:
        return cls(**{**d, "phase": Phase(d["phase"])})


_TIMER_FIELDS = tuple(f.name for f in fields(PolicyTimer))


class RekeyScheduler:
    """Timers of all policies. Not thread-safe: one event loop drives it."""

    def __init__(self, *, margin_fraction: float = 0.1, max_margin: float = 60.0,
                 grace: float = 2.0, retry_base: float = 1.0, retry_max: float = 30.0,
                 acquire_debounce: float = 2.0) -> None:
        self.margin_fraction = margin_fraction
        self.max_margin = max_margin
        self.grace = grace
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.acquire_debounce = acquire_debounce
        self.timers: dict[str, PolicyTimer] = {}
        self._seq = 0

    # ---- policies ---------------------------------------------------------------------------

    def add(self, policy: str, soft_time: int, hard_time: int, now: float,
            on_demand: bool = False) -> PolicyTimer:
        """A new policy: install it now (SPD only when its SAs are created on demand)."""
        t = PolicyTimer(policy, soft_time, hard_time,
                        Phase.INSTALL_SPD if on_demand else Phase.INSTALL,
                        target=None if on_demand else 0, due=now, reason="new policy")
        self.timers[policy] = t
        return t

    def resume(self, timer: PolicyTimer, now: float) -> None:
        """Take back a timer from the store after a restart. Work that was in progress is
        redone at once; an idle timer keeps its deadline (or fires now if it passed)."""
        timer.in_flight = None
        if timer.phase not in (Phase.IDLE, Phase.WAITING_ACQUIRE, Phase.REMOVE_OLD):
            timer.due = now
        self.timers[timer.policy] = timer

    def remove(self, policy: str) -> None:
        self.timers.pop(policy, None)

    def set_lifetimes(self, policy: str, soft_time: int, hard_time: int) -> None:
        """New lifetimes apply from the next generation; an idle timer is re-aimed."""
        t = self.timers[policy]
        t.soft_time, t.hard_time = soft_time, hard_time
        if t.phase is Phase.IDLE and t.in_flight is None and not t.rekey_pending:
            t.due = self._rekey_at(t)

    def margin(self, soft_time: int) -> float:
        """How long before the soft lifetime the controller starts a rekey, so that the
        NSF's own soft expiry is only a backstop."""
        return min(self.max_margin, soft_time * self.margin_fraction)

    def _rekey_at(self, t: PolicyTimer) -> float | None:
        if not t.soft_time or t.created_at is None:
            return None
        return t.created_at + t.soft_time - self.margin(t.soft_time)

    def _hard_deadline(self, t: PolicyTimer) -> float | None:
        if t.hard_at is not None:
            return t.hard_at
        if not t.hard_time or t.created_at is None:
            return None
        return t.created_at + t.hard_time  # a timer stored before hard_at existed

    def _hard_from(self, t: PolicyTimer, created: float) -> float | None:
        return created + t.hard_time if t.hard_time else None

    def _due_by(self, t: PolicyTimer, created: float | None, when: float) -> bool:
        """Is the time-based rekey of a generation written at `created` due by `when`?"""
        if not t.soft_time or created is None:
            return False
        return created + t.soft_time - self.margin(t.soft_time) <= when

    def _recreate(self, t: PolicyTimer, now: float, reason: str) -> None:
        gens = [g for g in (t.generation, t.target, t.old) if g is not None]
        t.phase = Phase.INSTALL
        t.target = max(gens) + 1 if gens else 0
        t.target_created_at = None
        t.target_hard_at = None
        t.old = t.old_until = None
        t.due = now
        t.in_flight = None
        t.rekey_pending = False
        t.reason = reason
        log.info("policy %s: re-creating SAs as generation %d (%s)", t.policy, t.target, reason)

    # ---- the loop's side ----------------------------------------------------------------------

    def due(self, now: float) -> list[Action]:
        """Actions to start now; each stays in flight until completed() or failed()."""
        out = []
        late: list[str] = []
        for t in self.timers.values():
            if t.in_flight is not None or t.due is None or t.due > now:
                continue
            hard = self._hard_deadline(t)
            if (t.phase in (Phase.IDLE, Phase.ADD_INBOUND, Phase.SWITCH_OUTBOUND,
                            Phase.REMOVE_OLD) and hard is not None and now >= hard):
                # The NSFs have dropped the live SAs by now: a rekey is too late.
                self._recreate(t, now, "hard lifetime passed before the rekey finished")
                late.append(t.policy)
            if t.phase is Phase.IDLE:
                assert t.generation is not None
                t.phase = Phase.ADD_INBOUND
                t.target = t.generation + 1
                t.rekey_pending = False
                t.reason = t.reason or "soft lifetime"
                log.info("policy %s: rekey to generation %d (%s)", t.policy, t.target,
                         t.reason)
            if (t.phase is Phase.SWITCH_OUTBOUND and t.old is not None
                    and t.old_until is not None and now < t.old_until):
                t.due = t.old_until  # the previous switch's grace first: one old at a time
                continue
            self._seq += 1
            t.in_flight = self._seq
            if t.phase in (Phase.INSTALL, Phase.INSTALL_SPD):
                a = Action(t.policy, t.phase, t.target, None, self._seq, now)
            elif t.phase is Phase.ADD_INBOUND:
                a = Action(t.policy, t.phase, t.target, t.generation, self._seq, now)
            elif t.phase is Phase.SWITCH_OUTBOUND:
                assert t.target is not None
                # The generation switched to will itself be due for a rekey by the time this
                # step is done: bring its successor in now, in the same edit.
                nxt = t.target + 1 if t.rekey_pending or self._due_by(
                    t, t.target_created_at, now) else None
                a = Action(t.policy, t.phase, t.target, t.generation, self._seq, now, nxt,
                           t.old)
            elif t.phase is Phase.REMOVE_OLD:
                nxt = t.target  # set: an earlier attempt of this step carried it too
                if nxt is None and (t.rekey_pending or self._due_by(
                        t, t.created_at, now)):
                    assert t.generation is not None
                    nxt = t.target = t.generation + 1
                    t.reason = ("requested during the previous rekey" if t.rekey_pending
                                else "soft lifetime")
                    t.rekey_pending = False
                    log.info("policy %s: rekey to generation %d (%s), with the removal of "
                             "generation %s", t.policy, nxt, t.reason, t.old)
                a = Action(t.policy, t.phase, t.generation, t.old, self._seq, now, nxt)
            else:  # WAITING_ACQUIRE has no deadline
                t.in_flight = None
                continue
            out.append(a)
        if late:  # a traffic gap on these policies: worth one warning per wake-up
            log.warning("%d policies re-created: hard lifetime passed before their rekey "
                        "finished (e.g. %s)", len(late), ", ".join(late[:5]))
        return out

    def next_wakeup(self) -> float | None:
        """Earliest deadline of a timer with no action in flight (None: nothing planned)."""
        dues = [t.due for t in self.timers.values() if t.in_flight is None and t.due is not None]
        return min(dues) if dues else None

    def _current(self, a: Action) -> PolicyTimer | None:
        t = self.timers.get(a.policy)
        if t is None or t.in_flight != a.seq:
            log.debug("ignoring a superseded %s report for policy %s", a.kind, a.policy)
            return None
        return t

    def completed(self, a: Action, now: float) -> bool:
        """The action succeeded on both NSFs. False if it had been superseded."""
        t = self._current(a)
        if t is None:
            return False
        t.in_flight = None
        t.attempts = 0
        t.last_error = None
        # the SAs were written when the action was issued: count their age from then
        created = min(a.issued, now) if a.issued else now
        if t.phase is Phase.INSTALL_SPD:
            t.phase, t.due = Phase.WAITING_ACQUIRE, None
        elif t.phase is Phase.INSTALL:
            t.generation, t.created_at, t.target = t.target, created, None
            t.hard_at = self._hard_from(t, created)
            self._idle(t, now)
        elif t.phase is Phase.ADD_INBOUND:
            t.target_created_at = created
            t.target_hard_at = self._hard_from(t, created)
            t.phase, t.due = Phase.SWITCH_OUTBOUND, now
        elif t.phase is Phase.SWITCH_OUTBOUND:
            # a.also_remove (the older generation) is gone; the replaced one starts its grace
            t.old, t.generation = t.generation, t.target
            t.old_until = now + self.grace
            t.created_at, t.hard_at = t.target_created_at, t.target_hard_at
            if a.then_add is not None:  # the next rekey's step 1 is done too
                t.target, t.target_created_at = a.then_add, created
                t.target_hard_at = self._hard_from(t, created)
                t.rekey_pending = False
                t.phase = Phase.SWITCH_OUTBOUND
            else:
                t.target = t.target_created_at = t.target_hard_at = None
                t.phase = Phase.REMOVE_OLD
            t.due = t.old_until
        elif t.phase is Phase.REMOVE_OLD:
            t.old = t.old_until = None
            if a.then_add is not None:  # the next rekey's step 1 is done too
                t.target = a.then_add
                t.target_created_at = created
                t.target_hard_at = self._hard_from(t, created)
                t.phase, t.due = Phase.SWITCH_OUTBOUND, now
            else:
                self._idle(t, now)
        return True

    def _idle(self, t: PolicyTimer, now: float) -> None:
        t.phase = Phase.IDLE
        t.reason = ""
        if t.rekey_pending:
            t.due, t.reason = now, "requested during the previous rekey"
        else:
            t.due = self._rekey_at(t)

    def failed(self, a: Action, now: float, error: str) -> bool:
        """The action failed (and was rolled back on both NSFs): retry with backoff."""
        t = self._current(a)
        if t is None:
            return False
        t.in_flight = None
        t.attempts += 1
        t.last_error = error
        delay = min(self.retry_max, self.retry_base * 2 ** (t.attempts - 1))
        t.due = now + delay
        log.warning("policy %s: %s failed (attempt %d), retrying in %.1f s: %s",
                    t.policy, a.kind, t.attempts, delay, error)
        return True

    # ---- events -------------------------------------------------------------------------------

    def request_rekey(self, policy: str, now: float, reason: str = "requested") -> int:
        """Rekey as soon as possible (the rekey-policy RPC); returns the generation the
        policy will have once the rekey is done."""
        t = self.timers[policy]
        if t.phase is Phase.IDLE and t.in_flight is None:
            t.due, t.reason = now, reason
            assert t.generation is not None
            return t.generation + 1
        if t.phase in (Phase.INSTALL_SPD, Phase.WAITING_ACQUIRE):
            raise ValueError(f"policy {policy} has no SAs yet (created on demand)")
        t.rekey_pending = True
        base = t.target if t.target is not None else (t.generation or 0)
        return base + 1

    def on_soft_expire(self, policy: str, generation: int, now: float) -> bool:
        """sadb-expire (soft) from an NSF: bytes/packets ran out before our timer; rekey now.
        Soft expiries of generations being replaced are expected and ignored."""
        t = self.timers.get(policy)
        if t is None or generation != t.generation:
            return False
        if t.phase is Phase.IDLE and t.in_flight is None:
            t.due, t.reason = now, "soft lifetime reached on an NSF"
            return True
        return False

    def on_hard_expire(self, policy: str, generation: int, now: float) -> bool:
        """sadb-expire (hard): the NSF deleted the SA. For the live generation that is an
        outage, so the policy's SAs are re-created; for an old one it only ends the grace."""
        t = self.timers.get(policy)
        if t is None:
            return False
        if t.old is not None and generation == t.old:
            t.old_until = now  # gone already: no grace left to wait for
            if t.in_flight is None:
                t.due = now
            return True
        if generation in (t.generation, t.target) and t.phase not in (
                Phase.INSTALL, Phase.INSTALL_SPD, Phase.WAITING_ACQUIRE):
            self._recreate(t, now, f"hard lifetime of generation {generation} reached")
            return True
        return False

    def on_acquire(self, policy: str, now: float) -> bool:
        """sadb-acquire: traffic matched an SPD entry without an SA. Create the SAs of an
        on-demand policy; for a policy that should have SAs, they were lost: re-create
        (unless they were just written and the acquire raced with them)."""
        t = self.timers.get(policy)
        if t is None:
            return False
        if t.phase is Phase.WAITING_ACQUIRE:
            t.phase, t.target, t.due = Phase.INSTALL, 0, now
            t.reason = "acquire"
            return True
        if (t.phase is Phase.IDLE and t.created_at is not None
                and now - t.created_at >= self.acquire_debounce):
            self._recreate(t, now, "acquire for a policy that should have SAs")
            return True
        return False

    # ---- state ----------------------------------------------------------------------------------

    def status(self, policy: str) -> str:
        """The i2nsf-flow-policy policy-status of a policy."""
        t = self.timers[policy]
        if t.attempts:
            return "failed"
        if t.phase in (Phase.INSTALL, Phase.INSTALL_SPD):
            return "pending" if t.generation is None else "rekeying"
        if t.phase in (Phase.ADD_INBOUND, Phase.SWITCH_OUTBOUND, Phase.REMOVE_OLD):
            return "rekeying"
        return "active"

    def next_rekey(self, policy: str) -> float | None:
        t = self.timers[policy]
        if t.phase is Phase.IDLE:
            return t.due
        return None
