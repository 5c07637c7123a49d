"""Southbound: one NETCONF session per NSF, kept up forever.

Each `NsfSession` connects with the pinned host key, subscribes to the NSF's notification
stream (sadb-expire, sadb-acquire, ...), hands notifications to the controller and, after
every (re)connection, lets the controller resync the NSF's running configuration. Failures
reconnect with exponential backoff and jitter; a host key mismatch stops retrying until the
inventory entry changes (someone must look at it). `lock` serialises transactions on the NSF:
an NSF has one candidate datastore and at most one pending confirmed commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from lxml import etree

from controller.core.inventory import NS as FP_NS
from controller.core.inventory import Nsf
from controller.core.nc_client import NOTIF_NS, HostKeyMismatch, NcClient, NcError, NcRpcError
from netconf_core.errors import NC_NS
from netconf_core.i2nsf.namespaces import IKE_EVENTS_NS, IKELESS_NS, SADB_NS

log = logging.getLogger(__name__)

NotificationHandler = Callable[[str, etree._Element], None]
ConnectedHandler = Callable[["NsfSession"], Awaitable[None]]

DISCONNECTED, CONNECTING, CONNECTED, MISMATCH = (
    "disconnected", "connecting", "connected", "host-key-mismatch")

# The notifications the controller acts on (ipsec.events, ipsec.ike_manager).
# Subscribing to these only spares the controller parsing a netconf-config-change and a
# netconf-confirmed-commit for every commit it makes, and lets an agent skip building them.
_SFC_NSF_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"  # the SFC service (controller/sfc)
WANTED_NOTIFICATIONS = (
    *((IKELESS_NS, n) for n in ("sadb-acquire", "sadb-expire", "sadb-seq-overflow",
                                 "sadb-bad-spi")),
    *((IKE_EVENTS_NS, n) for n in ("ike-sa-up", "ike-sa-down", "ike-sa-rekeyed",
                                    "child-sa-up", "child-sa-down", "child-sa-rekeyed",
                                    "auth-failure", "child-sa-failed")),
    *((_SFC_NSF_NS, n) for n in ("sff-table-miss", "sff-loop-detected", "sff-ttl-expired",
                                 "inspection-result")),
    (SADB_NS, "nsf-restarted"),
)
SUBSCRIBE = (f'<create-subscription xmlns="{NOTIF_NS}"><filter xmlns="{NC_NS}" '
             f'type="subtree">'
             + "".join(f'<{n} xmlns="{ns}"/>' for ns, n in WANTED_NOTIFICATIONS)
             + "</filter></create-subscription>")


def _read_password(nsf: Nsf) -> str | None:
    if nsf.password is not None:
        return nsf.password
    if nsf.password_file:
        try:
            return Path(nsf.password_file).read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise NcError(f"cannot read password file {nsf.password_file}: {exc}") from exc
    return None


def _conn_params(n: Nsf) -> tuple[object, ...]:
    return (n.address, n.port, n.username, n.host_key, n.private_key_file, n.password_file,
            n.password)


class NsfSession:
    def __init__(self, nsf: Nsf, on_notification: NotificationHandler,
                 on_connected: ConnectedHandler, *, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, connect_timeout: float = 15.0) -> None:
        self.nsf = nsf
        self.on_notification = on_notification
        self.on_connected = on_connected
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.client: NcClient | None = None
        self.state = DISCONNECTED
        self.since = time.time()
        self.attempts = 0
        self.last_error: str | None = None
        self.lock = asyncio.Lock()  # one transaction at a time on this NSF
        self.up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.connections = 0

    @property
    def name(self) -> str:
        return self.nsf.name

    def _set(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.state, self.since = state, time.time()
        if error is not None:
            self.last_error = error
        if state == CONNECTED:
            self.last_error = None  # (an old error beside "connected" only misleads, #13.2)
            self.up.set()
        else:
            self.up.clear()

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                 name=f"nsf-{self.name}")

    async def stop(self) -> None:
        # The flag, not only the cancellation, ends the loop: asyncio.wait_for in 3.11 can
        # swallow a cancel that races with the reply future failing (closing the client
        # fails every pending rpc), and the session would reconnect instead of stopping.
        self._stopping = True
        task, self._task = self._task, None
        if self.client is not None:
            self.client.close("controller stopping")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set(DISCONNECTED)

    def update(self, nsf: Nsf) -> bool:
        """New inventory data; reconnect if anything about the connection changed."""
        changed = _conn_params(nsf) != _conn_params(self.nsf)
        self.nsf = nsf
        if changed:
            self.attempts = 0
            if self.client is not None:
                self.client.close("inventory changed")
            self._wake.set()
        return changed

    def kick(self) -> None:
        """Retry connecting now (e.g. after resync-nsf on a disconnected NSF)."""
        self._wake.set()

    async def _sleep(self, delay: float) -> None:
        self._wake.clear()
        waiter = asyncio.ensure_future(self._wake.wait())
        try:  # (not wait_for: in 3.11 it can swallow a cancel racing with the wake-up)
            await asyncio.wait({waiter}, timeout=delay)
        finally:
            waiter.cancel()

    async def _connect(self) -> NcClient:
        n = self.nsf
        client = NcClient(lambda m: self._notification(m), name=n.name)
        await client.connect(
            n.address, n.port, n.username, host_key=n.host_key, password=_read_password(n),
            client_keys=[n.private_key_file] if n.private_key_file else None,
            timeout=self.connect_timeout)
        try:
            await client.rpc(SUBSCRIBE, timeout=self.connect_timeout)
        except NcRpcError as exc:  # an NSF without subscription filters: take everything
            log.info("NSF %s: filtered subscription refused (%s); subscribing to all",
                     n.name, exc)
            await client.rpc(f'<create-subscription xmlns="{NOTIF_NS}"/>',
                             timeout=self.connect_timeout)
        return client

    async def _run(self) -> None:
        while not self._stopping:
            self._set(CONNECTING)
            try:
                client = await self._connect()
            except HostKeyMismatch as exc:
                self._set(MISMATCH, str(exc))
                log.error("NSF %s: %s; not retrying until its inventory entry changes",
                          self.name, exc)
                while self.state == MISMATCH:
                    await self._sleep(3600)
                    self._set(CONNECTING)
                continue
            except (NcError, OSError) as exc:
                self.attempts += 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** min(self.attempts - 1, 16))
                delay *= random.uniform(0.8, 1.0)
                self._set(DISCONNECTED, str(exc))
                log.info("NSF %s: connection failed (attempt %d), retrying in %.1f s: %s",
                         self.name, self.attempts, delay, exc)
                await self._sleep(delay)
                continue
            self.client = client
            self.attempts = 0
            self.connections += 1
            self._set(CONNECTED)
            log.info("NSF %s: session %s up (%s:%d)", self.name, client.session_id,
                     self.nsf.address, self.nsf.port)
            try:
                await self.on_connected(self)
            except Exception:
                if self._stopping:
                    return
                log.exception("NSF %s: resync after connecting failed", self.name)
            await client.closed.wait()
            self.client = None
            self._set(DISCONNECTED, client.close_reason)
            log.warning("NSF %s: session lost (%s)", self.name, client.close_reason)
            await self._sleep(min(self.backoff_base, 0.2))

    def _notification(self, msg: etree._Element) -> None:
        for child in msg:
            if isinstance(child.tag, str) and child.tag != f"{{{NOTIF_NS}}}eventTime":
                self.on_notification(self.name, child)

    async def wait_up(self, timeout: float) -> bool:
        if self.state == CONNECTED:
            return True
        try:
            await asyncio.wait_for(self.up.wait(), timeout)
        except TimeoutError:
            return False
        return True


class Southbound:
    """All NSF sessions, following the inventory."""

    def __init__(self, on_notification: NotificationHandler, on_connected: ConnectedHandler,
                 *, backoff_base: float = 0.5, backoff_max: float = 30.0) -> None:
        self.on_notification = on_notification
        self.on_connected = on_connected
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sessions: dict[str, NsfSession] = {}

    def sync(self, nsfs: dict[str, Nsf]) -> None:
        """Open sessions to new NSFs, update changed ones, close removed ones."""
        for name in list(self.sessions):
            if name not in nsfs:
                sess = self.sessions.pop(name)
                asyncio.get_running_loop().create_task(sess.stop())
                log.info("NSF %s removed from the inventory; session closed", name)
        for name, nsf in nsfs.items():
            sess = self.sessions.get(name)
            if sess is None:
                sess = NsfSession(nsf, self.on_notification, self.on_connected,
                                  backoff_base=self.backoff_base, backoff_max=self.backoff_max)
                self.sessions[name] = sess
                sess.start()
            else:
                sess.update(nsf)

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sessions.values()))
        self.sessions.clear()

    def state_elements(self) -> list[etree._Element]:
        """`<flow-protection><nsfs><nsf><session>` for the northbound `get`."""
        q = f"{{{FP_NS}}}"
        root = etree.Element(q + "flow-protection", nsmap={None: FP_NS})
        nsfs = etree.SubElement(root, q + "nsfs")
        for name in sorted(self.sessions):
            s = self.sessions[name]
            n = etree.SubElement(nsfs, q + "nsf")
            etree.SubElement(n, q + "name").text = name
            st = etree.SubElement(n, q + "session")
            etree.SubElement(st, q + "state").text = s.state
            etree.SubElement(st, q + "since").text = _time(s.since)
            etree.SubElement(st, q + "reconnect-attempts").text = str(s.attempts)
            if s.last_error:
                etree.SubElement(st, q + "last-error").text = s.last_error
        return [root] if len(nsfs) else []


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")
