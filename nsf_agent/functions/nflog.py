"""An NFLOG (nfnetlink_log) listener: the packets nftables `log group N` statements copy to
userspace, with the rule's prefix. It is how the nftables functions report what they drop
with the flow, without holding the packets (the kernel drops them whatever happens here).
Plain netlink on a raw socket (pyroute2 has no nfnetlink_log module)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_TIMEOUT, NFULA_CFG_QTHRESH = 1, 2, 3, 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2


def _attr(kind: int, data: bytes) -> bytes:
    ln = 4 + len(data)
    return struct.pack("=HH", ln, kind) + data + b"\0" * ((4 - ln % 4) % 4)


class NflogListener:
    """Bound to one NFLOG group in the caller's network namespace."""

    def __init__(self, group: int, copy_range: int = 256) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((0, 0))
        self._seq = 0
        self._config(_attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND) + b"\0" * 3))
        self._config(_attr(NFULA_CFG_MODE, struct.pack("!IBB", copy_range,
                                                       NFULNL_COPY_PACKET, 0)))
        self._config(_attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1))
                     + _attr(NFULA_CFG_TIMEOUT, struct.pack("!I", 1)))
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def _config(self, attrs: bytes) -> None:
        self._seq += 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group)) + attrs
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG,
                          NLM_F_REQUEST | NLM_F_ACK, self._seq, 0)
        self.sock.send(hdr + body)
        reply = self.sock.recv(65536)
        _ln, typ = struct.unpack_from("=IH", reply, 0)
        if typ == NLMSG_ERROR:
            err = struct.unpack_from("=i", reply, 16)[0]
            if err:
                raise OSError(-err, f"NFLOG config of group {self.group}: {os.strerror(-err)}")

    def read(self) -> Iterator[tuple[str, bytes]]:
        """(prefix, packet) for every logged packet waiting now."""
        while True:
            try:
                data = self.sock.recv(1 << 18)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ENOBUFS: the kernel dropped copies; counters still count
                return
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    break
                if typ == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    yield _parse_packet(data[off + 20:off + ln])
                off += (ln + 3) & ~3

    def close(self) -> None:
        self.sock.close()


def _parse_packet(attrs: bytes) -> tuple[str, bytes]:
    prefix, payload = "", b""
    off = 0
    while off + 4 <= len(attrs):
        ln, kind = struct.unpack_from("=HH", attrs, off)
        if ln < 4:
            break
        kind &= 0x3FFF
        val = attrs[off + 4:off + ln]
        if kind == NFULA_PREFIX:
            prefix = val.rstrip(b"\0").decode("ascii", "replace")
        elif kind == NFULA_PAYLOAD:
            payload = val
        off += (ln + 3) & ~3
    return prefix, payload
