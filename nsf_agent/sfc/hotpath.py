"""The SFF's common case without copies: MD type 1 packets hitting a one-next-hop entry
toward another node are rewritten (TTL - 1) in the receive buffers and sent from them.

recvmmsg fills a ring of buffers; each packet whose GRE header is exactly ours, whose NSH is
version 0 / MD1 / length 6 with TTL > 1 and whose (SPI, SI) has a single remote next hop is
queued as (buffer address + offset, length, sockaddr) for one sendmmsg. Everything else goes
to `Engine.receive_gre` (the reference semantics); the result is the same packet either way
(tests compare both paths), only cheaper. This is the userspace analogue of the tc-BPF fast
path taking over hot entries.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING

from nsf_agent.userspace import mmsg
from nsf_agent.userspace.mmsg import MSG_DONTWAIT, _Iovec, _lib, _Mmsghdr

from . import nsh

if TYPE_CHECKING:
    from .engine import Engine, _Entry

GRE_NSH = nsh.GRE_NSH


class HotLoop:
    def __init__(self, fd: int, n: int = 64, size: int = 65536) -> None:
        lib = _lib()
        assert lib is not None
        self._recv, self._send = lib.recvmmsg, lib.sendmmsg
        self.fd, self.n = fd, n
        self._bufs = [ctypes.create_string_buffer(size) for _ in range(n)]
        self._addrs = [ctypes.addressof(b) for b in self._bufs]
        self._views = [memoryview(b).cast("B") for b in self._bufs]
        self._riov = (_Iovec * n)()
        self._rmsg = (_Mmsghdr * n)()
        for i in range(n):
            self._riov[i].iov_base = self._addrs[i]
            self._riov[i].iov_len = size
            self._rmsg[i].msg_hdr.msg_iov = ctypes.pointer(self._riov[i])
            self._rmsg[i].msg_hdr.msg_iovlen = 1
        self._siov = (_Iovec * n)()
        self._smsg = (_Mmsghdr * n)()
        for i in range(n):
            self._smsg[i].msg_hdr.msg_iov = ctypes.pointer(self._siov[i])
            self._smsg[i].msg_hdr.msg_iovlen = 1
        # (spi, si) → (entry, sockaddr buffer address, its length)
        self.hot: dict[tuple[int, int], tuple[_Entry, int, int]] = {}
        self._names: list[ctypes.Array[ctypes.c_char]] = []

    def load(self, engine: Engine, sockaddr: object) -> None:
        """Recompute the hot entries from the engine's table (after every replace)."""
        hot, names = {}, []
        for key, e in engine.table.items():
            if e.terminate or len(e.hops) != 1:
                continue
            h = e.hops[0]
            if h.locator is None or h.locator in engine.local or ":" in h.locator:
                continue
            nm = sockaddr(h.locator)  # type: ignore[operator]
            names.append(nm)
            hot[key] = (e, ctypes.addressof(nm), len(nm))
        self.hot, self._names = hot, names

    def run(self, engine: Engine) -> int:
        """One recvmmsg batch: hot packets sent straight back out, the rest to the engine.
        Returns how many packets were received."""
        got = self._recv(self.fd, self._rmsg, self.n, MSG_DONTWAIT, None)
        if got <= 0:
            if got < 0 and ctypes.get_errno() not in (11, 4):
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
            return 0
        hot = self.hot
        views, addrs, rmsg = self._views, self._addrs, self._rmsg
        siov, smsg = self._siov, self._smsg
        out = 0
        slow = []
        for i in range(got):
            ln = rmsg[i].msg_len
            v = views[i]
            o = (v[0] & 15) * 4
            if v[o:o + 4] == GRE_NSH and ln >= o + 28:
                b0, b1 = v[o + 4], v[o + 5]
                if not b0 & 0xC0 and b1 & 0x3F == 6 and v[o + 6] & 0xF == 1:
                    ent = hot.get(((v[o + 8] << 16) | (v[o + 9] << 8) | v[o + 10], v[o + 11]))
                    ttl = ((b0 & 0xF) << 2) | (b1 >> 6)
                    if ent is not None and ttl > 1:
                        ttl -= 1
                        v[o + 4] = (b0 & 0xF0) | (ttl >> 2)
                        v[o + 5] = ((ttl & 3) << 6) | 6
                        e = ent[0]
                        e.packets += 1
                        e.bytes += ln - o - 28
                        e.hop_packets[0] += 1
                        siov[out].iov_base = addrs[i] + o
                        siov[out].iov_len = ln - o
                        smsg[out].msg_hdr.msg_name = ent[1]
                        smsg[out].msg_hdr.msg_namelen = ent[2]
                        out += 1
                        continue
            slow.append((i, ln, o))
        engine.counters["received"] += got
        if out:
            engine.counters["forwarded"] += out
            r = self._send(self.fd, smsg, out, 0)
            sent = max(r, 0)
            if sent < out:
                engine.drops["send-error"] += out - sent
        for i, ln, o in slow:
            engine.counters["received"] -= 1  # receive_gre counts it
            engine.receive_gre(bytearray(views[i][:ln]), o)
        return int(got)


__all__ = ["HotLoop", "mmsg"]
