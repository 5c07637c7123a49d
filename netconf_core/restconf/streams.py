"""RFC 8040 section 6: the NETCONF event stream as server-sent events (text/event-stream),
one `data:` event per notification, in XML or RFC 7951 JSON; `start-time` replays from the
server's replay log, `stop-time` ends the stream. A subscriber too slow to take events is
disconnected rather than allowed to grow the server's memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.client_exceptions import ClientConnectionResetError
from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.notifications import NOTIF_NS, STREAM, parse_time
from netconf_core.restconf import codec
from netconf_core.restconf.errors import not_found

if TYPE_CHECKING:
    from netconf_core.restconf.server import RestconfServer
    from netconf_core.server import NetconfServer

log = logging.getLogger(__name__)

KEEPALIVE = 20.0
MAX_QUEUED = 10000


def sse_event(payload: bytes) -> bytes:
    lines = payload.replace(b"\r\n", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


async def serve(rc: RestconfServer, request: web.Request) -> web.StreamResponse:
    stream = request.match_info["stream"]
    enc = request.match_info["encoding"]
    if stream != STREAM or enc not in ("xml", "json"):
        raise not_found(f"no stream {stream}/{enc} (see ietf-restconf-monitoring:"
                        "restconf-state/streams)")
    for k in request.query:
        if k not in ("start-time", "stop-time", "filter"):
            raise RpcError("protocol", "invalid-value",
                           f"query parameter {k!r} is not supported on a stream",
                           info={"bad-element": k})
    for k in ("start-time", "stop-time"):
        if k in request.query:
            parse_time(request.query[k], k)  # RFC 8040 names in the error
    nc = rc.nc
    sess = rc._session(request)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def deliver(msg: bytes) -> None:
        if queue.qsize() >= MAX_QUEUED:
            log.warning("RESTCONF stream of %s: client too slow, closing", sess.username)
            queue.put_nowait(None)
            return
        queue.put_nowait(msg)

    def end() -> None:
        queue.put_nowait(None)

    # The subscription is a NETCONF create-subscription of this session: the same stream
    # checks, replay, stop time and NACM (exec of create-subscription, and the read check
    # of every notification at delivery) as over NETCONF.
    q = f"{{{NOTIF_NS}}}"
    op = etree.Element(q + "create-subscription", nsmap={None: NOTIF_NS})
    etree.SubElement(op, q + "stream").text = STREAM
    if "start-time" in request.query:
        etree.SubElement(op, q + "startTime").text = request.query["start-time"]
    if "stop-time" in request.query:
        etree.SubElement(op, q + "stopTime").text = request.query["stop-time"]
    if "filter" in request.query:
        # RFC 8040 4.8.4: an XPath over the notification; prefixes are module names
        nsmap = {m: ns for m, ns in rc.modules.items() if m.replace("-", "").isalnum()}
        filt = etree.SubElement(op, q + "filter", nsmap=nsmap)
        filt.set("type", "xpath")
        filt.set("select", request.query["filter"])
    sess.on_notification = deliver
    rc._call(request, op, sess)  # replays into the queue right away
    sub = nc.bus.subscriptions.get(sess.id)
    if sub is not None:
        sub.on_end.append(end)
    rc.streams.add(end)
    try:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        log.info("RESTCONF stream %s/%s opened by %s", stream, enc, sess.username)
        with contextlib.suppress(ConnectionError, ClientConnectionResetError):
            await _pump(queue, resp, enc, nc)  # ends when the client goes away, too
        return resp
    finally:
        rc.streams.discard(end)
        nc.bus.unsubscribe(sess.id)
        log.info("RESTCONF stream %s/%s of %s closed", stream, enc, sess.username)


async def _pump(queue: asyncio.Queue[bytes | None], resp: web.StreamResponse, enc: str,
                nc: NetconfServer) -> None:
    while True:
        try:
            msg = await asyncio.wait_for(queue.get(), KEEPALIVE)
        except TimeoutError:
            await resp.write(b": keepalive\n\n")
            continue
        if msg is None:
            break
        if enc == "json":
            try:
                msg = codec.notification_json(nc.schema, msg)
            except Exception:
                log.exception("cannot encode a notification as JSON")
                continue
        await resp.write(sse_event(msg))
    await resp.write_eof()
