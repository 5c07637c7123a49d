"""A small asyncio NETCONF client on asyncssh, for the controller's southbound sessions.

Why not ncclient here: ncclient runs one thread per session and polls; the controller keeps
one session per NSF (thousands of them) and wants replies and notifications on its own event
loop. This client speaks RFC 6242 (1.0 hello, then 1.1 chunked framing when both sides offer
it), RFC 6241 rpc/rpc-reply with message-id matching and RFC 5277 notifications. The CLI and
users' scripts keep using ncclient against the controller's northbound.

The server's host key is verified against a pinned key (OpenSSH public key line or
`SHA256:` fingerprint) *before* authentication, so credentials never reach an impostor.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
from lxml import etree

from netconf_core.errors import NC_NS
from netconf_core.framing import Framer, FramingError, TooBig

log = logging.getLogger(__name__)

NC = f"{{{NC_NS}}}"
NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True,
                          huge_tree=True, load_dtd=False)


class NcError(Exception):
    """Transport or protocol failure (connection lost, timeout, bad message)."""


class HostKeyMismatch(NcError):
    """The server presented another host key than the pinned one."""


@dataclass(frozen=True)
class RpcErrorInfo:
    error_type: str
    tag: str
    message: str
    path: str | None
    app_tag: str | None

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        return f"{self.tag}: {self.message}{where}"


class NcRpcError(NcError):
    """The server answered with `<rpc-error>`s."""

    def __init__(self, errors: list[RpcErrorInfo]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors) or "rpc-error")

    @property
    def tag(self) -> str:
        return self.errors[0].tag if self.errors else "operation-failed"


def rpc_errors(reply: etree._Element) -> list[RpcErrorInfo]:
    out = []
    for e in reply.iterfind(NC + "rpc-error"):
        if (e.findtext(NC + "error-severity") or "error").strip() != "error":
            continue
        out.append(RpcErrorInfo(
            (e.findtext(NC + "error-type") or "").strip(),
            (e.findtext(NC + "error-tag") or "").strip(),
            (e.findtext(NC + "error-message") or "").strip(),
            (e.findtext(NC + "error-path") or "").strip() or None,
            (e.findtext(NC + "error-app-tag") or "").strip() or None))
    return out


def key_matches(pinned: str, key: asyncssh.SSHKey) -> bool:
    """Does `key` match a pinned OpenSSH key line or SHA256 fingerprint?"""
    pinned = pinned.strip()
    if pinned.startswith("SHA256:"):
        return bool(key.get_fingerprint("sha256").rstrip("=") == pinned.rstrip("="))
    want = pinned.split()[:2]
    got = key.export_public_key("openssh").decode().split()[:2]
    return want == got


class _Client(asyncssh.SSHClient):  # type: ignore[misc]
    def __init__(self, pinned: str) -> None:
        self.pinned = pinned
        self.presented: str | None = None
        self.mismatch = False

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        if key_matches(self.pinned, key):
            return True
        self.presented = key.get_fingerprint("sha256")
        self.mismatch = True
        return False


class _Channel(asyncssh.SSHClientSession):  # type: ignore[misc]
    def __init__(self, owner: NcClient) -> None:
        self.owner = owner

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.owner._data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._lost(exc)


class NcClient:
    """One NETCONF session. `rpc` may be called concurrently: replies are matched by
    message-id (servers answer in order, but we do not rely on it)."""

    def __init__(self, on_notification: Callable[[etree._Element], None] | None = None,
                 name: str = "") -> None:
        self.name = name
        self.on_notification = on_notification
        self.conn: asyncssh.SSHClientConnection | None = None
        self.chan: asyncssh.SSHClientChannel | None = None
        self.framer = Framer(256 * 1024 * 1024)
        self.session_id: int | None = None
        self.server_capabilities: list[str] = []
        self._hello: asyncio.Future[etree._Element] | None = None
        self._pending: dict[str, asyncio.Future[etree._Element]] = {}
        self._ids = itertools.count(1)
        self.closed = asyncio.Event()
        self.close_reason: str | None = None

    async def connect(self, host: str, port: int, username: str, *, host_key: str,
                      password: str | None = None, client_keys: list[str] | None = None,
                      timeout: float = 15.0) -> None:
        loop = asyncio.get_running_loop()
        self._hello = loop.create_future()
        client = _Client(host_key)
        try:
            self.conn = await asyncio.wait_for(asyncssh.connect(
                host, port, username=username, password=password,
                client_keys=client_keys or None, known_hosts=([], [], []),
                client_factory=lambda: client, agent_path=None, encoding=None,
                preferred_auth="publickey,password" if client_keys else "password",
                keepalive_interval=15, keepalive_count_max=3,
            ), timeout)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            if client.mismatch:
                raise HostKeyMismatch(
                    f"host key mismatch: {host}:{port} presented {client.presented}, which is "
                    "not the pinned key") from None
            raise NcError(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}"
                          ) from exc
        try:
            self.chan, _ = await asyncio.wait_for(self.conn.create_session(
                lambda: _Channel(self), subsystem="netconf", encoding=None), timeout)
            hello = etree.Element(NC + "hello", nsmap={None: NC_NS})
            caps = etree.SubElement(hello, NC + "capabilities")
            for c in (BASE_10, BASE_11):
                etree.SubElement(caps, NC + "capability").text = c
            self.chan.write(etree.tostring(hello) + b"]]>]]>")
            server_hello = await asyncio.wait_for(self._hello, timeout)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            self.close()
            raise NcError(f"NETCONF hello with {host}:{port} failed: "
                          f"{exc or type(exc).__name__}") from exc
        self.server_capabilities = [
            (c.text or "").strip()
            for c in server_hello.iterfind(f"{NC}capabilities/{NC}capability")]
        sid = server_hello.findtext(NC + "session-id")
        self.session_id = int(sid) if sid and sid.strip().isdigit() else None
        if BASE_11 in self.server_capabilities:
            self.framer.use_chunked()

    # ---- incoming ---------------------------------------------------------------------------

    def _data(self, data: bytes) -> None:
        self.framer.feed(data)
        while True:
            try:
                msg = self.framer.next_message()
            except FramingError as exc:
                log.warning("%s: framing error from the server: %s", self.name, exc)
                self.close("framing error")
                return
            if msg is None:
                return
            if isinstance(msg, TooBig):
                log.warning("%s: dropped a %d-byte message", self.name, msg.size)
                continue
            try:
                root = etree.fromstring(msg.lstrip(), _PARSER)
            except etree.XMLSyntaxError as exc:
                log.warning("%s: malformed XML from the server: %s", self.name, exc)
                continue
            self._message(root)

    def _message(self, root: etree._Element) -> None:
        if root.tag == NC + "hello":
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(root)
            return
        if root.tag == NC + "rpc-reply":
            fut = self._pending.pop(root.get("message-id") or "", None)
            if fut is not None and not fut.done():
                fut.set_result(root)
            return
        if root.tag == f"{{{NOTIF_NS}}}notification":
            if self.on_notification is not None:
                try:
                    self.on_notification(root)
                except Exception:
                    log.exception("%s: notification handler failed", self.name)
            return
        log.debug("%s: ignoring unexpected message %s", self.name, root.tag)

    def _lost(self, exc: Exception | None) -> None:
        self._fail_all(NcError(f"session closed{': ' + str(exc) if exc else ''}"))
        if self.close_reason is None:
            self.close_reason = str(exc) if exc else "closed by the server"
        self.closed.set()

    def _fail_all(self, err: Exception) -> None:
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(err)

    # ---- outgoing ---------------------------------------------------------------------------

    async def rpc(self, op: etree._Element | str | bytes, timeout: float = 60.0
                  ) -> etree._Element:
        """Send one operation; return the `<rpc-reply>`; raise NcRpcError for rpc-errors."""
        if self.chan is None or self.closed.is_set():
            raise NcError("session is not open")
        mid = str(next(self._ids))
        body = op if isinstance(op, bytes) else (
            op.encode() if isinstance(op, str) else etree.tostring(op))
        msg = (f'<rpc xmlns="{NC_NS}" message-id="{mid}">'.encode() + body + b"</rpc>")
        fut: asyncio.Future[etree._Element] = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        self.chan.write(self.framer.frame(msg))
        try:  # (not wait_for: in 3.11 it can turn a cancel into the reply's NcError)
            await asyncio.wait({fut}, timeout=timeout)
        finally:
            if not fut.done():
                self._pending.pop(mid, None)
                fut.cancel()
        if fut.cancelled():
            raise NcError(f"no reply within {timeout:.0f} s")
        reply = fut.result()
        errs = rpc_errors(reply)
        if errs:
            raise NcRpcError(errs)
        return reply

    def close(self, reason: str = "closed by the controller") -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self.conn is not None:
            self.conn.close()
        self._fail_all(NcError(f"session closed: {reason}"))
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()
        if self.conn is not None:
            await self.conn.wait_closed()


def op(name: str, children: dict[str, Any] | None = None) -> bytes:
    """`<name>` in the base namespace with simple child elements (None: empty element)."""
    inner = ""
    for k, v in (children or {}).items():
        if v is None:
            inner += f"<{k}/>"
        elif isinstance(v, str | int):
            inner += f"<{k}>{v}</{k}>"
        else:
            inner += f"<{k}>{''.join(f'<{x}/>' for x in v)}</{k}>"
    return f'<{name} xmlns="{NC_NS}">{inner}</{name}>'.encode()
