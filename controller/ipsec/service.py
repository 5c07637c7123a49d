"""The controller's engine: configuration → desired state → NSF transactions, forever.

`apply_config` (called synchronously by the northbound applier on every commit, and at start
with the stored running configuration) diffs the policy set against the store: new policies
get a timer (install now), removed ones are marked `deleting` and removed from their NSFs,
changed ones are re-created. Nothing here waits for an NSF: the NETCONF commit returns at
once and the asyncio loop (`run`) carries the work out, reporting progress as the policies'
operational status.

The loop sleeps until the scheduler's next deadline (or a wake-up: a commit, a notification,
an NSF coming back), takes every due action, prepares their edits (SAs stored first, see
`SaLedger`), and runs them as all-or-nothing transactions: all actions of one wake-up that
touch a connected group of NSFs go in one transaction — one edit-config carrying all their
changes, one confirmed commit and one confirm per NSF — since much of an NSF's cost per
transaction does not depend on how many entries change. If such a transaction fails, the
actions on an unreachable NSF fail at once and the others are retried in smaller
transactions (see `_run_batch`), so one bad policy or one NSF only delays its own policies.
Every transition of a timer is persisted, so a restarted controller resumes the schedule
from SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from controller import translate
from controller.engine import SaLedger, StateView
from controller.keys import KeyManager
from controller.model import NS as FP_NS
from controller.model import FlowConfig, Nsf, Policy
from controller.nc_client import NcError
from controller.rekey import Action, Phase, PolicyTimer, RekeyScheduler
from controller.southbound import CONNECTED, NsfSession, Southbound
from controller.store import Store
from controller.transaction import TransactionError, cancel_leftover, locked, transact
from controller.translate import Parts, Plan
from nsf_agent.ikeless import NS as IKELESS_NS

log = logging.getLogger(__name__)

IK = f"{{{IKELESS_NS}}}"


@dataclass
class ServiceOptions:
    grace: float = 2.0  # seconds an old inbound SA stays after the outbound switch
    confirm_timeout: int = 60  # NSF confirmed-commit timeout
    rpc_timeout: float = 15.0
    batch_max: int = 8192  # actions per combined transaction (one edit-config per NSF)
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    retry_base: float = 1.0
    retry_max: float = 30.0


@dataclass
class Stats:
    transactions: int = 0
    transactions_failed: int = 0
    actions_done: int = 0
    rekeys_done: int = 0  # completed SWITCH_OUTBOUND steps
    installs_done: int = 0
    deletes_done: int = 0
    resyncs: int = 0
    notifications: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


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


def fingerprint(pol: Policy, cfg: FlowConfig, lifetimes: bool = True) -> str:
    """What a policy's NSF configuration depends on; a change means re-create. Without
    `lifetimes`: the part a lifetime change leaves alone (then a rekey is enough)."""
    prof = cfg.profiles.get(pol.params.crypto_profile)
    doc: dict[str, Any] = {
        "policy": pol.to_dict(),
        "a": cfg.nsfs[pol.a.nsf].to_dict() if pol.a.nsf in cfg.nsfs else None,
        "b": cfg.nsfs[pol.b.nsf].to_dict() if pol.b.nsf in cfg.nsfs else None,
        "profile": prof.to_dict() if prof else None,
    }
    if not lifetimes:
        for d in (doc["policy"]["params"], doc["profile"] or {}):
            d.pop("soft", None)
            d.pop("hard", None)
    for k in ("a", "b"):  # connection details do not change what is installed
        if doc[k]:
            for c in ("address", "port", "username", "host_key", "private_key_file",
                      "password_file"):
                doc[k].pop(c, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class FlowService:
    def __init__(self, store: Store, opts: ServiceOptions | None = None,
                 clock: Callable[[], float] = time.time,
                 state_dir: Path | None = None) -> None:
        from controller.ike import IkeManager

        self.store = store
        self.opts = opts or ServiceOptions()
        self.clock = clock
        self.km = KeyManager(store)
        self.ledger = SaLedger(store, self.km, clock)
        self.sched = RekeyScheduler(grace=self.opts.grace, retry_base=self.opts.retry_base,
                                    retry_max=self.opts.retry_max)
        self.cfg = FlowConfig()
        self.plans: dict[str, Plan] = {}
        self.deleting: dict[str, float] = {}  # policy → when to (re)try removing it
        self._delete_attempts: dict[str, int] = {}
        self._busy: set[str] = set()  # policies with a delete in flight
        # policies with an action in the runner's batch: their removal waits for it, so that
        # it finds in the store everything the action put on the NSFs
        self._running: set[str] = set()
        self.south = Southbound(self._on_notification, self._on_connected,
                                backoff_base=self.opts.reconnect_min,
                                backoff_max=self.opts.reconnect_max)
        self.stats = Stats()
        self.notify: Callable[[etree._Element], None] | None = None
        self._status: dict[str, str] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loaded = False
        self._leftover_checked: set[str] = set()
        self._runner_busy = False
        self._state_view = StateView()
        self.ike = IkeManager(self, state_dir)  # the IKE case (controller/ike.py)

    # ---- start / stop ---------------------------------------------------------------------

    def load(self) -> None:
        """Take the schedule back from the store (controller restart)."""
        now = self.clock()
        for name, _due, state in self.store.list_schedule():
            try:
                timer = PolicyTimer.from_dict(state)
            except (TypeError, ValueError):
                log.exception("policy %s: unreadable stored timer; re-creating", name)
                continue
            self.sched.resume(timer, now)
        for rec in self.store.list_policies():
            if rec.status == "deleting":
                self.deleting[rec.name] = now
        if self.sched.timers:
            log.info("resumed %d policy timers from the store", len(self.sched.timers))
        self._loaded = True

    def start(self) -> None:
        if not self._loaded:
            self.load()
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="flow-engine")
        self.ike.start()

    async def stop(self) -> None:
        await self.ike.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.south.stop()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    # ---- configuration ----------------------------------------------------------------------

    def apply_config(self, cfg: FlowConfig) -> None:
        """Make `cfg` the desired state (already checked by `model.check_config`)."""
        now = self.clock()
        old = {r.name: r for r in self.store.list_policies()}
        # IKE-case policies are the IKE manager's (no SAs, keys or rekeys here)
        new = {n: p for n, p in cfg.all_policies().items()
               if p.params.key_management != "ike"}
        added, changed, relifed = [], [], []
        with self.store.transaction():
            for nsf in cfg.nsfs.values():
                self.store.put_nsf(nsf.to_dict())
            for prof in cfg.profiles.values():
                self.store.put_profile(prof.to_dict())
            plans: dict[str, Plan] = {}
            for name, pol in new.items():
                fp = fingerprint(pol, cfg)
                rec = old.get(name)
                if rec is not None and rec.data.get("fingerprint") == fp and (
                        rec.status != "deleting"):
                    plans[name] = translate.make_plan(pol, cfg, rec.policy_id)
                    continue
                sfp = fingerprint(pol, cfg, lifetimes=False)
                pid = self.store.put_policy(
                    name, {**pol.to_dict(), "fingerprint": fp, "structure": sfp}, pol.group)
                plans[name] = translate.make_plan(pol, cfg, pid)
                if rec is None:
                    added.append(name)
                elif (rec.status != "deleting" and rec.data.get("structure") == sfp
                      and name in self.sched.timers):
                    relifed.append(name)
                else:
                    changed.append(name)
            removed = [n for n in old if n not in new and old[n].status != "deleting"]
            for name in removed:
                self.store.set_policy_status(name, "deleting")
                self.store.delete_schedule(name)
            self.cfg, self.plans = cfg, plans
            for name in added:
                self._add_timer(name, now)
            for name in changed:
                self.deleting.pop(name, None)
                self._recreate(name, now, "configuration changed")
            for name in relifed:
                self._new_lifetimes(name, now)
            for name in removed:
                self.sched.remove(name)
                self.deleting[name] = now
            for name in (*added, *changed, *relifed):
                self._persist(name)
        if added or changed or removed or relifed:
            log.info("configuration: %d policies added, %d changed, %d with new lifetimes, "
                     "%d removed", len(added), len(changed), len(relifed), len(removed))
        self.ike.apply_config(cfg)
        self._sync_sessions()
        self.wake()

    def _add_timer(self, name: str, now: float) -> None:
        plan = self.plans[name]
        pol = plan.policy
        t = self.sched.add(name, plan.soft.time, plan.hard.time, now,
                           on_demand=pol.params.on_demand)
        gens = [r.generation for r in self.store.get_sas(name)]
        if gens and t.target is not None:  # leftovers of an earlier life of this name
            t.target = max(gens) + 1
        self.store.set_policy_status(name, "pending")

    def _new_lifetimes(self, name: str, now: float) -> None:
        """Only lifetimes changed: the next generation gets them; rekey now
        (make-before-break) so that they apply at once without a traffic gap."""
        plan = self.plans[name]
        self.sched.set_lifetimes(name, plan.soft.time, plan.hard.time)
        t = self.sched.timers[name]
        if t.generation is not None and t.phase not in (Phase.INSTALL, Phase.INSTALL_SPD,
                                                         Phase.WAITING_ACQUIRE):
            self.sched.request_rekey(name, now, "lifetimes changed")

    def _recreate(self, name: str, now: float, reason: str) -> None:
        plan = self.plans[name]
        t = self.sched.timers.get(name)
        if t is None:
            self._add_timer(name, now)
            return
        self.sched.set_lifetimes(name, plan.soft.time, plan.hard.time)
        if plan.policy.params.on_demand and t.generation is None:
            t.phase, t.due, t.in_flight, t.target = Phase.INSTALL_SPD, now, None, None
            return
        gens = [r.generation for r in self.store.get_sas(name)]
        self.sched._recreate(t, now, reason)
        if gens:
            t.target = max(max(gens) + 1, t.target or 0)

    def _persist(self, name: str) -> None:
        t = self.sched.timers.get(name)
        if t is None:
            return
        self.store.put_schedule(name, t.due, t.to_dict())
        status = self.sched.status(name)
        rec_err = t.last_error if t.attempts else None
        with contextlib.suppress(KeyError):
            self.store.set_policy_status(name, status, rec_err)
        self._status_changed(name, status, rec_err)

    def _status_changed(self, name: str, status: str, error: str | None) -> None:
        if self._status.get(name) == status:
            return
        self._status[name] = status
        if self.notify is None:
            return
        q = f"{{{FP_NS}}}"
        n = etree.Element(q + "policy-status-change", nsmap={None: FP_NS})
        etree.SubElement(n, q + "policy").text = name
        etree.SubElement(n, q + "status").text = status
        if error:
            etree.SubElement(n, q + "error-message").text = error
        self.notify(n)

    def _wanted_nsfs(self) -> dict[str, Nsf]:
        """Configured NSFs, plus removed ones that still hold entries of deleting policies."""
        out = dict(self.cfg.nsfs)
        for name in self.deleting:
            for nsf in self._policy_nsfs(name):
                if nsf not in out:
                    d = self.store.get_nsf(nsf)
                    if d is not None:
                        out[nsf] = Nsf.from_dict(d)
        return out

    def _policy_nsfs(self, policy: str) -> set[str]:
        spd = self.store.get_spd(policy)
        sas = self.store.get_sas(policy)
        return set(spd) | {s.sender for s in sas} | {s.receiver for s in sas}

    def _sync_sessions(self) -> None:
        wanted = self._wanted_nsfs()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.south.sync(wanted)
        for name in [d["name"] for d in self.store.list_nsfs()]:
            if name not in wanted:
                self.store.delete_nsf(name)

    # ---- confirmed commits in flight ------------------------------------------------------

    def _journal(self, nsfs: list[str], persist: str | None) -> None:
        with self.store.transaction():
            for n in nsfs:
                if persist is None:
                    self.store.delete_meta(f"persist:{n}")
                else:
                    self.store.put_meta(f"persist:{n}", persist)

    async def _clear_leftovers(self, sessions: dict[str, NsfSession]) -> None:
        """Cancel confirmed commits an earlier transaction (or life) left on these NSFs;
        callers hold their locks. Checked once per NSF per life, then after failures."""
        for name, sess in sessions.items():
            if name in self._leftover_checked:
                continue
            pid = self.store.get_meta(f"persist:{name}")
            if pid is None or await cancel_leftover(sess, pid, self.opts.rpc_timeout):
                self.store.delete_meta(f"persist:{name}")
                self._leftover_checked.add(name)

    async def _transact(self, sessions: dict[str, NsfSession],
                        edits: dict[str, etree._Element],
                        commit_order: list[str] | None = None) -> None:
        await self._clear_leftovers(sessions)
        self.stats.transactions += 1
        try:
            await transact(sessions, edits, timeout=self.opts.rpc_timeout,
                           confirm_timeout=self.opts.confirm_timeout, journal=self._journal,
                           commit_order=commit_order)
        except BaseException:
            self.stats.transactions_failed += 1
            self._leftover_checked.difference_update(sessions)
            raise

    async def _await_first_sessions(self, nsfs: set[str], timeout: float = 5.0) -> None:
        """Right after start every session is still connecting: give them a moment
        instead of failing (and backing off) every resumed action."""
        waits = [s.wait_up(timeout) for n in nsfs
                 if (s := self.south.sessions.get(n)) is not None
                 and s.connections == 0 and s.state == "connecting"]
        if waits:
            await asyncio.gather(*waits)

    # ---- the loop -------------------------------------------------------------------------

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
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

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

    def _sessions_for(self, nsfs: set[str]) -> dict[str, NsfSession] | str:
        out = {}
        for n in sorted(nsfs):
            why = self._unreachable(n)
            if why is not None:
                return why
            out[n] = self.south.sessions[n]
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

    def _unreachable(self, nsf: str) -> str | None:
        """Why `nsf` cannot take part in a transaction now (None: it can)."""
        s = self.south.sessions.get(nsf)
        if s is None:
            return f"NSF {nsf} is not in the inventory"
        if s.state != CONNECTED:
            return f"NSF {nsf} is unreachable ({s.state}: {s.last_error or 'no session'})"
        return None

    def _current(self, a: Action) -> bool:
        t = self.sched.timers.get(a.policy)
        return t is not None and t.in_flight == a.seq

    def _completed(self, a: Action, plan: Plan, now: float) -> None:
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

    # ---- deletion -------------------------------------------------------------------------

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

    # ---- events from NSFs ---------------------------------------------------------------------

    def _on_notification(self, nsf: str, n: etree._Element) -> None:
        self.stats.notifications += 1
        if self.ike.on_notification(nsf, n):
            return
        now = self.clock()
        if n.tag == IK + "sadb-expire":
            sa = (n.findtext(IK + "ipsec-sa-name") or "").strip()
            soft = (n.findtext(IK + "soft-lifetime-expire") or "").strip() == "true"
            ref = translate.parse_sad_name(sa)
            if ref is None:
                return
            log.info("NSF %s: %s lifetime of SA %s expired", nsf, "soft" if soft else "hard",
                     sa)
            hit = (self.sched.on_soft_expire(ref.policy, ref.generation, now) if soft
                   else self.sched.on_hard_expire(ref.policy, ref.generation, now))
        elif n.tag == IK + "sadb-acquire":
            spd = (n.findtext(IK + "ipsec-policy-name") or "").strip()
            parsed = translate.parse_spd_name(spd)
            if parsed is None:
                return
            log.info("NSF %s: acquire for SPD entry %s", nsf, spd)
            hit = self.sched.on_acquire(parsed[0], now)
            ref_policy = parsed[0]
            if hit:
                self._persist(ref_policy)
            self.wake()
            return
        else:
            return
        if hit:
            self._persist(ref.policy)
            self.wake()

    async def _on_connected(self, sess: NsfSession) -> None:
        """After every (re)connection: put back what the store says the NSF should hold,
        and retry at once the actions that failed while it was away."""
        self.ike.on_connected(sess.name)
        await self.resync(sess.name)
        now = self.clock()
        for name, t in self.sched.timers.items():
            plan = self.plans.get(name)
            if (plan is not None and t.attempts and t.in_flight is None
                    and sess.name in (plan.a.name, plan.b.name)):
                t.due = now
        for name in self.deleting:
            if name not in self._busy and sess.name in self._policy_nsfs(name):
                self.deleting[name] = now
        self.wake()

    def expected_edit(self, nsf: str) -> tuple[etree._Element, set[str]]:
        """The `<config>` that makes `nsf` hold exactly what the store says, and the names
        of those entries."""
        spd: list[etree._Element] = []
        sad: list[etree._Element] = []
        for name, plan in self.plans.items():
            sides = {s.nsf.name: s for s in plan.sides()}
            side = sides.get(nsf)
            t = self.sched.timers.get(name)
            if side is None or t is None or name in self.deleting:
                continue
            if t.generation is None and t.phase is not Phase.WAITING_ACQUIRE:
                continue  # never installed: its install action will do it
            for f in plan.flows:
                for d in ("outbound", "inbound"):
                    e = translate.spd_entry(plan, side, f, d)  # type: ignore[arg-type]
                    e.set(translate.OPERATION, "replace")
                    spd.append(e)
            for rec in self.store.get_sas(name):
                sender = plan.side(rec.spec().sender).nsf.name
                if nsf == sender and rec.generation != t.generation:
                    continue  # only the live generation is sent on
                e = translate.sad_entry(plan, side, rec.spec())
                e.set(translate.OPERATION, "replace")
                sad.append(e)
        names = {e.findtext(IK + "name") or "" for e in (*spd, *sad)}
        return translate.config_element(spd, sad), names

    async def resync(self, nsf: str, force: bool = False) -> bool:
        """Compare the NSF's running configuration with the store and fix it (one
        transaction). Returns True if something was pushed."""
        sess = self.south.sessions.get(nsf)
        if sess is None or sess.state != CONNECTED:
            raise NcError(f"NSF {nsf} is not connected")
        if force:
            self.ike.resync(nsf)
        async with sess.lock:
            self._leftover_checked.discard(nsf)  # a new session: look again
            await self._clear_leftovers({nsf: sess})
            client = sess.client
            if client is None:
                raise NcError(f"NSF {nsf} is not connected")
            filt = (f'<get-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><source>'
                    f'<running/></source><filter type="subtree"><ipsec-ikeless '
                    f'xmlns="{IKELESS_NS}"/></filter></get-config>')
            reply = await client.rpc(filt, self.opts.rpc_timeout)
            present = {
                (e.findtext(IK + "name") or "").strip()
                for tag in ("spd-entry", "sad-entry") for e in reply.iter(IK + tag)}
            present = {p for p in present if p.startswith(translate.NAME_PREFIX + "/")}
            config, names = self.expected_edit(nsf)
            extra = present - names
            if not force and not extra and names <= present:
                return False
            root = config.find(IK + "ipsec-ikeless")
            assert root is not None
            if extra:
                rm = translate.delete_by_names_edit(
                    [n for n in extra if translate.parse_spd_name(n)],
                    [n for n in extra if translate.parse_sad_name(n)])
                rroot = rm.find(IK + "ipsec-ikeless")
                assert rroot is not None
                for tag in ("spd", "sad"):
                    src = rroot.find(IK + tag)
                    if src is None:
                        continue
                    dst = root.find(IK + tag)
                    if dst is None:
                        dst = etree.SubElement(root, IK + tag)
                    for e in list(src):
                        dst.append(e)
            log.info("NSF %s: resync (%d entries missing, %d extra)", nsf,
                     len(names - present), len(extra))
            await self._transact({nsf: sess}, {nsf: config})
            self.stats.resyncs += 1
            return True

    # ---- northbound operations ------------------------------------------------------------------

    def request_rekey(self, policy: str) -> int:
        if policy not in self.sched.timers:
            raise KeyError(policy)
        gen = self.sched.request_rekey(policy, self.clock())
        self._persist(policy)
        self.wake()
        return gen

    def state(self) -> list[etree._Element]:
        st = self._state_view(self.store, self.sched)
        q = f"{{{FP_NS}}}"
        for p in self.ike.state_policies(q):
            st.append(p)
        for name, (status, err, peer) in sorted(self.ike.rw_state().items()):
            rw = etree.SubElement(st, q + "road-warrior")
            etree.SubElement(rw, q + "name").text = name
            gw = self.ike.cfg.road_warriors.get(name)
            if gw is not None:
                etree.SubElement(rw, q + "gateway").text = gw.gateway
            etree.SubElement(rw, q + "status").text = status
            if err:
                etree.SubElement(rw, q + "error-message").text = err
            if peer:
                etree.SubElement(rw, q + "peer").text = peer
        return [st, *self.south.state_elements()]
