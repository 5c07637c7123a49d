"""Active/standby controller instances on one PostgreSQL store (#21, decision 11).

Every instance serves the northbound at once. Until it holds the leadership lease
(`core.lease`) it is a standby: it reads operational state (policy status, SAs) from the
shared store, and refuses every operation that would change something with an rpc-error
naming the active instance. When it is elected (a standby after the active's lease expired,
or the first instance) it
  1. fences the store with the new epoch (an old leader's writes fail from now on),
  2. loads the northbound configuration the previous active published in the store,
  3. starts the flow and SFC services, which reconcile the NSFs as after a restart, and
     carry the epoch in every NSF transaction (the agents refuse a lower one),
  4. accepts edits, publishing each committed configuration in the store.
Losing the lease (not renewed in time: a partition, a pause) stops this process with exit
status 75; its supervisor (the unit's `Restart=on-failure`) starts it again as a standby.
An instance never demotes in place, so no half-stopped service can act on a stale view.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from controller.core.lease import Lease, LeaseInfo, LeaseKeeper
from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

SHARED_CONFIG_KEY = "northbound:running"
# What a standby serves: reads, locks, subscriptions; everything else needs the active.
READ_ONLY_OPS = frozenset({
    "get", "get-config", "get-data", "get-schema", "lock", "unlock", "close-session",
    "kill-session", "validate", "discard-changes", "create-subscription",
    "establish-subscription", "delete-subscription", "kill-subscription"})


@dataclass
class HaConfig:
    """The `[ha]` table: leadership among instances sharing a PostgreSQL store."""

    lease_ttl: float = 5.0
    advertise: str = ""  # how clients reach this instance (named by standbys' errors)
    lease_name: str = "controller"


class SharedConfigPublisher:
    """An applier of the controller's datastores: every committed running configuration is
    written to the shared store (fenced: a stale leader's commit fails and rolls back)."""

    name = "ha-shared-config"

    def __init__(self, store: Any) -> None:
        self.store = store
        self.active = False

    def bind(self, notify: Notify) -> None:
        return None

    def reconcile(self, running: etree._Element) -> None:
        if self.active:
            self.store.put_meta(SHARED_CONFIG_KEY, etree.tostring(running).decode())

    def validate(self, change: ConfigChange) -> None:
        return None

    def prepare(self, change: ConfigChange) -> None:
        return None

    def apply(self, change: ConfigChange) -> None:
        self.store.put_meta(SHARED_CONFIG_KEY, etree.tostring(change.new).decode())

    def abort(self, change: ConfigChange) -> None:
        if self.active:
            self.store.put_meta(SHARED_CONFIG_KEY, etree.tostring(change.old).decode())

    def state(self, running: etree._Element) -> list[etree._Element]:
        return []

    def close(self) -> None:
        return None


class HaControl:
    """Leadership of one controller instance: standby wiring, election, stepping down."""

    def __init__(self, cfg: HaConfig, dsn: str, store: Any,
                 activate: Callable[[int], Any],
                 refresh: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.activate = activate
        self.refresh = refresh  # rebuild the standby's datastores from the shared config
        self._installed: str | None = None
        self.lease = Lease(dsn, ttl=cfg.lease_ttl, name=cfg.lease_name,
                           address=cfg.advertise)
        self.keeper = LeaseKeeper(self.lease, self._elected, self._lost,
                                  on_standby=self._standby_tick)
        self.publisher = SharedConfigPublisher(store)
        self.epoch: int | None = None
        self.active = False  # elected and services running: edits accepted
        self._activation: asyncio.Task[None] | None = None
        self._stopping = False
        self.lost_lease = False  # the process then exits with status 75 (EX_TEMPFAIL)
        store.fence(cfg.lease_name, -1)  # a standby writes nothing at all

    def current_epoch(self) -> int:
        """The epoch to stamp on an NSF transaction; raises when this instance cannot be
        sure it still leads (checked before every transaction, e.g. after a pause)."""
        if self.epoch is None or not self.lease.held:
            raise RuntimeError("this controller instance no longer holds the leadership "
                               "lease: not touching any NSF")
        return self.epoch

    # ---- northbound on a standby ---------------------------------------------------------

    def refusal(self) -> RpcError:
        info = self.keeper.info
        try:  # the database's view, fresher than the last look of the lease loop
            row = self.store.lease_row(self.cfg.lease_name)
            info = None if row is None else LeaseInfo(self.cfg.lease_name, *row)
        except Exception as exc:
            log.debug("lease not read for a refusal: %s", exc)
        if self.epoch is not None and not self.active:
            who = "this instance was just elected and is still taking over; retry shortly"
        elif info is None:
            who = "no active controller is known yet (election in progress); retry shortly"
        else:
            where = info.address or info.holder
            who = (f"the active controller is {where} (epoch {info.epoch}"
                   + ("; its lease has expired, a take-over is under way)" if info.expired
                      else ")") + "; send changes there")
        return RpcError("application", "operation-not-supported",
                        f"this controller instance is a standby: {who}",
                        app_tag="standby-controller",
                        info={"active-controller": (info.address or info.holder)
                              if info else ""})

    def guard_handlers(self, handlers: dict[tuple[str, str], Any]) -> None:
        """Wrap every operation that may change something: refused unless active."""
        for key, base in list(handlers.items()):
            if key[1] in READ_ONLY_OPS:
                continue
            handlers[key] = self._guarded(base)

    def _guarded(self, base: Any) -> Any:
        def handler(srv: Any, sess: Any, op: etree._Element) -> Any:
            if not self.active:
                raise self.refusal()
            return base(srv, sess, op)
        return handler

    # ---- shared configuration ------------------------------------------------------------

    def shared_config(self) -> str | None:
        """The running configuration the active published (None: nothing yet)."""
        return self.store.get_meta(SHARED_CONFIG_KEY)  # type: ignore[no-any-return]

    def write_shared_config(self, nc_dir: Path, text: str) -> None:
        """Make `text` this instance's startup and running, for datastores built next (the
        current ones, if any, must be closed first: running's journal is replaced)."""
        from netconf_core.datastore import write_atomic  # the datastores' own writer

        for p in nc_dir.glob("running.xml*"):
            p.unlink()
        write_atomic(nc_dir / "startup.xml", text.encode(), wipe_old=True)
        self._installed = text

    def install_shared_config(self, nc_dir: Path) -> bool:
        """Before the datastores exist: take the published configuration, if any."""
        text = self.shared_config()
        if text is None:
            return False
        self.write_shared_config(nc_dir, text)
        return True

    async def _standby_tick(self) -> None:
        """A standby follows the active's configuration, so that get-config on any
        instance shows the current one (checked every lease_ttl / 3)."""
        if self.refresh is None or self.epoch is not None:
            return
        try:
            text = self.shared_config()
        except Exception as exc:  # the database is down: the lease loop reports it
            log.debug("standby: shared configuration not read: %s", exc)
            return
        if text is not None and text != self._installed:
            self.refresh()

    # ---- leadership ----------------------------------------------------------------------

    def start(self) -> None:
        self.keeper.start()

    async def stop(self) -> None:
        self._stopping = True
        if self._activation is not None and not self._activation.done():
            self._activation.cancel()
            await asyncio.gather(self._activation, return_exceptions=True)
        self.active = False
        await self.keeper.stop(release=self.epoch is not None)

    async def _elected(self, epoch: int) -> None:
        self.epoch = epoch
        self.store.fence(self.cfg.lease_name, epoch)
        log.warning("elected active controller at epoch %d (%s)", epoch,
                    self.cfg.advertise or self.lease.holder)
        self._activation = asyncio.get_running_loop().create_task(self._activate(epoch))

    async def _activate(self, epoch: int) -> None:
        try:
            await self.activate(epoch)
        except Exception:
            log.exception("taking over as the active controller failed; exiting")
            self.lost_lease = True
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.publisher.active = True
        self.active = True
        log.warning("active controller at epoch %d: northbound edits accepted", epoch)

    async def _lost(self) -> None:
        if self.epoch is None:
            return
        if self._stopping:  # a clean stop: the lease is released, nothing to report
            self.active = False
            return
        self.active = False
        self.lost_lease = True
        self.store.fence(self.cfg.lease_name, -1)
        log.critical("lost the leadership lease (epoch %d): stopping this instance; it "
                     "comes back as a standby when restarted", self.epoch)
        self.epoch = None
        os.kill(os.getpid(), signal.SIGTERM)
