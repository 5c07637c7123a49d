"""The userspace data path's sequence-number marks (issue #13.1): resume above the mark after
a restart, survive a torn write, never reveal keys, and a data path without marks refuses to
send rather than guess."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from nsf_agent.userspace.esp import SaState, SequenceStoreError
from nsf_agent.userspace.model import Direction, SaConfig
from nsf_agent.userspace.seqstore import HEADER, MIN_BLOCK, SLOT, SeqStore


def sa(name: str = "o", direction: Direction = Direction.OUTBOUND, key: bytes | None = None,
       spi: int = 0x1001) -> SaConfig:
    return SaConfig(name=name, spi=spi, direction=direction,
                    src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                    enc_key=key if key is not None else os.urandom(20))


def attach(store: SeqStore, cfg: SaConfig) -> tuple[SaState, int | None]:
    st = SaState(cfg)
    before, st.seq_limit = store.install(cfg)
    st.reserve = lambda seq: store.reserve(cfg, seq)
    if before is not None:
        st.seq = before
    store.sync()
    return st, before


def test_restart_resumes_above_every_number_used(tmp_path: Path) -> None:
    path = str(tmp_path / "seq")
    out, inb = sa(), sa("i", Direction.INBOUND, spi=0x2002)
    store = SeqStore(path)
    st, before = attach(store, out)
    assert before is None
    _, ib = attach(store, inb)
    assert ib is None
    used = [st.seal(b"x" * 20, 4) for _ in range(3 * MIN_BLOCK + 5)]  # crosses blocks
    last = int.from_bytes(used[-1][4:8], "big")
    # "kill -9": no close, nothing flushed beyond what reserve() synced
    store2 = SeqStore(path)
    st2, before2 = attach(store2, out)
    assert before2 is not None and before2 >= last
    first = int.from_bytes(st2.seal(b"y", 4)[4:8], "big")
    assert first > last
    _, ib2 = attach(store2, inb)
    assert ib2 == 0  # known inbound SA: its replay window is what was lost
    # another key under the same SPI is another SA: numbering starts at 1
    _, other = attach(store2, sa(key=os.urandom(20)))
    assert other is None


def test_torn_write_keeps_the_previous_mark(tmp_path: Path) -> None:
    path = str(tmp_path / "seq")
    cfg = sa()
    store = SeqStore(path)
    st, _ = attach(store, cfg)
    for _ in range(MIN_BLOCK + 1):
        st.seal(b"x", 4)
    mark = store.records[next(iter(store.records))].mark
    copy = store.records[next(iter(store.records))].copy
    # the next reservation's write is torn: garbage in the copy it writes
    with open(path, "r+b") as f:
        f.seek(HEADER + (copy ^ 1) * 32)
        f.write(os.urandom(32))
    _, before = attach(SeqStore(path), cfg)
    assert before == mark  # the intact copy: every number used is below it
    assert before >= st.seq


def test_file_never_holds_key_material(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    key = bytes(range(20))
    store = SeqStore(str(path))
    attach(store, sa(key=key))
    data = path.read_bytes()
    assert key[:8] not in data and key[-8:] not in data
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert len(data) <= HEADER + SLOT


def test_retired_sa_installed_again_resumes(tmp_path: Path) -> None:
    """A rollback re-installs an SA it had removed: it must not start again at 1."""
    store = SeqStore(str(tmp_path / "seq"))
    cfg = sa()
    st, _ = attach(store, cfg)
    for _ in range(10):
        st.seal(b"x", 4)
    store.retire(cfg)
    st2, before = attach(store, cfg)
    assert before is not None and before >= 10
    assert int.from_bytes(st2.seal(b"x", 4)[4:8], "big") > 10


def test_unreadable_store_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "seq"
    path.write_bytes(b"garbage" * 20)
    store = SeqStore(str(path))
    assert store.existed is False  # the agent then suspends outbound SAs it restores


def test_no_reservation_no_packet() -> None:
    st = SaState(sa())
    st.seq_limit = 0  # a data path with a store that failed: nothing may be sent
    with pytest.raises(SequenceStoreError):
        st.seal(b"x", 4)

    def broken(seq: int) -> int:
        raise OSError(28, "No space left on device")

    st.reserve = broken
    with pytest.raises(SequenceStoreError):
        st.seal(b"x", 4)
    assert st.seq == 0
