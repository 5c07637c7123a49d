"""One socket write per SSH packet for asyncssh connections.

asyncssh precedes every encrypted packet with an empty SSH_MSG_IGNORE and writes each to the
socket on its own, so every NETCONF reply cost two `send` syscalls, two wake-ups of the peer
and two packets for it to decrypt and authenticate: a tenth of an edit-config round trip.
The empty ignore packet is the countermeasure to the CBC-mode plaintext-recovery attacks on
SSH (RFC 4251 section 9.3.1 discusses it; RFC 4253 section 11.2 says no implementation is
required to send them); OpenSSH does not send it with CTR, GCM or ChaCha20-Poly1305. So
here it is kept only on connections that negotiated a CBC cipher, and the packets one
`send_packet` call produces are joined into one write. Applied once, at import of the SSH
layer (server and controller client).
"""

from __future__ import annotations

import logging
from typing import Any

from asyncssh import connection as _conn
from asyncssh.constants import MSG_IGNORE

log = logging.getLogger(__name__)

_BATCH = "_i2nsf_send_batch"
_EMPTY_STRING = b"\x00\x00\x00\x00"


def _cbc(conn: Any) -> bool:
    algs = (getattr(conn, "_enc_alg_cs", b""), getattr(conn, "_enc_alg_sc", b""))
    return any(b"cbc" in a for a in algs)


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
        if getattr(self, _BATCH, None) is not None:  # nested: the inserted ignore packet
            if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,) and not _cbc(self):
                return
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
