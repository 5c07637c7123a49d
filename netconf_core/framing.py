"""RFC 6242 message framing: 1.0 end-of-message (`]]>]]>`) and 1.1 chunked.

The framer is incremental (SSH delivers arbitrary pieces) and yields one message at a time so
that the session can switch from 1.0 to 1.1 framing right after the hello exchange, even when
the client's hello and its first chunked `<rpc>` arrive in the same read (ncclient does that).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

EOM = b"]]>]]>"
END_OF_CHUNKS = b"\n##\n"
MAX_CHUNK = 4294967295
_CHUNK_HEADER = re.compile(rb"\n#([1-9][0-9]{0,9})\n")
_HEADER_MAX = 13  # "\n#" + 10 digits + "\n"
# Chunks we send are at most this big. RFC 6242 leaves the size to the sender; a big reply in
# one chunk makes ncclient (which reads 4 KiB at a time and re-decodes its whole buffer until
# a chunk is complete) spend time quadratic in the reply's size: 10,000 SPD entries (3.5 MB)
# took it 120 ms of CPU in one chunk, 60 ms in 16 KiB chunks. OpenDaylight sends 8 KiB.
OUT_CHUNK = 16 * 1024

DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024


class FramingError(Exception):
    """The peer broke RFC 6242 framing; the session cannot resynchronise and must close."""


@dataclass(frozen=True)
class TooBig:
    """Placeholder for a message that exceeded the size limit and was discarded whole."""

    size: int


class Framer:
    """Split a byte stream into NETCONF messages and frame outgoing ones."""

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_message = max_message
        self.chunked = False
        self._buf = bytearray()
        self._pos = 0  # 1.0: where to resume searching for EOM
        # 1.1 state: parts of the message being assembled and their total size.
        self._parts: list[bytes] = []
        self._size = 0
        self._discarding = False
        self._skip = 0  # bytes of a discarded chunk still to drop
        self._left = 0  # bytes of the current (kept) chunk still to come
        # 1.1: called with each piece of message content as it arrives, so that the
        # session can parse a big message while the rest of it is still on the way
        self.sink: Callable[[bytes], None] | None = None

    def use_chunked(self) -> None:
        """Switch to 1.1 framing (after both hellos advertised base:1.1)."""
        self.chunked = True
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def received(self) -> bytes:
        """The content of the 1.1 message being assembled, as far as it has arrived."""
        return b"".join(self._parts)

    def pending(self) -> int:
        return len(self._buf)

    def next_message(self) -> bytes | TooBig | None:
        """The next complete message, a TooBig marker, or None if more data is needed."""
        if self.chunked:
            return self._next_chunked()
        return self._next_eom()

    # -- 1.0 --------------------------------------------------------------------------------

    def _next_eom(self) -> bytes | TooBig | None:
        buf = self._buf
        idx = buf.find(EOM, self._pos)
        if idx < 0:
            if self._discarding:
                self._size += max(0, len(buf) - len(EOM))
                del buf[: max(0, len(buf) - len(EOM))]
                self._pos = 0
                return None
            if len(buf) > self.max_message:
                # Keep only a tail that may hold the start of the delimiter.
                self._discarding = True
                self._size = len(buf) - len(EOM)
                del buf[: len(buf) - len(EOM)]
                self._pos = 0
                return None
            self._pos = max(0, len(buf) - len(EOM) + 1)
            return None
        msg = bytes(buf[:idx])
        del buf[: idx + len(EOM)]
        self._pos = 0
        if self._discarding:
            size = self._size + len(msg)
            self._discarding = False
            self._size = 0
            return TooBig(size)
        if len(msg) > self.max_message:
            return TooBig(len(msg))
        return msg

    # -- 1.1 --------------------------------------------------------------------------------

    def _next_chunked(self) -> bytes | TooBig | None:
        buf = self._buf
        while True:
            if self._skip:
                n = min(self._skip, len(buf))
                del buf[:n]
                self._skip -= n
                if self._skip:
                    return None
            if self._left:
                n = min(self._left, len(buf))
                if not n:
                    return None
                piece = bytes(buf[:n])
                del buf[:n]
                self._parts.append(piece)
                self._left -= n
                if self.sink is not None:
                    self.sink(piece)
                if self._left:
                    return None
                continue
            if len(buf) < 4:
                return None
            if buf[0:4] == END_OF_CHUNKS:
                del buf[:4]
                if not self._parts and not self._discarding:
                    raise FramingError("end-of-chunks marker without any chunk")
                return self._finish()
            if buf[0:2] != b"\n#":
                raise FramingError(f"bad chunk header start {bytes(buf[:8])!r}")
            m = _CHUNK_HEADER.match(buf)
            if m is None:
                if buf.find(b"\n", 2) < 0 and len(buf) < _HEADER_MAX:
                    return None  # header not complete yet
                raise FramingError(f"bad chunk header {bytes(buf[:_HEADER_MAX])!r}")
            size = int(m.group(1))
            if size > MAX_CHUNK:
                raise FramingError(f"chunk size {size} exceeds {MAX_CHUNK}")
            start = m.end()
            if self._discarding or self._size + size > self.max_message:
                # Too big: drop this and every further chunk of the message as it arrives,
                # so memory stays bounded, and report the message at its end.
                self._discarding = True
                self._parts.clear()
                self._size += size
                del buf[:start]
                self._skip = size
                continue
            del buf[:start]
            self._size += size
            self._left = size

    def _finish(self) -> bytes | TooBig:
        size = self._size
        parts = self._parts
        self._parts = []
        self._size = 0
        if self._discarding:
            self._discarding = False
            return TooBig(size)
        return b"".join(parts)

    # -- output -----------------------------------------------------------------------------

    def frame(self, msg: bytes) -> bytes:
        if not self.chunked:
            return msg + EOM
        if len(msg) <= OUT_CHUNK:
            return b"\n#%d\n%s\n##\n" % (len(msg), msg)
        view = memoryview(msg)
        parts: list[bytes | memoryview] = []
        for start in range(0, len(msg), OUT_CHUNK):
            piece = view[start:start + OUT_CHUNK]
            parts += (b"\n#%d\n" % len(piece), piece)
        parts.append(END_OF_CHUNKS)
        return b"".join(parts)
