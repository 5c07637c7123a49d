"""Shared builders for the ESP tests: SA configs and sample packets."""

from __future__ import annotations

import ipaddress
import os

from nsf_agent.userspace.model import (
    Direction,
    EncAlg,
    IntegAlg,
    Lifetime,
    Mode,
    SaConfig,
    UdpEncap,
)

GW_A = ipaddress.ip_address("192.0.2.1")
GW_B = ipaddress.ip_address("192.0.2.2")
NO_LIMIT = Lifetime()

ALGS: dict[str, tuple[EncAlg, int, IntegAlg, int]] = {
    "gcm128": (EncAlg.AES_GCM_16, 20, IntegAlg.NONE, 0),
    "gcm192": (EncAlg.AES_GCM_16, 28, IntegAlg.NONE, 0),
    "gcm256": (EncAlg.AES_GCM_16, 36, IntegAlg.NONE, 0),
    "cbc128-sha256": (EncAlg.AES_CBC, 16, IntegAlg.HMAC_SHA2_256_128, 32),
    "cbc256-sha384": (EncAlg.AES_CBC, 32, IntegAlg.HMAC_SHA2_384_192, 48),
    "cbc192-sha512": (EncAlg.AES_CBC, 24, IntegAlg.HMAC_SHA2_512_256, 64),
    "null-sha256": (EncAlg.NULL, 0, IntegAlg.HMAC_SHA2_256_128, 32),
}


def sa_pair(alg: str = "gcm128", mode: Mode = Mode.TUNNEL, *, esn: bool = False,
            window: int = 64, spi: int = 0x1000, encap: UdpEncap | None = None,
            soft: Lifetime = NO_LIMIT, hard: Lifetime = NO_LIMIT,
            src: object = GW_A, dst: object = GW_B) -> tuple[SaConfig, SaConfig]:
    """The outbound SA at the sender and its inbound twin at the receiver (same keys)."""
    enc, klen, integ, ilen = ALGS[alg]
    ek, ik = os.urandom(klen), os.urandom(ilen)
    common = dict(spi=spi, src=src, dst=dst, mode=mode, enc_alg=enc, enc_key=ek,
                  integ_alg=integ, integ_key=ik, reqid=1, replay_window=window, esn=esn,
                  encap=encap, soft=soft, hard=hard)
    out = SaConfig(name=f"out-{spi:x}", direction=Direction.OUTBOUND, **common)  # type: ignore[arg-type]
    inb = SaConfig(name=f"in-{spi:x}", direction=Direction.INBOUND, **common)  # type: ignore[arg-type]
    return out, inb
