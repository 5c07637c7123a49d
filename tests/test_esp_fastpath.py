"""The data path's fused AES-GCM tunnel-mode functions are the generic ones, faster: same bytes
on the wire for the same sequence number, and the same verdict, counters and replay window
for every packet (valid, replayed, tampered, truncated, wrong next header, bad padding)."""

from __future__ import annotations

import random

import pytest
from test_esp_helpers import sa_pair
from test_esp_unit import udp_packet

from nsf_agent.userspace.esp import (
    EspError,
    SaState,
    decapsulate,
    encapsulate,
    open_gcm_tunnel,
    seal_gcm_tunnel,
)


@pytest.mark.parametrize("alg", ["gcm128", "gcm256"])
def test_fused_seal_equals_generic(alg: str) -> None:
    out_cfg, _ = sa_pair(alg)
    a, b = SaState(out_cfg), SaState(out_cfg)
    fast = b.gcm_fast()
    assert fast is not None
    for size in (0, 1, 2, 3, 50, 1300):
        pkt = udp_packet(size=size)
        assert seal_gcm_tunnel(b, fast, pkt, 4) == encapsulate(a, pkt)
    assert (a.seq, a.counters) == (b.seq, b.counters)


def test_fused_open_equals_generic() -> None:
    out_cfg, in_cfg = sa_pair("gcm128", window=32)
    tx = SaState(out_cfg)
    gen, fus = SaState(in_cfg), SaState(in_cfg)
    fast = fus.gcm_fast()
    rng = random.Random(7)
    good = [encapsulate(tx, udp_packet(size=rng.randrange(0, 200))) for _ in range(80)]
    cases: list[bytes] = []
    for p in good:
        cases.append(p)
        r = rng.random()
        if r < 0.2:
            cases.append(p)  # replay
        elif r < 0.4:
            b = bytearray(p)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            cases.append(bytes(b))  # tampered anywhere
        elif r < 0.5:
            cases.append(p[:rng.randrange(0, 40)])  # truncated
    cases.append(tx.seal(b"\x45" + bytes(19), 6))  # wrong next header
    cases.append(tx.seal(b"\x60" + bytes(39), 4))  # IPv6 under next header 4
    cases.append(tx.seal(b"\x45" + bytes(9), 4))  # truncated inner header
    rng.shuffle(cases)
    for c in cases:
        try:
            want: object = decapsulate(gen, c)
        except EspError as e:
            want = type(e)
        try:
            got: object = open_gcm_tunnel(fus, fast, c)
        except EspError as e:
            got = type(e)
        assert got == want
    assert gen.counters == fus.counters
    assert (gen.replay.top, gen.replay.bitmap) == (fus.replay.top, fus.replay.bitmap)


def test_no_fast_path_for_other_suites() -> None:
    assert SaState(sa_pair("cbc128-sha256")[0]).gcm_fast() is None
    assert SaState(sa_pair("gcm128", esn=True)[0]).gcm_fast() is None
