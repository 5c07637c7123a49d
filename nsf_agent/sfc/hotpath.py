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
import struct
from typing import TYPE_CHECKING

from nsf_agent.userspace import mmsg
from nsf_agent.userspace.mmsg import MSG_DONTWAIT, _Iovec, _lib, _Mmsghdr

from . import nsh

if TYPE_CHECKING:
    from .engine import Engine, _Entry

GRE_NSH = nsh.GRE_NSH
_HDR = struct.Struct("!IBBBBI")   # GRE word (flags/version 0 + 0x894F), NSH base, SPI|SI


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
        # the same arrays as flat integer views: per-packet field access without ctypes
        # objects (struct mmsghdr is 64 bytes: msg_len at 56; struct iovec is 16 bytes)
        assert ctypes.sizeof(_Mmsghdr) == 64 and ctypes.sizeof(_Iovec) == 16
        self._rlen = memoryview(self._rmsg).cast("B").cast("I")      # msg_len: [i*16 + 14]
        self._siov_q = memoryview(self._siov).cast("B").cast("Q")    # base, len: [2i], [2i+1]
        self._smsg_q = memoryview(self._smsg).cast("B").cast("Q")    # msg_name: [8i]
        self._smsg_i = memoryview(self._smsg).cast("B").cast("I")    # msg_namelen: [16i + 2]
        # (spi << 8 | si) → (entry, sockaddr buffer address, its length)
        self.hot: dict[int, tuple[_Entry, int, int]] = {}
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
            hot[(key[0] << 8) | key[1]] = (e, ctypes.addressof(nm), len(nm))
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
        views, addrs, rlen = self._views, self._addrs, self._rlen
        siq, smq, smi = self._siov_q, self._smsg_q, self._smsg_i
        out = 0
        slow = []
        unpack = _HDR.unpack_from
        for i in range(got):
            ln = rlen[i * 16 + 14]
            v = views[i]
            o = (v[0] & 15) * 4
            if ln >= o + 28:
                # GRE flags+version, protocol | NSH b0, b1, MD type, next protocol | SPI+SI
                gre, b0, b1, md, _np, spsi = unpack(v, o)
                ent = hot.get(spsi)
                ttl = ((b0 & 0xF) << 2) | (b1 >> 6)
                if (gre == 0x894F and ent is not None and ttl > 1 and not b0 & 0xC0
                        and b1 & 0x3F == 6 and md & 0xF == 1):
                    ttl -= 1
                    v[o + 4] = (b0 & 0xF0) | (ttl >> 2)
                    v[o + 5] = ((ttl & 3) << 6) | 6
                    e = ent[0]
                    e.packets += 1
                    e.bytes += ln - o - 28
                    e.hop_packets[0] += 1
                    siq[2 * out] = addrs[i] + o
                    siq[2 * out + 1] = ln - o
                    smq[8 * out] = ent[1]
                    smi[16 * out + 2] = ent[2]
                    out += 1
                    continue
            slow.append((i, ln, o))
        engine.counters["received"] += got
        if out:
            engine.counters["forwarded"] += out
            r = self._send(self.fd, self._smsg, out, 0)
            sent = max(r, 0)
            if sent < out:
                engine.drops["send-error"] += out - sent
        for i, ln, o in slow:
            engine.counters["received"] -= 1  # receive_gre counts it
            engine.receive_gre(bytearray(views[i][:ln]), o)
        return int(got)


__all__ = ["HotLoop", "mmsg"]
