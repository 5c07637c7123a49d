"""RFC 5277 event notifications: the NETCONF stream, subscriptions and a bounded replay log.

Notifications are delivered on the subscriber's session between rpc replies (:interleave);
each subscription may carry a filter and start/stop times. The bus does not validate events:
the server checks them against the YANG schema before publishing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree

from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

NOTIF_NS = "urn:ietf:params:xml:ns:netconf:notification:1.0"
NETMOD_NOTIF_NS = "urn:ietf:params:xml:ns:netmod:notification"
STREAM = "NETCONF"

# A filter turns an event's content element into what the subscriber gets (None: drop it).
EventFilter = Callable[[etree._Element], etree._Element | None]
# How the bus hands a framed-ready notification to a session.
Deliver = Callable[[bytes], None]


def in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the caller runs on `loop`'s thread (inside it)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def now() -> datetime:
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def parse_time(text: str, what: str) -> datetime:
    """An RFC 3339 date-and-time (as yang:date-and-time); bad values are invalid-value."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RpcError(
            "protocol", "bad-element", f"{what} {text!r} is not an RFC 3339 date-and-time",
            info={"bad-element": what},
        ) from None
    if t.tzinfo is None:
        raise RpcError(
            "protocol", "bad-element", f"{what} {text!r} has no time zone",
            info={"bad-element": what},
        )
    return t


@dataclass
class Event:
    time: datetime
    content: etree._Element


@dataclass
class Subscription:
    session_id: int
    deliver: Deliver
    event_filter: EventFilter | None
    start: datetime | None
    stop: datetime | None
    stop_handle: asyncio.TimerHandle | None = None
    sent: int = 0
    on_end: list[Callable[[], None]] = field(default_factory=list)


def render(time: datetime, content: etree._Element) -> bytes:
    """The `<notification>` message for an event."""
    n = etree.Element(f"{{{NOTIF_NS}}}notification", nsmap={None: NOTIF_NS})
    etree.SubElement(n, f"{{{NOTIF_NS}}}eventTime").text = format_time(time)
    n.append(content)
    return etree.tostring(n)


def _marker(name: str) -> etree._Element:
    return etree.Element(f"{{{NETMOD_NOTIF_NS}}}{name}", nsmap={None: NETMOD_NOTIF_NS})


class NotificationBus:
    """The NETCONF event stream of one server."""

    def __init__(self, replay_size: int = 1024) -> None:
        self.replay: deque[Event] = deque(maxlen=replay_size)
        self.subscriptions: dict[int, Subscription] = {}
        self.log_created = now()
        self.log_aged: datetime | None = None  # time of the newest event aged out

    def streams(self) -> etree._Element:
        """RFC 5277 §3.4 `/manageEvent:netconf/streams` state for `<get>`."""
        q = f"{{{NETMOD_NOTIF_NS}}}"
        root = etree.Element(q + "netconf", nsmap={None: NETMOD_NOTIF_NS})
        st = etree.SubElement(etree.SubElement(root, q + "streams"), q + "stream")
        etree.SubElement(st, q + "name").text = STREAM
        etree.SubElement(st, q + "description").text = "default NETCONF event stream"
        etree.SubElement(st, q + "replaySupport").text = "true"
        etree.SubElement(st, q + "replayLogCreationTime").text = format_time(self.log_created)
        if self.log_aged is not None:
            etree.SubElement(st, q + "replayLogAgedTime").text = format_time(self.log_aged)
        return root

    def has_subscribers(self) -> bool:
        return bool(self.subscriptions)

    def wants(self, namespace: str, name: str) -> bool:
        """Whether some subscription could receive a notification `name` of `namespace`:
        one without a filter, an xpath filter, or a subtree filter with a top-level node
        of that name (in that namespace, or in none: subtree filters match any)."""
        for sub in self.subscriptions.values():
            selects = getattr(sub.event_filter, "selects", None)
            if sub.event_filter is None or selects is None:
                return True
            if (namespace, name) in selects or ("", name) in selects:
                return True
        return False

    def publish(self, content: etree._Element, time: datetime | None = None) -> Event:
        """Store an event in the replay log and send it to every matching subscriber."""
        ev = Event(time or now(), content)
        if len(self.replay) == self.replay.maxlen and self.replay:
            self.log_aged = self.replay[0].time
        self.replay.append(ev)
        for sub in list(self.subscriptions.values()):
            if sub.stop is not None and ev.time > sub.stop:
                continue
            self._send(sub, ev.time, ev.content)
        return ev

    def subscribe(
        self,
        session_id: int,
        deliver: Deliver,
        stream: str | None,
        event_filter: EventFilter | None,
        start: datetime | None,
        stop: datetime | None,
    ) -> Subscription:
        """Check the create-subscription parameters (RFC 5277 section 2.1.1) and register."""
        if stream not in (None, STREAM):
            raise RpcError(
                "application", "invalid-value", f"no such stream {stream!r}",
                info={"bad-element": "stream"},
            )
        if session_id in self.subscriptions:
            raise RpcError(
                "protocol", "in-use", "this session already has a subscription",
                info={"session-id": str(session_id)},
            )
        current = now()
        if stop is not None and start is None:
            raise RpcError(
                "protocol", "missing-element", "stopTime requires startTime",
                info={"bad-element": "startTime"},
            )
        if start is not None and start > current:
            raise RpcError(
                "protocol", "bad-element", "startTime is in the future",
                info={"bad-element": "startTime"},
            )
        if start is not None and stop is not None and stop < start:
            raise RpcError(
                "protocol", "bad-element", "stopTime is earlier than startTime",
                info={"bad-element": "stopTime"},
            )
        sub = Subscription(session_id, deliver, event_filter, start, stop)
        self.subscriptions[session_id] = sub
        return sub

    def start(self, sub: Subscription, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Replay what was asked for (after the rpc-reply went out) and arm the stop time."""
        if sub.start is not None:
            for ev in list(self.replay):
                if ev.time < sub.start:
                    continue
                if sub.stop is not None and ev.time > sub.stop:
                    break
                self._send(sub, ev.time, ev.content)
            sub.deliver(render(now(), _marker("replayComplete")))
        if sub.stop is not None:
            delay = (sub.stop - now()).total_seconds()
            if delay <= 0:
                self.complete(sub.session_id)
            else:
                loop = loop or asyncio.get_running_loop()
                sub.stop_handle = loop.call_later(delay, self.complete, sub.session_id)

    def complete(self, session_id: int) -> None:
        """The stop time passed: tell the subscriber and end the subscription."""
        sub = self.subscriptions.pop(session_id, None)
        if sub is None:
            return
        sub.deliver(render(now(), _marker("notificationComplete")))
        for cb in sub.on_end:
            cb()

    def unsubscribe(self, session_id: int) -> None:
        sub = self.subscriptions.pop(session_id, None)
        if sub is not None and sub.stop_handle is not None:
            sub.stop_handle.cancel()

    def _send(self, sub: Subscription, time: datetime, content: etree._Element) -> None:
        body: etree._Element | None = content
        if sub.event_filter is not None:
            try:
                body = sub.event_filter(content)
            except Exception:  # a broken filter must not stop the stream for others
                log.exception("notification filter failed for session %d", sub.session_id)
                body = None
            if body is None:
                return
        else:
            body = _copy(content)
        sub.sent += 1
        sub.deliver(render(time, body))


def _copy(el: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(el))
