"""One NETCONF session: hello exchange, framing, rpc dispatch in order, replies, and the
notifications interleaved between them. Transport-agnostic: the SSH layer hands in bytes and a
`write`/`close` pair, which also lets tests drive a session without SSH."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from lxml import etree

from netconf_core.capabilities import BASE_10, BASE_11
from netconf_core.errors import NC_NS, RpcError
from netconf_core.framing import Framer, FramingError, TooBig
from netconf_core.monitoring import SessionInfo

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer

log = logging.getLogger(__name__)

NC = f"{{{NC_NS}}}"
STREAM_FROM = 64 << 10  # messages at least this big are parsed as they arrive
_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, remove_comments=True, huge_tree=True,
    load_dtd=False,
)

HELLO_WAIT, OPEN, CLOSED = "hello-wait", "open", "closed"


class NetconfSession:
    """A session lives from the SSH channel opening until close-session, kill-session,
    a framing error or the channel going away."""

    def __init__(
        self,
        server: NetconfServer,
        session_id: int,
        username: str,
        source_host: str,
        write: Callable[[bytes], None],
        close: Callable[[], None],
    ) -> None:
        self.server = server
        self.id = session_id
        self.username = username
        self.source_host = source_host
        self._write = write
        self._close_transport = close
        self.framer = Framer(server.config.max_message_size)
        self.state = HELLO_WAIT
        self.info = SessionInfo(session_id, username, source_host, datetime.now(UTC))
        self.client_capabilities: list[str] = []
        self.after_reply: list[Callable[[], None]] = []
        self._hello_timer: asyncio.TimerHandle | None = None
        self.opened = False  # the hello exchange completed
        # 1.1 framing: the rpc being received is parsed as its pieces arrive
        self._stream: etree.XMLParser | None = None
        self._stream_ok = True
        self._stream_started = False
        self._stream_size = 0  # content seen of the current message
        self.end_reason = "dropped"
        self.killed_by: int | None = None

    # -- transport events --------------------------------------------------------------------

    def start(self) -> None:
        """Send our hello at once (RFC 6241 section 8.1: both sides send it immediately)."""
        self._write(self.server.hello_message(self.id))
        timeout = self.server.config.hello_timeout
        if timeout > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._hello_timer = loop.call_later(timeout, self._hello_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self.framer.feed(data)
        while self.state != CLOSED:
            try:
                msg = self.framer.next_message()
            except FramingError as exc:
                log.warning("session %d: framing error: %s", self.id, exc)
                self._send_error(None, RpcError("rpc", "malformed-message", f"framing: {exc}"))
                self.close("other")
                return
            if msg is None:
                return
            if isinstance(msg, TooBig):
                self._too_big(msg)
                continue
            if self.state == HELLO_WAIT:
                self._hello(msg)
            else:
                self._rpc(msg)

    def connection_lost(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            self.server.session_ended(self, self.end_reason, self.killed_by)

    # -- hello ---------------------------------------------------------------------------------

    def _hello(self, msg: bytes) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        try:
            root = etree.fromstring(msg.lstrip(), _PARSER)
        except etree.XMLSyntaxError as exc:
            self._bad_hello(f"hello is not well-formed XML: {exc}")
            return
        if root.tag != NC + "hello":
            self._bad_hello(f"expected <hello>, got {root.tag}")
            return
        if root.find(NC + "session-id") is not None:
            self._bad_hello("a client hello must not carry a session-id")
            return
        caps = [(c.text or "").strip() for c in root.iterfind(f"{NC}capabilities/{NC}capability")]
        if BASE_10 not in caps and BASE_11 not in caps:
            self._bad_hello("client hello advertises no base capability")
            return
        self.client_capabilities = caps
        if BASE_11 in caps:
            self.framer.use_chunked()
            self.framer.sink = self._stream_piece
        self.state = OPEN
        self.opened = True
        log.info(
            "session %d open: user %s from %s, framing %s",
            self.id, self.username, self.source_host, "1.1" if self.framer.chunked else "1.0",
        )
        self.server.session_opened(self)

    def _bad_hello(self, why: str) -> None:
        log.warning("session %d: bad hello: %s", self.id, why)
        self.server.stats.in_bad_hellos += 1
        self.close("bad-hello")

    def _hello_timed_out(self) -> None:
        if self.state == HELLO_WAIT:
            log.warning("session %d: no hello within %ss", self.id,
                        self.server.config.hello_timeout)
            self.close("timeout")

    # -- rpc -------------------------------------------------------------------------------------

    # Content of a 1.1 message is parsed as it arrives: a multi-megabyte edit-config is
    # then parsed while its tail is still being received. Any problem (or anything but a
    # complete parse) falls back to parsing the whole message, which reports it as always.
    def _stream_piece(self, piece: bytes) -> None:
        self._stream_size += len(piece)
        if not self._stream_ok or self._stream_size < STREAM_FROM:
            return  # small messages are parsed whole (a parser per message costs more)
        if not self._stream_started:
            # the first pieces are still in the framer: start from all of them
            piece = self.framer.received().lstrip()
            if not piece:
                return
            self._stream_started = True
            self._stream = etree.XMLParser(
                resolve_entities=False, no_network=True, remove_comments=True,
                huge_tree=True, load_dtd=False)
        try:
            self._stream.feed(piece)  # type: ignore[union-attr]
        except etree.XMLSyntaxError:
            self._stream_ok = False

    def _streamed_root(self) -> etree._Element | None:
        parser, ok = self._stream, self._stream_ok
        self._stream, self._stream_ok, self._stream_started = None, True, False
        self._stream_size = 0
        if parser is None or not ok:
            return None
        try:
            return parser.close()
        except etree.XMLSyntaxError:
            return None

    def _rpc(self, msg: bytes) -> None:
        counters = self.info.counters
        gcounters = self.server.stats.counters
        try:
            root = self._streamed_root()
            if root is None:
                root = etree.fromstring(msg.lstrip(), _PARSER)
        except etree.XMLSyntaxError as exc:
            counters.in_bad_rpcs += 1
            gcounters.in_bad_rpcs += 1
            self._send_error(
                None, RpcError("rpc", "malformed-message", f"not well-formed XML: {exc}")
            )
            return
        if root.tag != NC + "rpc":
            counters.in_bad_rpcs += 1
            gcounters.in_bad_rpcs += 1
            self._send_error(
                None,
                RpcError("rpc", "malformed-message", f"expected <rpc> in {NC_NS}, got {root.tag}"),
            )
            return
        if root.get("message-id") is None:
            counters.in_bad_rpcs += 1
            gcounters.in_bad_rpcs += 1
            self._send_error(
                root,
                RpcError(
                    "rpc", "missing-attribute", "<rpc> has no message-id",
                    info={"bad-attribute": "message-id", "bad-element": "rpc"},
                ),
            )
            return
        counters.in_rpcs += 1
        gcounters.in_rpcs += 1
        try:
            body = self.server.dispatch(self, root)
        except RpcError as err:
            self._send_error(root, err)
        except Exception as exc:  # a bug must cost one rpc, not the session
            log.exception("session %d: rpc failed", self.id)
            self._send_error(
                root, RpcError("application", "operation-failed", f"internal error: {exc}")
            )
        else:
            self.send(_reply(root, body))
        callbacks, self.after_reply = self.after_reply, []
        for cb in callbacks:
            cb()

    def _too_big(self, msg: TooBig) -> None:
        self._streamed_root()  # drop what was parsed of it
        self.info.counters.in_bad_rpcs += 1
        self.server.stats.counters.in_bad_rpcs += 1
        limit = self.server.config.max_message_size
        log.warning("session %d: message of %d bytes over the %d limit", self.id, msg.size, limit)
        self._send_error(
            None,
            RpcError(
                "rpc", "too-big",
                f"message of {msg.size} bytes exceeds the server's limit of {limit} bytes",
            ),
        )
        if self.state == HELLO_WAIT:
            self.close("bad-hello")

    def _send_error(self, rpc: etree._Element | None, err: RpcError) -> None:
        self.info.counters.out_rpc_errors += 1
        self.server.stats.counters.out_rpc_errors += 1
        reply = _reply_element(rpc)
        for e in err.all():
            reply.append(e.to_xml())
        self.send(etree.tostring(reply))

    # -- output ----------------------------------------------------------------------------------

    def send(self, msg: bytes) -> None:
        if self.state != CLOSED:
            self._write(self.framer.frame(msg))

    def send_notification(self, msg: bytes) -> None:
        if self.state == OPEN:
            self.info.counters.out_notifications += 1
            self.server.stats.counters.out_notifications += 1
            self._write(self.framer.frame(msg))

    def close(self, reason: str = "closed", killed_by: int | None = None) -> None:
        """End the session: the server releases its locks and subscriptions at once."""
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        self.server.session_ended(self, reason, killed_by)
        self._close_transport()


def _reply_element(rpc: etree._Element | None) -> etree._Element:
    """`<rpc-reply>` carrying every attribute of the `<rpc>` (RFC 6241 section 4.2)."""
    if rpc is None:
        return etree.Element(NC + "rpc-reply", nsmap={None: NC_NS})
    nsmap = {k: v for k, v in rpc.nsmap.items() if k is not None}
    nsmap[None] = NC_NS
    return etree.Element(NC + "rpc-reply", attrib=dict(rpc.attrib), nsmap=nsmap)


def _reply(rpc: etree._Element, body: list[etree._Element | bytes] | None) -> bytes:
    reply = _reply_element(rpc)
    if body is None:
        etree.SubElement(reply, NC + "ok")
        return etree.tostring(reply)
    raw = [b for b in body if isinstance(b, bytes)]
    for el in body:
        if not isinstance(el, bytes):
            reply.append(el)
    if not raw:
        return etree.tostring(reply)
    # serialized content (in the base namespace, which is the reply's default) goes last
    head = etree.tostring(reply)
    qname = re.match(rb"<([^\s/>]+)", head).group(1)  # type: ignore[union-attr]
    end = b"</" + qname + b">"
    head = head[:-2] + b">" if head.endswith(b"/>") else head[:-len(end)]
    return head + b"".join(raw) + end
