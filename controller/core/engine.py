"""The plumbing every controller service shares: one asyncio loop per service woken by
commits, notifications and reconnections, the southbound session pool, and all-or-nothing
transactions over the NSFs' sessions with the journal of confirmed commits in flight (so a
restarted controller cancels what an earlier life left pending).

A service (`controller.ipsec.service.FlowService`, later the SFC managers) subclasses `Engine`
and supplies the scheduling, the translation and the event handling of its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from controller.core.fence import FENCE_NS, add_fence
from controller.core.inventory import NS as FP_NS
from controller.core.southbound import CONNECTED, NsfSession, Southbound
from controller.core.store import Store
from controller.core.transaction import cancel_leftover, transact

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float | None) -> None:
    """Wait until `event` is set, at most `timeout` seconds (None: no limit). Unlike
    `asyncio.wait_for` in Python 3.11, a cancellation that races with the event being set
    is never swallowed: a loop built on wait_for would then go on and its service's stop
    would hang (seen when a controller stopped right after its NSFs connected)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()


@dataclass
class ServiceOptions:
    """Tuning of a service's engine (the `[service]` table of the controller's TOML)."""

    grace: float = 2.0  # seconds an old inbound SA stays after the outbound switch
    confirm_timeout: int = 60  # NSF confirmed-commit timeout
    rpc_timeout: float = 15.0
    batch_max: int = 8192  # actions per combined transaction (one edit-config per NSF)
    reconnect_min: float = 0.5
    reconnect_max: float = 30.0
    retry_base: float = 1.0
    retry_max: float = 30.0
    status_interval: float = 5.0  # seconds between readings of the NSFs' SAD state (#13.2)


@dataclass
class EngineStats:
    transactions: int = 0
    transactions_failed: int = 0


class Engine:
    """Loop, session pool and transactions of one service."""

    def __init__(self, store: Store, opts: ServiceOptions | None,
                 clock: Callable[[], float],
                 on_notification: Callable[[str, etree._Element], None],
                 on_connected: Callable[[NsfSession], Any]) -> None:
        self.store = store
        self.opts = opts or ServiceOptions()
        self.clock = clock
        self.south = Southbound(on_notification, on_connected,
                                backoff_base=self.opts.reconnect_min,
                                backoff_max=self.opts.reconnect_max)
        self.stats: EngineStats = EngineStats()
        self.notify: Callable[[etree._Element], None] | None = None
        self._status: dict[str, str] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._leftover_checked: set[str] = set()
        # netconf_core.metrics.Metrics when /metrics is served (transaction latencies)
        self.metrics: Any = None
        # HA (#21, controller/ha.py): the leadership epoch every NSF edit carries; raises
        # when this instance is no longer sure it leads. None: a single controller.
        self.ha_epoch: Callable[[], int] | None = None
        self._unfenced_warned: set[str] = set()

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

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
        if self.ha_epoch is not None:
            epoch = self.ha_epoch()
            edits = {n: add_fence(e, epoch) if self._fences(n, sessions.get(n)) else e
                     for n, e in edits.items()}
        await self._clear_leftovers(sessions)
        self.stats.transactions += 1
        started = time.monotonic()
        try:
            await transact(sessions, edits, timeout=self.opts.rpc_timeout,
                           confirm_timeout=self.opts.confirm_timeout, journal=self._journal,
                           commit_order=commit_order)
        except BaseException:
            self.stats.transactions_failed += 1
            self._leftover_checked.difference_update(sessions)
            if self.metrics is not None:
                self.metrics.observe_transaction(time.monotonic() - started, ok=False)
            raise
        if self.metrics is not None:
            self.metrics.observe_transaction(time.monotonic() - started, ok=True)

    def _fences(self, nsf: str, sess: NsfSession | None) -> bool:
        """Whether `nsf` serves i2nsf-controller-fence (HA, #21): only then may edits carry
        the epoch; an NSF without it is provisioned unfenced, with a warning once."""
        client = sess.client if sess is not None else None
        caps = getattr(client, "server_capabilities", None) or []
        if any(c.split("?", 1)[0] == FENCE_NS for c in caps):
            return True
        if nsf not in self._unfenced_warned:
            self._unfenced_warned.add(nsf)
            log.warning("NSF %s does not serve i2nsf-controller-fence: its edits carry no "
                        "controller epoch, so a paused old active controller is stopped "
                        "only by its own lease check and the store's fence", nsf)
        return False

    async def _await_first_sessions(self, nsfs: set[str], timeout: float = 5.0) -> None:
        """Right after start every session is still connecting: give them a moment
        instead of failing (and backing off) every resumed action."""
        waits = [s.wait_up(timeout) for n in nsfs
                 if (s := self.south.sessions.get(n)) is not None
                 and s.connections == 0 and s.state == "connecting"]
        if waits:
            await asyncio.gather(*waits)

    def _unreachable(self, nsf: str) -> str | None:
        """Why `nsf` cannot take part in a transaction now (None: it can)."""
        s = self.south.sessions.get(nsf)
        if s is None:
            return f"NSF {nsf} is not in the inventory"
        if s.state != CONNECTED:
            return f"NSF {nsf} is unreachable ({s.state}: {s.last_error or 'no session'})"
        return None

    def _sessions_for(self, nsfs: set[str]) -> dict[str, NsfSession] | str:
        out = {}
        for n in sorted(nsfs):
            why = self._unreachable(n)
            if why is not None:
                return why
            out[n] = self.south.sessions[n]
        return out
