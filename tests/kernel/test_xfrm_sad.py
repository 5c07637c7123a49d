"""SAD through nsf_agent.xfrm on a kernel with ESP (the test VM of `make test-kernel`).

Every SA we install is read back through our GETSA/dump and through iproute2's
decoder (`ip -s -s xfrm state`), field by field including keys; events (soft expiry,
ACQUIRE) are awaited with a deadline on the multicast listener.
"""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from nsf_agent.xfrm import (
    AcquireEvent,
    AeadAlgorithm,
    Algorithm,
    Algorithms,
    AuthAlgorithm,
    Encap,
    ExpireEvent,
    Lifetime,
    Mark,
    Mode,
    Policy,
    Proto,
    Selector,
    State,
    Template,
    Xfrm,
    XfrmError,
    XfrmListener,
)
from nsf_agent.xfrm.iptext import INF, ip_xfrm, parse_states

from .conftest import sh

GCM_KEY = bytes(range(1, 21))  # AES-128 key + 4-byte salt
AES_KEY = bytes(range(0x10, 0x20))
SHA_KEY = bytes(range(0x40, 0x60))


def sample_states() -> list[State]:
    return [
        State("203.0.113.1", "203.0.113.2", 0x1001, mode=Mode.TUNNEL, reqid=1,
              algorithms=Algorithms(aead=AeadAlgorithm("rfc4106(gcm(aes))", GCM_KEY, 128)),
              replay_window=32,
              lifetime=Lifetime(soft_bytes=10**6, hard_bytes=2 * 10**6, soft_packets=1000,
                                hard_packets=2000, soft_add_seconds=3000,
                                hard_add_seconds=3600, soft_use_seconds=100,
                                hard_use_seconds=200),
              mark=Mark(5, 0xFF), if_id=9),
        State("2001:db8:ff::1", "2001:db8:ff::2", 0x1002, mode="transport", reqid=2,
              algorithms=Algorithms(crypt=Algorithm("cbc(aes)", AES_KEY),
                                    auth=AuthAlgorithm("hmac(sha256)", SHA_KEY, 128)),
              selector=Selector("2001:db8:ff::1", "2001:db8:ff::2", proto=6, dport=443),
              replay_window=64),
        State("203.0.113.2", "203.0.113.1", 0x1003, mode="tunnel", reqid=3,
              algorithms=Algorithms(crypt=Algorithm("cbc(aes)", AES_KEY),
                                    auth=AuthAlgorithm("hmac(sha256)", SHA_KEY, 128)),
              esn=True, replay_window=128),
        State("203.0.113.1", "203.0.113.9", 0x1004, mode="tunnel", reqid=4,
              algorithms=Algorithms(aead=AeadAlgorithm("rfc4106(gcm(aes))", GCM_KEY, 128)),
              encap=Encap(sport=4500, dport=4500)),
    ]


def _lifetime_dict(lt: Lifetime) -> dict[str, int]:
    return {"soft_bytes": lt.soft_bytes, "hard_bytes": lt.hard_bytes,
            "soft_packets": lt.soft_packets, "hard_packets": lt.hard_packets,
            "soft_add_seconds": lt.soft_add_seconds, "hard_add_seconds": lt.hard_add_seconds,
            "soft_use_seconds": lt.soft_use_seconds, "hard_use_seconds": lt.hard_use_seconds}


