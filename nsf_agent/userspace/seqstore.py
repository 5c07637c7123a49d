"""Persistent sequence-number high-water marks: no (SPI, key) sends a sequence number twice,
even across a crash of the data path (kill -9, power loss).

RFC 4303 3.3.3 forbids sending a sequence number twice with one SA, and AES-GCM (RFC 4106)
uses the sequence number as its nonce: a repeat under the same key breaks confidentiality
and integrity. A data path that loses its counters and re-installs the same SAs from the
saved configuration would start at 1 again. So, as products do for GCM invocation counters,
sequence numbers are *reserved in blocks*: before the first number of a block is used, the
block's end is written to this file and fsync'd. After a crash the data path resumes above
the last mark written; at most one block is skipped, which the peer's anti-replay window
accepts (a forward jump).

File layout: a 64-byte header, then 64-byte slots, one per SA (live, or retired recently).
A slot holds two 32-byte copies (fingerprint 16, mark 8, CRC-32 4, flags 4), written
alternately: a write torn by power loss damages one copy, the other still holds the previous
mark, and a mark is never relied on before its write was synced. The fingerprint is a hash
of SPI, addresses, algorithms and keys (the keys themselves never reach the file): an SA
with other keys under the same SPI is another SA.

Records stay after their SA is removed (a rollback may install the very same SA again); the
slot of a removed SA is reused only after `retire_keep` seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass

from .model import Direction, SaConfig

log = logging.getLogger(__name__)

MAGIC = b"I2NSFSEQ\x00\x02"
HEADER = 64
SLOT = 64
_COPY = struct.Struct("!16sQII")  # fingerprint, mark, crc, first installed (Unix time)
MIN_BLOCK = 1 << 12
MAX_BLOCK = 1 << 22


def fingerprint(cfg: SaConfig) -> bytes:
    """What identifies an SA's (SPI, key) for sequence numbering; reveals nothing of keys
    (SHA-256 of high-entropy material, truncated)."""
    h = hashlib.sha256(b"i2nsf-sdn seq\x00")
    h.update(cfg.spi.to_bytes(4, "big"))
    h.update(cfg.src.packed)
    h.update(cfg.dst.packed)
    h.update(cfg.direction.value.encode())
    h.update(bytes((int(cfg.enc_alg), int(cfg.integ_alg), int(cfg.esn))))
    h.update(len(cfg.enc_key).to_bytes(2, "big") + cfg.enc_key)
    h.update(len(cfg.integ_key).to_bytes(2, "big") + cfg.integ_key)
    return h.digest()[:16]


def _pack(fp: bytes, mark: int, installed: int) -> bytes:
    body = fp + mark.to_bytes(8, "big")
    return _COPY.pack(fp, mark, zlib.crc32(body + installed.to_bytes(4, "big")), installed)


def _unpack(raw: bytes) -> tuple[bytes, int, int] | None:
    fp, mark, crc, installed = _COPY.unpack(raw)
    if fp == bytes(16) or zlib.crc32(fp + mark.to_bytes(8, "big")
                                     + installed.to_bytes(4, "big")) != crc:
        return None
    return fp, mark, installed


@dataclass(slots=True)
class Record:
    slot: int
    mark: int  # every sequence number up to `mark` may have been used
    copy: int  # the copy written last (0/1); the next write goes to the other
    installed: int  # when the SA was first installed (Unix time): lifetimes count from it
    live: bool = False
    retired_at: float = 0.0
    block: int = MIN_BLOCK
    last_reserve: float = 0.0


class SeqStore:
    """The marks of one data path (one file; one process uses it at a time)."""

    def __init__(self, path: str, retire_keep: float = 3600.0) -> None:
        self.path = path
        self.retire_keep = retire_keep
        self.records: dict[bytes, Record] = {}
        self._free: list[int] = []
        self._dirty = False
        self.existed = os.path.exists(path)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(self.fd, 0o600)
        self._load()

    def _load(self) -> None:
        size = os.fstat(self.fd).st_size
        head = os.pread(self.fd, HEADER, 0)
        if size < HEADER or not head.startswith(MAGIC):
            if size:
                # An unreadable store means no mark is known: refuse to guess (the caller
                # treats every previously used outbound SA as unknown; see `trusted`).
                log.error("sequence store %s unreadable: ignored", self.path)
                self.existed = False
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, MAGIC.ljust(HEADER, b"\0"), 0)
            self._sync_all()
            self.nslots = 0
            return
        self.nslots = -(-(size - HEADER) // SLOT)  # (a last slot may hold copy 0 only)
        data = os.pread(self.fd, self.nslots * SLOT, HEADER).ljust(self.nslots * SLOT, b"\0")
        now = time.monotonic()
        for i in range(self.nslots):
            raw = data[i * SLOT:(i + 1) * SLOT]
            best: tuple[int, bytes, int, int] | None = None  # (mark, fp, installed, copy)
            for c in (0, 1):
                got = _unpack(raw[c * 32:(c + 1) * 32])
                if got is not None and (best is None or got[1] > best[0]):
                    best = (got[1], got[0], got[2], c)
            if best is None:
                self._free.append(i)
                continue
            mark, fp, installed, copy = best
            old = self.records.get(fp)
            if old is not None and old.mark >= mark:
                self._free.append(i)
                continue
            # retired until the data path installs the SA again (keeps its slot meanwhile)
            self.records[fp] = Record(i, mark, copy, installed, retired_at=now)

    def _sync_all(self) -> None:
        os.fsync(self.fd)
        dfd = os.open(os.path.dirname(os.path.abspath(self.path)), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def close(self) -> None:
        os.close(self.fd)

    # -- slots --------------------------------------------------------------------------

    def _alloc(self) -> int:
        if self._free:
            return self._free.pop()
        now = time.monotonic()
        for fp, r in list(self.records.items()):
            if not r.live and now - r.retired_at > self.retire_keep:
                del self.records[fp]
                return r.slot
        self.nslots += 1
        return self.nslots - 1

    def _write(self, fp: bytes, r: Record) -> None:
        r.copy ^= 1
        os.pwrite(self.fd, _pack(fp, r.mark, r.installed),
                  HEADER + r.slot * SLOT + r.copy * 32)
        self._dirty = True

    # -- SAs ----------------------------------------------------------------------------

    def installed_at(self, cfg: SaConfig) -> int | None:
        """When this SA was first installed (Unix time), if it ever was."""
        r = self.records.get(fingerprint(cfg))
        return None if r is None else r.installed

    def install(self, cfg: SaConfig) -> tuple[int | None, int]:
        """Register an SA being installed. Returns (the mark it had before — None if this SA
        was never installed — , the sequence number limit it may send up to now). Nothing
        may be sent before `sync()` returned."""
        fp = fingerprint(cfg)
        out = cfg.direction is Direction.OUTBOUND
        r = self.records.get(fp)
        before = None if r is None else r.mark
        if r is None:
            r = self.records[fp] = Record(self._alloc(), 0, 1, int(time.time()))
        r.live = True
        if out:
            # pre-reserve the first block so that the first packet does not wait for a disk
            r.mark += r.block
            r.last_reserve = time.monotonic()
        self._write(fp, r)
        return before, r.mark

    def retire(self, cfg: SaConfig) -> None:
        r = self.records.get(fingerprint(cfg))
        if r is not None:
            r.live = False
            r.retired_at = time.monotonic()

    def reserve(self, cfg: SaConfig, seq: int, fp: bytes | None = None) -> int:
        """Sequence number `seq` is about to be sent: move the mark past it (written and
        synced before this returns) and return the new limit. The block grows while
        reservations come faster than one a second (fewer syncs at high packet rates)."""
        fp = fp or fingerprint(cfg)
        r = self.records[fp]
        now = time.monotonic()
        if now - r.last_reserve < 1.0:
            r.block = min(r.block * 2, MAX_BLOCK)
        elif now - r.last_reserve > 10.0:
            r.block = max(r.block // 2, MIN_BLOCK)
        r.last_reserve = now
        r.mark = max(r.mark, seq) + r.block
        self._write(fp, r)
        self.sync()
        return r.mark

    def sync(self) -> None:
        if self._dirty:
            os.fdatasync(self.fd)
            self._dirty = False
