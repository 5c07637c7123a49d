"""Due actions → all-or-nothing NSF transactions, batched.

Every action of one wake-up gets its edits prepared (SAs stored first, see `SaLedger`); all
actions that touch a connected group of NSFs go in one transaction — one edit-config carrying
all their changes, one confirmed commit and one confirm per NSF — since much of an NSF's cost
per transaction does not depend on how many entries change. If such a transaction fails, the
actions on an unreachable NSF fail at once and the others are retried in smaller transactions
(`_run_batch`), so one bad policy or one NSF only delays its own policies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from controller.core.nc_client import NcError
from controller.core.transaction import TransactionError, locked
from controller.ipsec import translate
from controller.ipsec.rekey import Action, Phase
from controller.ipsec.translate import Parts, Plan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """A prepared action: the action, its policy's plan, and its edit for each NSF."""

    action: Action
    plan: Plan
    edits: Parts


def _components(items: list[Item]) -> list[list[Item]]:
    """Split prepared actions into groups that share no NSF, so that independent groups of
    sites commit side by side and never wait for each other (order kept within a group)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for it in items:
        names = list(it.edits)
        for other in names[1:]:
            ra, rb = find(names[0]), find(other)
            if ra != rb:
                parent[rb] = ra
    groups: dict[str, list[Item]] = {}
    for it in items:
        key = find(next(iter(it.edits))) if it.edits else ""
        groups.setdefault(key, []).append(it)
    return list(groups.values())


class Batching:
    """FlowService's batches and transactions (a mixin: the state is FlowService's)."""

    def _edits(self, plan: Plan, action: Action) -> Parts:
        parts = self.ledger.prepare_parts(plan, action)
        if action.kind in (Phase.INSTALL, Phase.INSTALL_SPD):
            cleanup = self._cleanup_edits(plan)
            if cleanup:
                parts = translate.join_parts(cleanup, parts)
        return parts

    def _cleanup_edits(self, plan: Plan) -> Parts:
        """Entries a changed policy no longer has: SPD entries of flows that went away and
        everything on NSFs that are no longer its endpoints."""
        out: Parts = {}
        mine = {s.nsf.name for s in plan.sides()}
        want = set(plan.spd_names())
        sas = self.store.get_sas(plan.name)
        for nsf, names in self.store.get_spd(plan.name).items():
            if nsf in mine:
                stale = [n for n in names if n not in want]
                if stale:
                    out[nsf] = translate.delete_by_names_parts(stale, [])
            else:
                out[nsf] = translate.delete_by_names_parts(
                    names, [s.name for s in sas if nsf in (s.sender, s.receiver)])
        return out

    async def _runner(self, actions: list[Action]) -> None:
        try:
            await self._run_actions(actions)
        finally:
            self._runner_busy = False
            self._running = set()
            self.wake()

    async def _run_actions(self, actions: list[Action]) -> None:
        nsfs = {n for a in actions if (p := self.plans.get(a.policy)) is not None
                for n in (p.a.name, p.b.name)}
        await self._await_first_sessions(nsfs)
        t0 = time.monotonic()
        ready: list[Item] = []
        with self.store.transaction():  # one SQLite transaction for all new SAs
            for a in actions:
                plan = self.plans.get(a.policy)
                if plan is None:
                    continue  # deleted meanwhile; its timer is gone
                try:
                    edits = self._edits(plan, a)
                except Exception as exc:
                    log.exception("policy %s: cannot prepare %s", a.policy, a.kind)
                    self._failed(a, f"cannot prepare {a.kind}: {exc}")
                    continue
                ready.append(Item(a, plan, edits))
        t1 = time.monotonic()
        groups = [g[i:i + self.opts.batch_max] for g in _components(ready)
                  for i in range(0, len(g), self.opts.batch_max)]
        ahead = asyncio.create_task(self._make_next_generations(ready))
        try:
            await asyncio.gather(*(self._run_batch(g) for g in groups))
        finally:
            await ahead
        if log.isEnabledFor(logging.DEBUG):
            kinds: dict[str, int] = {}
            for it in ready:
                k = (it.action.kind.value
                     + ("+remove" if it.action.also_remove is not None else "")
                     + ("+add" if it.action.then_add is not None else ""))
                kinds[k] = kinds.get(k, 0) + 1
            log.debug("batch: %d actions %s on %d NSFs in %d groups: prepared in %.3f s, "
                      "done in %.3f s", len(ready), kinds,
                      len({n for it in ready for n in it.edits}), len(groups), t1 - t0,
                      time.monotonic() - t1)
        self.wake()

    async def _make_next_generations(self, items: list[Item]) -> None:
        """While the NSFs apply these steps, make the SPIs and keys of the generation each
        policy with a time-based rekey will need next: the controller would otherwise
        wait for that work between the steps (everything else waits for it then)."""
        await asyncio.sleep(0)  # the transactions send their edits first
        try:
            for i, it in enumerate(items):
                a = it.action
                t = self.sched.timers.get(a.policy)
                gens = [g for g in (a.generation, a.then_add) if g is not None]
                if (gens and t is not None and t.soft_time
                        and self.plans.get(a.policy) is it.plan):
                    self.ledger.pregenerate(it.plan, max(gens) + 1)
                if i % 100 == 99:
                    await asyncio.sleep(0)  # NSF replies are not kept waiting
            self.ledger.forget_next(lambda name, plan: self.plans.get(name) is plan)
        except Exception:  # never fatal: each step makes its SAs itself when needed
            log.exception("cannot make the next generations ahead of time")

    async def _run_batch(self, items: list[Item]) -> None:
        """Carry out `items` in one transaction: one edit-config per NSF holding all their
        changes for it, one confirmed commit and one confirm per NSF. If it fails, nobody
        waits for a culprit longer than needed: actions on an NSF that is down fail at once
        with its error; when an NSF refused the content, the actions not touching it go
        again together, and those touching it are halved until each failing action stands
        alone — so every action is reported with its own outcome."""
        if not items:
            return
        try:
            err = await self._transaction(items)
        except Exception as exc:  # a bug must not leave these actions in flight forever
            log.exception("transaction of %d actions failed unexpectedly", len(items))
            with self.store.transaction():
                for it in items:
                    self._failed(it.action, f"internal error: {exc}")
            return
        if err is None:
            return
        if len(items) == 1:
            with self.store.transaction():
                self._failed(items[0].action, self._reason(err, items[0]))
            return
        hit = [it for it in items if err.down & it.edits.keys()]
        if hit:
            with self.store.transaction():
                for it in hit:
                    self._failed(it.action, self._reason(err, it))
        rest = [it for it in items if not err.down & it.edits.keys()]
        suspects = [it for it in rest if err.refused & it.edits.keys()]
        innocent = [it for it in rest if not err.refused & it.edits.keys()]
        parts = [p for p in (suspects[:len(suspects) // 2], suspects[len(suspects) // 2:],
                             innocent) if p]
        if len(parts) == 1 and len(parts[0]) == len(items):  # learnt nothing: halve
            parts = [items[:len(items) // 2], items[len(items) // 2:]]
        log.info("transaction of %d actions failed (%s); %d failed with an unreachable NSF, "
                 "retrying %d in %d parts", len(items), err, len(hit),
                 sum(len(p) for p in parts), len(parts))
        await asyncio.gather(*(self._run_batch(p) for p in parts))

    @staticmethod
    def _reason(err: TransactionError, it: Item) -> str:
        """The error to report for one action of a failed transaction: its own NSF's."""
        mine = sorted((err.down | err.refused) & it.edits.keys())
        if not mine or err.nsf in mine:
            return err.reasons.get(err.nsf, str(err))
        return err.reasons.get(mine[0], f"NSF {mine[0]}: {err.step} failed")

    async def _transaction(self, items: list[Item]) -> TransactionError | None:
        """One all-or-nothing transaction for `items`; None if it committed (the actions are
        then recorded as done), else what went wrong (nothing recorded)."""
        nsfs = {n for it in items for n in it.edits}
        down = {n: why for n in sorted(nsfs) if (why := self._unreachable(n)) is not None}
        if down:
            n = min(down)
            err = TransactionError(n, "connect", down[n], down=down)
            err.reasons.update(down)  # already phrased per NSF
            return err
        sessions = {n: self.south.sessions[n] for n in nsfs}
        async with locked(sessions):
            t0 = time.monotonic()
            # A policy deleted or re-created while this waited for the locks: drop it.
            items = [it for it in items if self._current(it.action)]
            edits = translate.parts_to_bytes(it.edits for it in items)
            t1 = time.monotonic()
            if items and edits:
                try:
                    await self._transact({n: sessions[n] for n in edits}, edits)
                except TransactionError as exc:
                    return exc
                except NcError as exc:
                    return TransactionError(min(edits), "transaction", str(exc), refused=edits)
            t2 = time.monotonic()
            now = self.clock()
            with self.store.transaction():
                for it in items:
                    self._completed(it.action, it.plan, now)
            log.debug("transaction of %d actions on %d NSFs: edits rendered in %.3f s, NSFs "
                      "done in %.3f s, recorded in %.3f s", len(items), len(edits), t1 - t0,
                      t2 - t1, time.monotonic() - t2)
        return None