def assert_state_matches_ip(s: State, e: dict) -> None:
    assert (e["src"], e["dst"]) == (s.src, s.dst)
    assert e["proto"] == "esp"
    assert e["spi"] == s.spi
    assert e["reqid"] == s.reqid
    assert e["mode"] == s.mode.name.lower()
    assert e["lifetime"] == _lifetime_dict(s.lifetime)
    a = s.algorithms
    if a.aead:
        assert e["algos"]["aead"] == {"name": a.aead.name, "key": a.aead.key,
                                      "key_bits": len(a.aead.key) * 8, "len": a.aead.icv_len}
    if a.crypt:
        assert e["algos"]["enc"] == {"name": a.crypt.name, "key": a.crypt.key,
                                     "key_bits": len(a.crypt.key) * 8}
    if a.auth:
        assert e["algos"]["auth-trunc"] == {"name": a.auth.name, "key": a.auth.key,
                                            "key_bits": len(a.auth.key) * 8,
                                            "len": a.auth.trunc_len}
    n_algos = sum(x is not None for x in (a.aead, a.crypt, a.auth))
    assert len(e["algos"]) == n_algos
    assert e.get("mark") == ((s.mark.value, s.mark.mask) if s.mark else None)
    assert e.get("if_id") == s.if_id
    if s.esn or s.replay_window > 32:
        assert ("esn" in e["flags"]) is s.esn
        assert e["esn"]["replay_window"] == s.replay_window
        assert e["esn"]["bmp_len"] == (s.replay_window + 31) // 32
        assert e["replay-window"] == 0
    else:
        assert e["replay-window"] == s.replay_window
    if s.encap:
        assert e["encap"]["type"] == "espinudp"
        assert (e["encap"]["sport"], e["encap"]["dport"]) == (s.encap.sport, s.encap.dport)
    else:
        assert "encap" not in e
    if s.selector is not None:
        assert e["sel"]["src"] == s.selector.src + "/128"
        assert e["sel"]["dst"] == s.selector.dst + "/128"
        assert e["sel"]["dport"] == s.selector.dport


def _comparable(s: State) -> tuple:
    a = s.algorithms
    return (s.src, s.dst, s.spi, int(s.proto), int(s.mode), s.reqid, a, s.lifetime,
            s.replay_window, s.esn, s.encap, s.mark, s.if_id)


def test_sa_add_get_dump_and_iproute_agree(xfrm: Xfrm, netns: str) -> None:
    states = sample_states()
    for s in states:
        xfrm.add_state(s)
    dumped = {d.spi: d for d in xfrm.dump_states()}
    assert sorted(dumped) == sorted(s.spi for s in states)
    entries = {e["spi"]: e for e in parse_states(ip_xfrm(netns, "state"))}
    for s in states:
        got = xfrm.get_state(s.dst, s.spi, mark=s.mark)
        assert _comparable(got) == _comparable(s)
        assert _comparable(dumped[s.spi]) == _comparable(s)
        assert got.curlft is not None and got.curlft.add_time > 0
        if s.esn or s.replay_window > 32:
            assert got.replay_esn is not None
            assert got.replay_esn.replay_window == s.replay_window
        assert_state_matches_ip(s, entries[s.spi])


def test_sa_add_duplicate_update_delete_flush(xfrm: Xfrm, netns: str) -> None:
    s = sample_states()[1]
    xfrm.add_state(s)
    with pytest.raises(XfrmError) as ei:
        xfrm.add_state(s)
    assert ei.value.errno == errno.EEXIST
    s.lifetime = Lifetime(hard_add_seconds=999, soft_add_seconds=900)
    xfrm.update_state(s)
    (e,) = parse_states(ip_xfrm(netns, "state"))
    assert e["lifetime"]["hard_add_seconds"] == 999
    assert e["lifetime"]["soft_add_seconds"] == 900
    xfrm.delete_state(s.dst, s.spi)
    with pytest.raises(XfrmError) as ei:
        xfrm.get_state(s.dst, s.spi)
    assert ei.value.errno == errno.ESRCH
    for x in sample_states():
        xfrm.add_state(x)
    xfrm.flush_states(Proto.ESP)
    assert xfrm.dump_states() == []
    assert parse_states(ip_xfrm(netns, "state")) == []


