"""Acknowledge every TCP read at once on the server's SSH connections (TCP_QUICKACK).

Clients that leave Nagle's algorithm on (paramiko, hence ncclient and netconf-console2) hold
back a small write until the previous one is acknowledged. At three points of a session the
client writes twice before the server has anything to answer — KEXINIT then the key
exchange, NEWKEYS then the auth request, its `<hello>` then its first `<rpc>` — and Linux
delays the server's bare ACK by 40 ms, so each costs 40 ms: 130 ms of ncclient's connect and
close, 8 ms without them. Linux leaves quick-ACK mode on its own, so it is set again after
every read (one setsockopt: about a microsecond; replies still carry the ACK when they are
ready at once). Applied once, at import of the SSH layer, to server connections only.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

from asyncssh import connection as _conn

log = logging.getLogger(__name__)

_SOCK = "_i2nsf_quickack_sock"


def install() -> bool:
    """Patch asyncssh's SSHServerConnection (idempotent). False where TCP_QUICKACK or the
    asyncssh internals it relies on are missing (then nothing changes)."""
    cls = _conn.SSHServerConnection
    if getattr(cls, "_i2nsf_quickack", False):
        return True
    quickack = getattr(socket, "TCP_QUICKACK", None)
    orig = getattr(cls, "data_received", None)
    if quickack is None or orig is None:
        log.info("TCP_QUICKACK not available: small client writes may wait for delayed ACKs")
        return False

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        orig(self, data, datatype)
        sock = getattr(self, _SOCK, None)
        if sock is None:
            transport = getattr(self, "_transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
                return
            setattr(self, _SOCK, sock)
        with contextlib.suppress(OSError):  # the connection is closing
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    cls.data_received = data_received
    cls._i2nsf_quickack = True
    return True
