"""A synchronous NETLINK_XFRM socket: requests, dumps, batches, namespaces.

Why not pyroute2's ``NetlinkSocket``: in pyroute2 0.9 it runs an asyncio loop per
socket and creates sockets inside a namespace by forking a helper process. The agent
needs something cheaper and more predictable: one plain socket, requests answered
synchronously, and many messages per ``send()`` with every ack mapped back to the
message that caused it.  Received data is still parsed by pyroute2's ``Marshal``
with the message classes from :mod:`nsf_agent.xfrm.netlink`.

Namespaces: the socket is created by a short-lived thread that ``setns()`` into the
namespace and exits.  A netlink socket stays bound to the namespace it was created
in, so the rest of the process (and the NETCONF server's event loop) never changes
namespace, and no process is forked.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import itertools
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pyroute2.netlink import nlmsg

from .netlink import (
    MSG_NAMES,
    NETLINK_ADD_MEMBERSHIP,
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    NETLINK_XFRM,
    NLM_F_ACK,
    NLM_F_ACK_TLVS,
    NLM_F_CAPPED,
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSG_OVERRUN,
    NLMSGERR_ATTR_MSG,
    NLMSGERR_ATTR_OFFS,
    SOL_NETLINK,
    XfrmMarshal,
)

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

_HDR = struct.Struct("=IHHII")
_ERR = struct.Struct("=i")
_NLA = struct.Struct("=HH")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(netns: str) -> str:
    """``ip netns`` names live under /run/netns; absolute paths are used as given
    (e.g. /proc/PID/ns/net)."""
    return netns if netns.startswith("/") else f"/run/netns/{netns}"


def open_netlink_socket(netns: str | None = None, proto: int = NETLINK_XFRM) -> socket.socket:
    """Create a netlink socket, optionally inside the network namespace ``netns``."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
    path = netns_path(netns)
    out: dict[str, object] = {}

    def worker() -> None:
        # This thread's namespace changes and the thread then ends; the socket keeps
        # the namespace it was created in.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            out["sock"] = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto
            )
        except BaseException as exc:  # handed to the caller below
            out["exc"] = exc

    t = threading.Thread(target=worker, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "exc" in out:
        raise out["exc"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


class XfrmError(OSError):
    """A request the kernel refused.

    ``errno``/``strerror`` are the kernel's, ``reason`` its extended-ack text (e.g.
    "Requested type not found"), ``msg_type`` the request type and ``index`` the
    request's position in a batch (None for single requests), so that a caller
    applying many entries knows exactly which one failed and why.
    """

    def __init__(
        self,
        err: int,
        reason: str | None = None,
        msg_type: int | None = None,
        index: int | None = None,
        text: str | None = None,
    ) -> None:
        self.reason = reason
        self.msg_type = msg_type
        self.index = index
        name = MSG_NAMES.get(msg_type or 0, str(msg_type))
        where = f" (batch entry {index})" if index is not None else ""
        detail = f": {reason}" if reason else ""
        msg = text or f"{name}{where} failed: {os.strerror(err)}{detail}"
        super().__init__(err, msg)

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.strerror}"

    def __reduce__(self):  # keep pickling (e.g. across processes) lossless
        return (type(self), (self.errno, self.reason, self.msg_type, self.index, self.strerror))


class XfrmUnsupportedError(XfrmError):
    """The kernel lacks what the request needs (ESP/AH type, an algorithm module)."""


class XfrmBatchError(Exception):
    """Raised by :meth:`XfrmSocket.batch` with ``raise_on_error``; carries all results."""

    def __init__(self, results: list[XfrmError | None]) -> None:
        self.results = results
        self.errors = [e for e in results if e is not None]
        first = self.errors[0] if self.errors else None
        super().__init__(
            f"{len(self.errors)} of {len(results)} batch entries failed; first: {first}"
        )


@dataclass(slots=True)
class Ack:
    """A parsed NLMSG_ERROR (error 0 is a positive ack)."""

    seq: int
    error: int
    reason: str | None
    offset: int | None


def parse_ack(buf: bytes | bytearray | memoryview, off: int, length: int, flags: int) -> Ack:
    """Decode an NLMSG_ERROR at ``off``: error code, embedded request header, and the
    extended-ack TLVs (message text, offending attribute offset)."""
    (_, _, _, seq, _) = _HDR.unpack_from(buf, off)
    (error,) = _ERR.unpack_from(buf, off + 16)
    reason = None
    bad_off = None
    if flags & NLM_F_ACK_TLVS:
        inner_len = _HDR.unpack_from(buf, off + 20)[0]
        p = off + 20 + (16 if flags & NLM_F_CAPPED or error == 0 else (inner_len + 3) & ~3)
        end = off + length
        while p + 4 <= end:
            alen, atype = _NLA.unpack_from(buf, p)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                reason = bytes(buf[p + 4 : p + alen]).split(b"\0", 1)[0].decode(errors="replace")
            elif atype == NLMSGERR_ATTR_OFFS and alen >= 8:
                bad_off = struct.unpack_from("=I", buf, p + 4)[0]
            p += (alen + 3) & ~3
    return Ack(seq, -error, reason, bad_off)


def frame(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    """Prefix a (4-aligned) body with an nlmsghdr."""
    return _HDR.pack(16 + len(body), msg_type, flags, seq, 0) + body


class XfrmSocket:
    """A NETLINK_XFRM socket for requests (not for multicast events; see
    :class:`nsf_agent.xfrm.events.XfrmListener`).

    ``chunk_bytes`` bounds one ``send()`` in a batch: the kernel processes a send
    synchronously and queues an answer per failing message (and an ack for the last),
    so a chunk must fit both the send buffer and (as errors, if all fail) the receive
    buffer; both are enlarged when running as root.
    """

    def __init__(
        self,
        netns: str | None = None,
        rcvbuf: int = 16 << 20,
        sndbuf: int = 4 << 20,
        chunk_bytes: int = 256 << 10,
    ) -> None:
        self.netns = netns
        self.sock = open_netlink_socket(netns)
        self._set_buf(socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
        self._set_buf(socket.SO_SNDBUF, SO_SNDBUFFORCE, sndbuf)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
            self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        except OSError:  # pragma: no cover - very old kernels
            log.debug("extended acks unavailable")
        self.sock.bind((0, 0))
        self.pid = self.sock.getsockname()[0]
        snd = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.chunk_bytes = max(4096, min(chunk_bytes, snd - 1024))
        self.marshal = XfrmMarshal()
        self._seq = itertools.count(1)
        self._buf = bytearray(1 << 20)
        self._lock = threading.Lock()

    def _set_buf(self, opt: int, force_opt: int, size: int) -> None:
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, opt, size)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XfrmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        return next(self._seq) & 0xFFFFFFFF

    # -- receiving -------------------------------------------------------------------

    def _recv(self) -> memoryview:
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except InterruptedError:
                continue
            if n < len(self._buf):
                return memoryview(self._buf)[:n]
            # a truncated datagram: grow and ask the kernel for the size next time
            self._buf = bytearray(len(self._buf) * 4)
            raise XfrmError(errno_mod.EMSGSIZE, "netlink datagram larger than buffer")

    def _messages(self, data: memoryview) -> Iterator[tuple[int, int, int, int, int]]:
        """Yield (offset, length, type, flags, seq) for each message in a datagram."""
        off = 0
        n = len(data)
        while off + 16 <= n:
            length, mtype, flags, seq, _ = _HDR.unpack_from(data, off)
            if length < 16 or off + length > n:
                break
            yield off, length, mtype, flags, seq
            off += (length + 3) & ~3

    def _parse(self, data: memoryview, off: int, length: int) -> nlmsg:
        return next(iter(self.marshal.parse(bytes(data[off : off + length]))))

    # -- single requests -------------------------------------------------------------

    def request(
        self, msg_type: int, body: bytes, flags: int = 0, *, index: int | None = None
    ) -> list[nlmsg]:
        """Send one request with NLM_F_ACK; return the messages the kernel answered
        with before the ack (e.g. the SA from GETSA/ALLOCSPI); raise XfrmError."""
        with self._lock:
            seq = self.next_seq()
            self.sock.send(frame(msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, seq, body))
            replies: list[nlmsg] = []
            while True:
                data = self._recv()
                for off, length, mtype, mflags, mseq in self._messages(data):
                    if mseq != seq:
                        continue
                    if mtype == NLMSG_ERROR:
                        ack = parse_ack(data, off, length, mflags)
                        if ack.error:
                            raise XfrmError(ack.error, ack.reason, msg_type, index)
                        return replies
                    if mtype == NLMSG_DONE:
                        return replies
                    if mtype not in (NLMSG_NOOP, NLMSG_OVERRUN):
                        replies.append(self._parse(data, off, length))

    def dump(self, msg_type: int, body: bytes = b"", retries: int = 5) -> list[nlmsg]:
        """A full NLM_F_DUMP; restarted when the kernel flags it inconsistent
        (NLM_F_DUMP_INTR: the table changed while being dumped)."""
        for _ in range(retries):
            interrupted = False
            with self._lock:
                seq = self.next_seq()
                self.sock.send(frame(msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, body))
                out: list[nlmsg] = []
                done = False
                while not done:
                    data = self._recv()
                    for off, length, mtype, mflags, mseq in self._messages(data):
                        if mseq != seq:
                            continue
                        if mflags & NLM_F_DUMP_INTR:
                            interrupted = True
                        if mtype == NLMSG_DONE:
                            done = True
                            break
                        if mtype == NLMSG_ERROR:
                            ack = parse_ack(data, off, length, mflags)
                            if ack.error:
                                raise XfrmError(ack.error, ack.reason, msg_type)
                            done = True
                            break
                        out.append(self._parse(data, off, length))
            if not interrupted:
                return out
            log.debug("dump of %s interrupted, restarting", MSG_NAMES.get(msg_type))
        raise XfrmError(errno_mod.EINTR, "dump kept being interrupted", msg_type)

    # -- batches --------------------------------------------------------------------

    def batch(
        self,
        requests: Iterable[tuple[int, int, bytes]],
        *,
        raise_on_error: bool = False,
    ) -> list[XfrmError | None]:
        """Send many (msg_type, flags, body) requests with few ``send()`` calls.

        Every message has its own sequence number; the kernel keeps going after a
        failing message, so the result has one entry per request: None for success, or
        an XfrmError whose ``index`` is the request's position. The kernel answers every
        failing message with an error; only the last message of each ``send()`` asks for
        an ack on success too (NLM_F_ACK): it handles the messages of a send in order and
        queues its answers in order, so that ack comes after every error of the chunk,
        and 10,000 successes cost one ``recv()`` instead of 10,000.
        """
        reqs: Sequence[tuple[int, int, bytes]] = (
            requests if isinstance(requests, Sequence) else list(requests)
        )
        results: list[XfrmError | None] = [None] * len(reqs)
        limit = self.chunk_bytes
        with self._lock:
            i = 0
            total = len(reqs)
            while i < total:
                parts: list[bytes] = []
                size = 0
                first = i
                base = self.next_seq()
                # Sequence numbers of a chunk are base, base+1, ...: acks map back by
                # subtraction, no dictionary needed.
                while i < total:
                    mtype, flags, body = reqs[i]
                    ln = 16 + len(body)
                    if parts and size + ln > limit:
                        break
                    parts.append(
                        _HDR.pack(ln, mtype, flags | NLM_F_REQUEST,
                                  (base + i - first) & 0xFFFFFFFF, 0)
                    )
                    parts.append(body)
                    size += ln
                    i += 1
                count = i - first
                mtype, flags, body = reqs[i - 1]
                parts[-2] = _HDR.pack(16 + len(body), mtype, flags | NLM_F_REQUEST | NLM_F_ACK,
                                      (base + count - 1) & 0xFFFFFFFF, 0)
                # reserve the chunk's sequence numbers
                self._seq = itertools.count(base + count + 1)
                self.sock.send(b"".join(parts))
                pending = True
                while pending:
                    data = self._recv()
                    for off, length, mtype, mflags, mseq in self._messages(data):
                        if mtype != NLMSG_ERROR:
                            continue
                        k = (mseq - base) & 0xFFFFFFFF
                        if k >= count:
                            continue
                        if k == count - 1:
                            pending = False  # the chunk's last answer
                        (err,) = _ERR.unpack_from(data, off + 16)
                        if err:
                            ack = parse_ack(data, off, length, mflags)
                            idx = first + k
                            results[idx] = XfrmError(ack.error, ack.reason, reqs[idx][0], idx)
        if raise_on_error and any(r is not None for r in results):
            raise XfrmBatchError(results)
        return results


def join_groups(sock: socket.socket, groups: Iterable[int]) -> None:
    """Subscribe a netlink socket to multicast groups by number (not bitmask), which
    also reaches groups above 32."""
    for g in groups:
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g)
