"""Kernel IPsec events from the XFRM multicast groups.

The agent turns these into RFC 9061 notifications (sadb-acquire, sadb-expire, ...),
so each event is parsed into the same dataclasses the configuration uses.  The
listener is a plain socket with ``fileno()`` so it can be polled by a thread or
registered with an asyncio loop (``loop.add_reader``) without blocking management.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pyroute2.netlink import nlmsg

from . import netlink as nl
from .model import Policy, Selector, State, Template
from .nlsocket import SO_RCVBUFFORCE, join_groups, open_netlink_socket

log = logging.getLogger(__name__)

DEFAULT_GROUPS = (nl.XFRMNLGRP_ACQUIRE, nl.XFRMNLGRP_EXPIRE, nl.XFRMNLGRP_REPORT)


@dataclass(slots=True)
class AcquireEvent:
    """SADB_ACQUIRE: outbound traffic matched ``policy`` but no SA exists for
    ``template``; ``selector`` is the packet's flow, ``seq`` identifies the request
    (an ALLOCSPI/NEWSA with this seq completes it)."""

    src: str | None
    dst: str | None
    proto: int
    selector: Selector
    policy: Policy
    templates: list[Template]
    seq: int
    aalgos: int
    ealgos: int
    calgos: int


@dataclass(slots=True)
class ExpireEvent:
    """SADB_EXPIRE: an SA hit its soft (hard=False) or hard (hard=True, SA deleted)
    lifetime."""

    state: State
    hard: bool


@dataclass(slots=True)
class PolicyExpireEvent:
    """SADB_X_SPDEXPIRE: a policy hit its soft or hard lifetime."""

    policy: Policy
    hard: bool


@dataclass(slots=True)
class ReportEvent:
    """XFRM_MSG_REPORT (e.g. a mobile-IPv6 route-optimization report)."""

    proto: int
    selector: Selector
    src: str | None


@dataclass(slots=True)
class SaEvent:
    """NEWSA/UPDSA/DELSA/FLUSHSA notifications (group XFRMNLGRP_SA)."""

    msg_type: int
    state: State | None
    proto: int | None = None


@dataclass(slots=True)
class PolicyEvent:
    """NEWPOLICY/UPDPOLICY/DELPOLICY/FLUSHPOLICY notifications (XFRMNLGRP_POLICY)."""

    msg_type: int
    policy: Policy | None


Event = AcquireEvent | ExpireEvent | PolicyExpireEvent | ReportEvent | SaEvent | PolicyEvent


def to_event(msg: nlmsg) -> Event | None:
    """Convert a parsed multicast message into an event dataclass (None: ignored)."""
    t = msg["header"]["type"]
    b = msg.get("body") if t in nl.XfrmMarshal.msg_map else None
    if t == nl.XFRM_MSG_ACQUIRE:
        tmpls = msg.get_attr("XFRMA_TMPL") or []
        return AcquireEvent(
            src=b["saddr"],
            dst=b["id"]["daddr"],
            proto=b["id"]["proto"],
            selector=Selector.from_dict(b["sel"]),
            policy=Policy.from_parts(b["policy"], msg),
            templates=[Template.from_dict(x) for x in tmpls],
            seq=b["seq"],
            aalgos=b["aalgos"],
            ealgos=b["ealgos"],
            calgos=b["calgos"],
        )
    if t == nl.XFRM_MSG_EXPIRE:
        return ExpireEvent(State.from_parts(b["state"], msg), bool(b["hard"]))
    if t == nl.XFRM_MSG_POLEXPIRE:
        return PolicyExpireEvent(Policy.from_parts(b["pol"], msg), bool(b["hard"]))
    if t == nl.XFRM_MSG_REPORT:
        return ReportEvent(b["proto"], Selector.from_dict(b["sel"]), msg.get_attr("XFRMA_COADDR"))
    if t in (nl.XFRM_MSG_NEWSA, nl.XFRM_MSG_UPDSA):
        return SaEvent(t, State.from_msg(msg))
    if t == nl.XFRM_MSG_DELSA:
        sa = msg.get_attr("XFRMA_SA")
        return SaEvent(t, State.from_parts(sa, None) if sa else None, b["proto"])
    if t == nl.XFRM_MSG_FLUSHSA:
        return SaEvent(t, None, b["proto"])
    if t in (nl.XFRM_MSG_NEWPOLICY, nl.XFRM_MSG_UPDPOLICY):
        return PolicyEvent(t, Policy.from_msg(msg))
    if t == nl.XFRM_MSG_DELPOLICY:
        pol = msg.get_attr("XFRMA_POLICY")
        return PolicyEvent(t, Policy.from_parts(pol, msg) if pol else None)
    if t == nl.XFRM_MSG_FLUSHPOLICY:
        return PolicyEvent(t, None)
    return None


class XfrmListener:
    """Subscribes to XFRM multicast groups (by default ACQUIRE, EXPIRE — which also
    carries POLEXPIRE — and REPORT) in ``netns`` and yields parsed events."""

    def __init__(
        self, netns: str | None = None, groups: Iterable[int] = DEFAULT_GROUPS,
        rcvbuf: int = 4 << 20,
    ) -> None:
        self.netns = netns
        self.sock = open_netlink_socket(netns)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, 0))
        join_groups(self.sock, groups)
        self.sock.setblocking(False)
        self.marshal = nl.XfrmMarshal()
        self.overruns = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XfrmListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> list[Event]:
        """Everything queued now, without blocking."""
        out: list[Event] = []
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    # the kernel dropped events: say so, the caller may resync by dump
                    self.overruns += 1
                    log.warning("xfrm listener overrun: events were lost")
                    continue
                raise
            for msg in self.marshal.parse(data):
                try:
                    ev = to_event(msg)
                except Exception:  # a malformed event must not kill the listener
                    log.exception("cannot decode xfrm event type %s", msg["header"]["type"])
                    continue
                if ev is not None:
                    out.append(ev)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield events as they arrive until ``timeout`` seconds pass (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            yield from self.read()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return
            select.select([self.sock], [], [], wait)

    def wait_for(self, predicate, timeout: float) -> Event:
        """The first event satisfying ``predicate`` within ``timeout`` seconds, else
        TimeoutError (tests and the agent both wait with a deadline, never sleep)."""
        for ev in self.events(timeout):
            if predicate(ev):
                return ev
        raise TimeoutError(f"no matching xfrm event within {timeout}s")
