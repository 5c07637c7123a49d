"""The loop of the IPsec service: due actions and removals, their outcomes, persistence.

The loop sleeps until the rekey scheduler's next deadline (or a wake-up: a commit, a
notification, an NSF coming back), hands every due action to one runner (`batching`), and
starts the removal of deleted policies. Every transition of a timer is persisted, so a
restarted controller resumes the schedule from the store.
"""

from __future__ import annotations

import contextlib
import logging

from controller.core.engine import wait_event
from controller.core.nc_client import NcError
from controller.core.transaction import TransactionError, locked
from controller.ipsec.rekey import Action, Phase
from controller.ipsec.translate import Plan

log = logging.getLogger(__name__)


class Scheduling:
    """FlowService's loop and action outcomes (a mixin: the state is FlowService's)."""

    async def run(self) -> None:
        assert self._wake is not None
        while True:
            now = self.clock()
            # One runner at a time: what falls due while it works is taken in one batch
            # when it is done, instead of many small transactions queueing for NSF locks.
            if not self._runner_busy:
                actions = self.sched.due(now)
                if actions:
                    self._runner_busy = True
                    self._running = {a.policy for a in actions}
                    self._spawn(self._runner(actions))
            for name, due in list(self.deleting.items()):
                if due <= now and name not in self._busy and name not in self._running:
                    self._busy.add(name)
                    self._spawn(self._delete(name))
            nxt = None if self._runner_busy else self.sched.next_wakeup()
            dues = [d for n, d in self.deleting.items()
                    if n not in self._busy and n not in self._running]
            if dues:
                nxt = min(dues) if nxt is None else min(nxt, *dues)
            self._wake.clear()
            timeout = None if nxt is None else max(0.0, nxt - self.clock())
            await wait_event(self._wake, timeout)

    def _persist(self, name: str) -> None:
        t = self.sched.timers.get(name)
        if t is None:
            return
        self.store.put_schedule(name, t.due, t.to_dict())
        status = self.sched.status(name)
        rec_err = t.last_error if t.attempts else None
        with contextlib.suppress(KeyError):
            self.store.set_policy_status(name, status, rec_err)
        shown = self.policy_status(name)  # (the evidence's verdict on an active one)
        self._status_changed(name, *(shown or (status, rec_err)))

    def _current(self, a: Action) -> bool:
        t = self.sched.timers.get(a.policy)
        return t is not None and t.in_flight == a.seq

    def _completed(self, a: Action, plan: Plan, now: float) -> None:
        self.settled[a.policy] = self.clock()  # its NSFs changed: earlier readings are moot
        if not self._current(a):
            if a.policy in self.deleting:
                # removed while it ran: what it put on the NSFs is recorded all the same,
                # for the removal (which waits for it) to take away
                self.ledger.done(plan, a)
            return  # superseded (re-created, deleted): its scheduling is over
        self.ledger.done(plan, a)
        if a.kind in (Phase.INSTALL, Phase.INSTALL_SPD):
            mine = {s.nsf.name for s in plan.sides()}
            for nsf in self.store.get_spd(plan.name):
                if nsf not in mine:
                    self.store.delete_spd(plan.name, nsf)
        if self.sched.completed(a, now):
            self.stats.actions_done += 1
            self.stats.by_kind[a.kind.value] = self.stats.by_kind.get(a.kind.value, 0) + 1
            if a.kind is Phase.SWITCH_OUTBOUND:
                self.stats.rekeys_done += 1
            elif a.kind is Phase.INSTALL:
                self.stats.installs_done += 1
            log.debug("policy %s: %s done (generation %s)", a.policy, a.kind, a.generation)
        self._persist(a.policy)

    def _failed(self, a: Action, error: str) -> None:
        if self.sched.failed(a, self.clock(), error):
            self._persist(a.policy)

    async def _delete(self, name: str) -> None:
        await self._await_first_sessions(self._policy_nsfs(name))
        try:
            edits = self.ledger.delete_edits(name)
            edits = {n: e for n, e in edits.items() if n in self.south.sessions}
            err: str | None = None
            if edits:
                sessions = self._sessions_for(set(edits))
                if isinstance(sessions, str):
                    err = sessions
                else:
                    async with locked(sessions):
                        try:
                            await self._transact(sessions, edits)
                        except (TransactionError, NcError) as exc:
                            err = str(exc)
                        else:
                            self._deleted(name)
            else:
                self._deleted(name)
            if err is not None:
                n = self._delete_attempts.get(name, 0) + 1
                self._delete_attempts[name] = n
                delay = min(self.opts.retry_max, self.opts.retry_base * 2 ** (n - 1))
                log.warning("policy %s: removal failed (attempt %d), retrying in %.1f s: %s",
                            name, n, delay, err)
                with contextlib.suppress(KeyError):
                    self.store.set_policy_status(name, "deleting", err)
                if name in self.deleting:
                    self.deleting[name] = self.clock() + delay
        finally:
            self._busy.discard(name)
            self.wake()

    def _deleted(self, name: str) -> None:
        if name not in self.deleting:
            return  # re-added while the removal ran: the new install supersedes it
        with self.store.transaction():
            self.store.delete_policy(name)
        self.deleting.pop(name, None)
        self._delete_attempts.pop(name, None)
        self._status.pop(name, None)
        self.stats.deletes_done += 1
        log.info("policy %s removed from its NSFs", name)
        self._sync_sessions()
