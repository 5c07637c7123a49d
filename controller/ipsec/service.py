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

The jobs are split by module: `config_diff` (configuration → desired state), `scheduling`
(the loop, outcomes, removals), `batching` (actions → transactions), `events` (NSF events,
resync); `controller.core.engine` has the loop, session and transaction plumbing every
service shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from controller.core.engine import Engine, EngineStats, ServiceOptions
from controller.core.inventory import NS as FP_NS
from controller.core.southbound import CONNECTED
from controller.core.store import Store
from controller.ipsec import translate
from controller.ipsec.batching import Batching
from controller.ipsec.config_diff import ConfigDiff
from controller.ipsec.events import Events
from controller.ipsec.evidence import Evidence, read_all
from controller.ipsec.ike_manager import IkeManager
from controller.ipsec.keys import KeyManager
from controller.ipsec.ledger import SaLedger, StateView
from controller.ipsec.model import FlowConfig
from controller.ipsec.rekey import PolicyTimer, RekeyScheduler
from controller.ipsec.scheduling import Scheduling
from controller.ipsec.translate import Plan

log = logging.getLogger(__name__)

__all__ = ["FlowService", "ServiceOptions", "Stats"]


@dataclass
class Stats(EngineStats):
    actions_done: int = 0
    rekeys_done: int = 0  # completed SWITCH_OUTBOUND steps
    installs_done: int = 0
    deletes_done: int = 0
    resyncs: int = 0
    notifications: int = 0
    restarts_handled: int = 0  # unclean NSF restarts that were acted on
    by_kind: dict[str, int] = field(default_factory=dict)


class FlowService(ConfigDiff, Scheduling, Batching, Events, Engine):
    """IPsec flow protection (IKE-less and, through `IkeManager`, the IKE case)."""

    def __init__(self, store: Store, opts: ServiceOptions | None = None,
                 clock: Callable[[], float] = time.time,
                 state_dir: Path | None = None) -> None:
        super().__init__(store, opts, clock, self._on_notification, self._on_connected)
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
        self.stats: Stats = Stats()
        self._loaded = False
        self._runner_busy = False
        self._state_view = StateView()
        self.evidence = Evidence(self.opts.status_interval)  # data-plane status (#13.2)
        self.settled: dict[str, float] = {}  # policy → when an action of it last completed
        self.ike = IkeManager(self, state_dir)  # the IKE case (ike_manager.py)

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
        self._spawn(self._evidence_loop())
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

    # ---- status from evidence (evidence.py) ---------------------------------------------------

    def policy_status(self, name: str) -> tuple[str, str | None] | None:
        """The status shown for an IKE-less policy (None: not one with a timer): the
        scheduler's, and for `active` the data-plane evidence's verdict."""
        t = self.sched.timers.get(name)
        plan = self.plans.get(name)
        if t is None or plan is None:
            return None
        status = self.sched.status(name)
        if status != "active":
            return status, t.last_error if t.attempts else None
        if t.generation is None:  # on demand: SPD entries only until the first packet
            return "waiting", None
        live = self.store.get_sas(name, generation=t.generation)
        return self.evidence.verdict((plan.a.name, plan.b.name), self.south.sessions, live,
                                     self.clock(), self.settled.get(name, 0.0))

    def _judged(self, name: str) -> bool:
        """Whether the evidence has a say on this policy now (the scheduler calls it
        active: installed and not being replaced)."""
        t = self.sched.timers.get(name)
        return t is not None and t.generation is not None and (
            self.sched.status(name) == "active")

    async def _evidence_loop(self) -> None:
        """Read the endpoint NSFs' SAD state every status_interval; report status changes."""
        while True:
            try:
                await self.ike.read_state()
            except Exception:  # never fatal: the next round reads again
                log.exception("cannot read the IKE case's Child SAs")
            nsfs = {n for name, p in self.plans.items() if self._judged(name)
                    for n in (p.a.name, p.b.name)}
            if nsfs:
                t0 = self.clock()
                got = await read_all(self.south.sessions, nsfs, self.opts.rpc_timeout,
                                     self.clock, translate.NAME_PREFIX + "/")
                for nsf in nsfs:
                    if nsf in got:
                        self.evidence.record(nsf, got[nsf])
                    elif (s := self.south.sessions.get(nsf)) is not None and (
                            s.state == CONNECTED):
                        self.evidence.failed(nsf, t0)
                for name in list(self.plans):
                    st = self.policy_status(name)
                    if st is not None:
                        self._status_changed(name, *st)
            await asyncio.sleep(self.opts.status_interval)

    def request_rekey(self, policy: str) -> int:
        if policy not in self.sched.timers:
            raise KeyError(policy)
        gen = self.sched.request_rekey(policy, self.clock())
        self._persist(policy)
        self.wake()
        return gen

    def _evidence_key(self) -> tuple[object, ...]:
        """What the derived statuses depend on besides store and timers (for the cache)."""
        return (self.evidence.version, int(self.clock() / self.opts.status_interval),
                tuple((n, s.state) for n, s in sorted(self.south.sessions.items())))

    def state(self) -> list[etree._Element]:
        st = self._state_view(self.store, self.sched, self.policy_status, self.evidence,
                              self._evidence_key())
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