def test_allocspi_then_update_completes_the_sa(xfrm: Xfrm, netns: str) -> None:
    larval = xfrm.allocspi("192.0.2.1", "192.0.2.2", spi_min=0x5000, spi_max=0x5FFF,
                           reqid=8, mode=Mode.TUNNEL)
    full = State("192.0.2.1", "192.0.2.2", larval.spi, mode="tunnel", reqid=8,
                 algorithms=Algorithms(aead=AeadAlgorithm("rfc4106(gcm(aes))", GCM_KEY)),
                 replay_window=32)
    xfrm.update_state(full)
    (e,) = parse_states(ip_xfrm(netns, "state"))
    assert_state_matches_ip(full, e)
    assert _comparable(xfrm.get_state("192.0.2.2", larval.spi)) == _comparable(full)


def test_batch_of_states_maps_failure(xfrm: Xfrm) -> None:
    states = sample_states()
    bad = State("203.0.113.1", "203.0.113.2", 0x1999,
                algorithms=Algorithms(crypt=Algorithm("no-such-cipher", AES_KEY)))
    states.insert(2, bad)
    results = xfrm.add_states(states)
    assert [i for i, r in enumerate(results) if r is not None] == [2]
    assert results[2].errno in (errno.ENOSYS, errno.ENOENT, errno.EINVAL)
    assert len(xfrm.dump_states()) == 4


def test_soft_and_hard_time_expiry_reach_the_listener(xfrm: Xfrm, netns: str) -> None:
    s = State("203.0.113.1", "203.0.113.2", 0x2001, mode="tunnel", reqid=5,
              algorithms=Algorithms(aead=AeadAlgorithm("rfc4106(gcm(aes))", GCM_KEY)),
              lifetime=Lifetime(soft_add_seconds=1, hard_add_seconds=3))
    with XfrmListener(netns) as listener:
        xfrm.add_state(s)
        soft = listener.wait_for(
            lambda ev: isinstance(ev, ExpireEvent) and ev.state.spi == 0x2001 and not ev.hard,
            timeout=20)
        assert soft.state.reqid == 5 and soft.state.dst == "203.0.113.2"
        assert soft.state.lifetime.hard_add_seconds == 3
        hard = listener.wait_for(
            lambda ev: isinstance(ev, ExpireEvent) and ev.state.spi == 0x2001 and ev.hard,
            timeout=20)
        assert hard.hard
    assert xfrm.dump_states() == []


def test_acquire_for_traffic_without_sa(xfrm: Xfrm, netns: str) -> None:
    sh(netns, "ip", "link", "set", "lo", "up")
    sh(netns, "ip", "link", "add", "dummy0", "type", "dummy")
    sh(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "dummy0")
    sh(netns, "ip", "link", "set", "dummy0", "up")
    sh(netns, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.2")
    pol = Policy(Selector("192.0.2.0/24", "198.51.100.0/24", proto=17), dir="out",
                 priority=10,
                 templates=[Template("192.0.2.1", "192.0.2.2", mode="tunnel", reqid=77)])
    xfrm.add_policy(pol)
    with XfrmListener(netns) as listener:
        # the kernel queues an ACQUIRE and drops (or holds) the packet
        subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c",
             "import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             "s.setblocking(False)\n"
             "try:\n    s.sendto(b'x', ('198.51.100.7', 9))\n"
             "except OSError:\n    pass\n"],
            check=True, timeout=60,
        )
        ev = listener.wait_for(lambda e: isinstance(e, AcquireEvent), timeout=20)
    assert ev.proto == Proto.ESP
    assert (ev.src, ev.dst) == ("192.0.2.1", "192.0.2.2")
    assert ev.selector.dst in ("198.51.100.7", "198.51.100.7/32")
    assert ev.policy.priority == 10
    assert [t.reqid for t in ev.templates] == [77]
    assert ev.seq != 0
    # the kernel keeps a larval SA for the acquire
    states = parse_states(ip_xfrm(netns, "state"))
    assert any(e["dst"] == "192.0.2.2" and e["reqid"] == 77 for e in states)


def test_lifetime_inf_defaults(xfrm: Xfrm) -> None:
    s = sample_states()[3]
    xfrm.add_state(s)
    got = xfrm.get_state(s.dst, s.spi)
    assert got.lifetime.hard_bytes == INF and got.lifetime.hard_add_seconds == 0
