"""The data path's SAD across restarts (fast, no sockets): SAs installed again resume above
their persisted mark and keep counting their time lifetimes from the first install; one whose
hard lifetime ended while the NSF was down is not installed (#13.4); suspended SAs and SAs
changed in place under the same keys keep their sequence numbers."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from nsf_agent.userspace import seqstore
from nsf_agent.userspace.datapath import Datapath, Options
from nsf_agent.userspace.model import Direction, Lifetime, SaConfig

KEY = os.urandom(20)


def sa(hard: int = 0, soft: int = 0, direction: Direction = Direction.OUTBOUND) -> SaConfig:
    return SaConfig(name="o", spi=0x1001, direction=direction,
                    src=ipaddress.ip_address("192.0.2.1"), dst=ipaddress.ip_address("192.0.2.2"),
                    enc_key=KEY, reqid=1, hard=Lifetime(time=hard), soft=Lifetime(time=soft))


def datapath(tmp_path: Path) -> Datapath:
    dp = Datapath(Options(control=str(tmp_path / "c.sock"), seq_store=str(tmp_path / "seq")))
    events: list[dict] = []
    dp.emit = lambda event, **kw: events.append({"event": event, **kw})  # type: ignore[method-assign]
    dp.events = events  # type: ignore[attr-defined]
    return dp


def test_hard_lifetime_counts_from_the_first_install(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(seqstore.time, "time", lambda: real() - 100)  # installed 100 s ago
    first = datapath(tmp_path)
    assert first.replace([sa(hard=60)], []) == {}
    monkeypatch.setattr(seqstore.time, "time", real)
    # the NSF was down for 100 s: the SA's 60 s hard lifetime is over
    again = datapath(tmp_path)
    assert again.replace([sa(hard=60)], []) == {"o": "hard-expired"}
    assert "o" not in again.by_name
    assert again.stats["hard_expired"] == 1
    ev = next(e for e in again.events if e["event"] == "expire")  # type: ignore[attr-defined]
    assert ev["hard"] is True


def test_remaining_lifetime_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(seqstore.time, "time", lambda: real() - 100)
    datapath(tmp_path).replace([sa(hard=1000)], [])
    monkeypatch.setattr(seqstore.time, "time", real)
    again = datapath(tmp_path)
    assert again.replace([sa(hard=1000)], []) == {"o": "sequence-resumed"}
    age = time.monotonic() - again.by_name["o"].state.added
    assert 99 <= age <= 110


def test_suspended_and_changed_in_place(tmp_path: Path) -> None:
    dp = datapath(tmp_path)
    dp.replace([sa()], [])
    st = dp.by_name["o"].state
    for _ in range(5):
        st.seal(b"x", 4)
    # other lifetimes, same SPI and keys: the same SA goes on (no second sequence number 1)
    dp.replace([sa(soft=100)], [])
    assert dp.by_name["o"].state.seq == 5
    dp.replace([sa(soft=100)], [], frozenset({"o"}))
    assert dp.by_name["o"].suspended


def test_sender_thread_keeps_sequence_order(tmp_path: Path) -> None:
    """Small ESP packets are batched for the sender thread; a big one (sent through another
    socket) must not overtake them: the peer's anti-replay window would drop them."""
    import threading

    from nsf_agent.userspace.datapath import _Sa

    dp = datapath(tmp_path)
    order: list[bytes] = []

    class Batch:
        def send(self, q: list[bytes], a: list) -> int:
            order.extend(q)
            return len(q)

    class Sock:
        def sendmsg(self, bufs: list[bytes], cmsg: object, flags: int, dst: object) -> int:
            order.append(bufs[0])
            return len(bufs[0])

    dp.tx4 = Batch()  # type: ignore[assignment]
    dp.esp4 = Sock()  # type: ignore[assignment]
    dp._txthread = threading.Thread(target=dp._tx_loop, daemon=True)
    dp._txthread.start()
    sa_ = _Sa(sa())
    sent = []
    for i in range(300):
        p = i.to_bytes(4, "big")
        sent.append(p)
        if i % 7 == 3:
            dp._send_big(sa_, p)
        else:
            dp._txq.append(p)
            dp._txa.append(sa_.sockaddr)
            if len(dp._txq) >= 64:
                dp._flush_tx()
    dp._flush_tx()
    dp._stop_tx()
    assert order == sent
    assert dp.snapshot()["global"]["esp_tx"] == 300
