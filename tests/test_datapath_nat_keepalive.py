"""RFC 3948 NAT-keepalives of the userspace data path: without them an NSF behind NAT is
unreachable until it sends ESP itself (the NAT has no mapping for the peer's packets)."""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Any

from test_esp_helpers import sa_pair

from nsf_agent.userspace.datapath import Datapath, Options
from nsf_agent.userspace.model import UdpEncap


class FakeRaw:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def sendto(self, data: bytes, addr: Any) -> int:
        self.sent.append((data, addr))
        return len(data)


def datapath(interval: float = 20.0) -> tuple[Datapath, FakeRaw]:
    dp = Datapath(Options(control="/nonexistent", big_esp=False, nat_keepalive=interval))
    raw = FakeRaw()
    dp.raw4 = raw  # type: ignore[assignment]
    dp._udp_ports = lambda: None  # type: ignore[method-assign]  # no listening sockets here
    return dp, raw


def test_outbound_esp_in_udp_sa_sends_a_keepalive_at_once_then_periodically() -> None:
    dp, raw = datapath(20.0)
    out, inb = sa_pair(encap=UdpEncap(4500, 14500))
    dp._install_sa(inb)
    assert raw.sent == []  # inbound SAs open nothing
    dp._install_sa(out)
    assert len(raw.sent) == 1
    pkt, addr = raw.sent[0]
    assert addr == (str(out.dst), 0)
    assert pkt[9] == 17 and pkt[12:16] == out.src.packed and pkt[16:20] == out.dst.packed
    assert struct.unpack("!HHH", pkt[20:26]) == (4500, 14500, 9)
    assert pkt[28:] == b"\xff"  # the one-byte NAT-keepalive, not ESP
    assert dp.stats["nat_keepalives"] == 1
    # a rekey's new outbound SA on the same path sends nothing extra
    dp._install_sa(replace(out, name="out-2", spi=0x2000))
    assert len(raw.sent) == 1
    due = next(iter(dp._keepalive_due.values()))
    dp._keepalives(due - 1)
    assert len(raw.sent) == 1
    dp._keepalives(due + 0.1)
    assert len(raw.sent) == 2
    # the path is forgotten when its last outbound SA goes
    dp.remove_sa(out.name)
    dp.remove_sa("out-2")
    dp._keepalives(due + 100)
    assert len(raw.sent) == 2 and dp._keepalive_due == {}


def test_no_keepalive_for_plain_esp_or_when_disabled() -> None:
    dp, raw = datapath(20.0)
    out, _ = sa_pair()
    dp._install_sa(out)
    dp._keepalives(1e9)
    assert raw.sent == []
    dp, raw = datapath(0.0)
    out, _ = sa_pair(encap=UdpEncap(4500, 4500))
    dp._install_sa(out)
    dp._keepalives(1e9)
    assert raw.sent == []
