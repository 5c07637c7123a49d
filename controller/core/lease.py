"""Leadership of several controller instances sharing one PostgreSQL store (decision 11).

One row of the `lease` table (made by `store_pg`'s migrations) names the active instance, the
time the lease expires (the database's clock, so the instances' clocks need not agree) and an
epoch that grows by one on every change of holder: the fencing token. The active renews the
lease every ttl/3; a standby takes it over only once it has expired, and the take-over bumps
the epoch. The store (`PgStore.fence`) and the NSFs (the agent's fence epoch) refuse writes
that carry an older epoch, so a paused old leader that wakes up cannot do harm.

An instance trusts its own leadership only until `ttl` after it *sent* its last successful
renewal (its monotonic clock): by then a standby may be taking over. `LeaseKeeper` calls
`on_lost` at that moment even when the renewal hangs (a partition), not when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

log = logging.getLogger(__name__)

DEFAULT_LEASE = "controller"


@dataclass(frozen=True)
class LeaseInfo:
    """The lease row as read: who holds it, at which epoch, for how much longer."""

    name: str
    holder: str
    epoch: int
    address: str
    remaining: float  # seconds until it expires (negative: expired)

    @property
    def expired(self) -> bool:
        return self.remaining <= 0


def new_holder_id() -> str:
    """Unique per process life: a restarted instance waits for its old life's lease."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class Lease:
    """One named lease; every call is one short statement on its own connection (never the
    store's, so that a long store transaction cannot delay a renewal)."""

    def __init__(self, dsn: str, ttl: float = 5.0, name: str = DEFAULT_LEASE,
                 holder: str | None = None, address: str = "") -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        self.dsn = dsn
        self.ttl = float(ttl)
        self.name = name
        self.holder = holder or new_holder_id()
        self.address = address
        self.epoch: int | None = None
        self.valid_until = 0.0  # monotonic
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @property
    def held(self) -> bool:
        return self.epoch is not None and time.monotonic() < self.valid_until

    async def _c(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=max(1, int(self.ttl)))
        return self._conn

    async def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            conn = await self._c()
            cur = await conn.execute(sql, args)  # type: ignore[arg-type]
            return await cur.fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            if self._conn is not None:
                await self._conn.close()
            self._conn = None
            raise

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free or expired; the new epoch, or None (held by another
        instance, or already ours: use `renew`)."""
        sent = time.monotonic()
        row = await self._one(
            "INSERT INTO lease (name, holder, epoch, expires, address) VALUES "
            "(%s, %s, 1, clock_timestamp() + make_interval(secs => %s), %s) "
            "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, "
            "epoch = lease.epoch + 1, expires = excluded.expires, address = excluded.address "
            "WHERE lease.expires < clock_timestamp() RETURNING epoch",
            (self.name, self.holder, self.ttl, self.address))
        if row is None:
            return None
        self.epoch = int(row[0])
        self.valid_until = sent + self.ttl
        log.info("lease %s: acquired by %s at epoch %d", self.name, self.holder, self.epoch)
        return self.epoch

    async def renew(self) -> bool:
        """Extend our lease; False when it is not ours any more (a higher epoch exists)."""
        if self.epoch is None:
            return False
        sent = time.monotonic()
        row = await self._one(
            "UPDATE lease SET expires = clock_timestamp() + make_interval(secs => %s) "
            "WHERE name = %s AND holder = %s AND epoch = %s RETURNING epoch",
            (self.ttl, self.name, self.holder, self.epoch))
        if row is None:
            log.warning("lease %s: epoch %d of %s was taken over", self.name, self.epoch,
                        self.holder)
            self.epoch = None
            self.valid_until = 0.0
            return False
        self.valid_until = sent + self.ttl
        return True

    async def release(self) -> None:
        """Give the lease up now (clean stop): a standby need not wait for it to expire."""
        if self.epoch is None:
            return
        epoch, self.epoch, self.valid_until = self.epoch, None, 0.0
        try:
            await self._one("UPDATE lease SET expires = clock_timestamp() - interval '1 s' "
                            "WHERE name = %s AND holder = %s AND epoch = %s RETURNING epoch",
                            (self.name, self.holder, epoch))
        except psycopg.Error as exc:
            log.warning("lease %s: release failed (%s); it expires by itself", self.name, exc)

    async def current(self) -> LeaseInfo | None:
        row = await self._one(
            "SELECT holder, epoch, address, "
            "extract(epoch FROM expires - clock_timestamp())::float8 FROM lease WHERE name=%s",
            (self.name,))
        if row is None:
            return None
        return LeaseInfo(self.name, row[0], int(row[1]), row[2], float(row[3]))

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class LeaseKeeper:
    """Keeps trying to hold `lease`: `on_elected(epoch)` when it gets it, `on_lost()` the
    moment it can no longer be sure of it, `on_standby()` after each look at another
    instance's lease.

    The renewals run on a thread of their own (with its own event loop and connection):
    a controller loop busy for seconds with a big commit must not lose the lease. The
    callbacks run on the loop that called `start`, in order, without the thread waiting for
    them (they must be short: spawn longer work)."""

    def __init__(self, lease: Lease, on_elected: Callable[[int], Awaitable[None]],
                 on_lost: Callable[[], Awaitable[None]], interval: float | None = None,
                 on_standby: Callable[[], Awaitable[None]] | None = None) -> None:
        self.lease = lease
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.on_standby = on_standby
        self.interval = interval if interval is not None else lease.ttl / 3
        self.leading = False
        self.last_error: str | None = None
        self.info: LeaseInfo | None = None  # the lease as last read by a standby
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._main = asyncio.get_running_loop()
        self._loop = asyncio.new_event_loop()
        started = threading.Event()

        def main() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(self._run())
            started.set()
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass
            finally:
                self._loop.run_until_complete(self.lease.close())
                self._loop.close()

        self._thread = threading.Thread(target=main, name=f"lease-{self.lease.name}",
                                        daemon=True)
        self._thread.start()
        started.wait(5)

    def kill(self) -> None:
        """End the renewals at once, as if the process died (tests): no release."""
        if self._loop is not None and self._task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._task.cancel)

    async def stop(self, release: bool = True) -> None:
        self._stopping = True
        self.kill()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self.leading:
            self.leading = False
            await self.on_lost()
        if release:
            await self.lease.release()
        await self.lease.close()

    def _call(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a callback on the controller's loop (FIFO: callbacks keep their order)."""
        main = self._main
        if main is None or main.is_closed():
            return

        def spawn() -> None:
            main.create_task(fn(*args))  # type: ignore[arg-type]

        main.call_soon_threadsafe(spawn)

    async def _bounded(self, coro: Awaitable[Any], timeout: float) -> Any:
        """`coro` with a deadline (asyncio.wait: a cancellation is never swallowed)."""
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=max(0.0, timeout))
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise TimeoutError("lease database did not answer in time")
        return task.result()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database down, partition: retried
                if str(exc) != self.last_error:
                    log.warning("lease %s: %s", self.lease.name, exc)
                self.last_error = str(exc)
            if self.leading and not self.lease.held:
                self.leading = False
                log.warning("lease %s: not renewed in time; standing down", self.lease.name)
                self._call(self.on_lost)
            wait = self.interval
            if self.leading:
                wait = min(wait, max(0.0, self.lease.valid_until - time.monotonic()))
            await asyncio.sleep(wait)

    async def _step(self) -> None:
        lease = self.lease
        if self.leading:
            left = lease.valid_until - time.monotonic()
            if not await self._bounded(lease.renew(), left):
                self.leading = False
                self._call(self.on_lost)
            self.last_error = None
            return
        lease.epoch = None  # not leading: a stale epoch is never renewed
        epoch = await self._bounded(lease.try_acquire(), lease.ttl)
        self.last_error = None
        if epoch is None:
            self.info = await self._bounded(lease.current(), lease.ttl)
            if self.on_standby is not None:
                self._call(self.on_standby)
            return
        self.leading = True
        self.info = None
        self._call(self.on_elected, epoch)
