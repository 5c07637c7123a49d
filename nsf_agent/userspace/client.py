"""The agent's side of the data path control channel (Unix socket, length-prefixed JSON).

Requests carry an `id`; replies echo it. Events (expire, acquire, counters) may arrive at
any time and are queued for `events()`/`wait_event()`. `AsyncDatapathClient` is the same
protocol on asyncio streams, for use inside the agent's NETCONF event loop.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .model import SaConfig, SpdEntry

_LEN = struct.Struct("!I")

Event = dict[str, Any]


class DatapathError(RuntimeError):
    """The data path refused a request (the message says why)."""


def _encode(msg: dict[str, Any]) -> bytes:
    data = json.dumps(msg, separators=(",", ":")).encode()
    return _LEN.pack(len(data)) + data


def _request(op: str, **kw: Any) -> dict[str, Any]:
    return {"op": op, **kw}


def replace_msg(sas: Iterable[SaConfig], spd: Iterable[SpdEntry],
                suspend: Iterable[str] = ()) -> dict[str, Any]:
    return _request("replace", sas=[s.to_dict() for s in sas], spd=[e.to_dict() for e in spd],
                    suspend=sorted(suspend))


class DatapathClient:
    """Blocking client, for tests, tools and a helper thread in the agent."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)  # the process is still starting: retry until the deadline
        self._ids = itertools.count(1)
        self._buf = bytearray()
        self._events: collections.deque[Event] = collections.deque()
        self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> DatapathClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_msg(self, deadline: float) -> dict[str, Any] | None:
        while True:
            if len(self._buf) >= 4:
                (n,) = _LEN.unpack_from(self._buf)
                if len(self._buf) >= 4 + n:
                    body = bytes(self._buf[4:4 + n])
                    del self._buf[:4 + n]
                    return json.loads(body)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("data path closed the control channel")
            self._buf += data

    def call(self, op: str, **kw: Any) -> Any:
        rid = next(self._ids)
        self.sock.sendall(_encode({"id": rid, **_request(op, **kw)}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_msg(deadline)
            if msg is None:
                raise TimeoutError(f"no reply to {op}")
            if msg.get("type") == "event":
                self._events.append(msg)
                continue
            if msg.get("id") == rid:
                if not msg.get("ok"):
                    raise DatapathError(msg.get("error", "unknown error"))
                return msg.get("result")

    def replace(self, sas: Sequence[SaConfig], spd: Sequence[SpdEntry],
                suspend: Iterable[str] = ()) -> Any:
        """Install exactly these SAs and SPD entries; outbound SAs named in `suspend` are not
        used for sending. The result's `restored` names SAs installed again without their
        state (name -> i2nsf-sadb restart-reason)."""
        m = replace_msg(sas, spd, suspend)
        return self.call("replace", sas=m["sas"], spd=m["spd"], suspend=m["suspend"])

    def add_sa(self, sa: SaConfig) -> None:
        self.call("add_sa", sa=sa.to_dict())

    def del_sa(self, name: str) -> bool:
        return bool(self.call("del_sa", name=name))

    def add_spd(self, entry: SpdEntry) -> None:
        self.call("add_spd", entry=entry.to_dict())

    def del_spd(self, name: str) -> bool:
        return bool(self.call("del_spd", name=name))

    def stats(self) -> dict[str, Any]:
        return self.call("stats")

    def ping(self) -> dict[str, Any]:
        return self.call("ping")

    def shutdown(self) -> None:
        self.call("shutdown")

    def events(self, timeout: float = 0.0) -> list[Event]:
        """Events received so far, waiting up to `timeout` for the first one."""
        deadline = time.monotonic() + timeout
        while not self._events:
            msg = self._read_msg(deadline)
            if msg is None:
                break
            if msg.get("type") == "event":
                self._events.append(msg)
        out = list(self._events)
        self._events.clear()
        return out

    def wait_event(self, pred: Callable[[Event], bool], timeout: float) -> Event:
        """The first event satisfying `pred` (others stay queued), or TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            for ev in list(self._events):
                if pred(ev):
                    self._events.remove(ev)
                    return ev
            msg = self._read_msg(deadline)
            if msg is None:
                raise TimeoutError("event not seen before the deadline")
            if msg.get("type") == "event":
                self._events.append(msg)


class AsyncDatapathClient:
    """asyncio client: replies resolve futures, events go to a queue the agent consumes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._r = reader
        self._w = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._reader())

    @classmethod
    async def connect(cls, path: str, timeout: float = 10.0) -> AsyncDatapathClient:
        deadline = time.monotonic() + timeout
        while True:
            try:
                r, w = await asyncio.open_unix_connection(path)
                return cls(r, w)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.02)

    async def _reader(self) -> None:
        try:
            while True:
                (n,) = _LEN.unpack(await self._r.readexactly(4))
                msg = json.loads(await self._r.readexactly(n))
                if msg.get("type") == "event":
                    self.events.put_nowait(msg)
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut is not None and not fut.done():
                    if msg.get("ok"):
                        fut.set_result(msg.get("result"))
                    else:
                        fut.set_exception(DatapathError(msg.get("error", "unknown error")))
        except (asyncio.IncompleteReadError, ConnectionError) as e:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"data path channel closed: {e}"))

    async def call(self, op: str, **kw: Any) -> Any:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._w.write(_encode({"id": rid, **_request(op, **kw)}))
        await self._w.drain()
        return await fut

    async def replace(self, sas: Sequence[SaConfig], spd: Sequence[SpdEntry]) -> Any:
        m = replace_msg(sas, spd)
        return await self.call("replace", sas=m["sas"], spd=m["spd"])

    async def close(self) -> None:
        self._task.cancel()
        self._w.close()


def spawn(control: str, *, tun: str = "i2u0", netns: str | None = None,
          extra: Sequence[str] = (), log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start a data path process, inside network namespace `netns` if given."""
    cmd = [sys.executable, "-m", "nsf_agent.userspace.datapath", "--control", control,
           "--tun", tun, *extra]
    preexec = None
    if netns is not None:
        def preexec() -> None:
            from pyroute2 import netns as pnetns
            pnetns.setns(netns)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        return subprocess.Popen(cmd, preexec_fn=preexec, stdout=out, stderr=out, env=env)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]
