"""One socket write per SSH packet for asyncssh connections.

asyncssh precedes every encrypted packet with an empty SSH_MSG_IGNORE (a traffic-analysis
countermeasure RFC 4253 section 11.2 allows) and writes each to the socket on its own, so
every NETCONF reply cost two `send` syscalls and two wake-ups of the peer: measured as a
tenth of an edit-config round trip on a loaded machine. Here the packets produced by one
`send_packet` call are joined into one write; what goes on the wire is byte for byte the
same. Applied once, at import of the SSH layer (server and controller client).
"""

from __future__ import annotations

import logging
from typing import Any

from asyncssh import connection as _conn

log = logging.getLogger(__name__)

_BATCH = "_i2nsf_send_batch"


def install() -> bool:
    """Patch asyncssh's SSHConnection (idempotent). False if this asyncssh version lacks
    the internals it relies on (then nothing changes)."""
    cls = _conn.SSHConnection
    if getattr(cls, "_i2nsf_coalesced", False):
        return True
    orig_send_packet = getattr(cls, "send_packet", None)
    orig_send = getattr(cls, "_send", None)
    if orig_send_packet is None or orig_send is None:
        log.warning("asyncssh %s: cannot coalesce packet writes", getattr(_conn, "__version__",
                                                                          "?"))
        return False

    def send_packet(self: Any, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if getattr(self, _BATCH, None) is not None:  # nested (the inserted ignore packet)
            orig_send_packet(self, pkttype, *args, **kwargs)
            return
        batch: list[bytes] = []
        setattr(self, _BATCH, batch)
        try:
            orig_send_packet(self, pkttype, *args, **kwargs)
        finally:
            setattr(self, _BATCH, None)
            if batch:
                orig_send(self, batch[0] if len(batch) == 1 else b"".join(batch))

    def _send(self: Any, data: bytes) -> None:
        batch = getattr(self, _BATCH, None)
        if batch is not None:
            batch.append(data)
        else:
            orig_send(self, data)

    cls.send_packet = send_packet
    cls._send = _send
    cls._i2nsf_coalesced = True
    return True
