"""Key manager: SPIs and key material for IKE-less SAs.

Without IKE the controller is the only party that chooses SPIs and keys, so it must guarantee
what IKE normally guarantees: an SPI unique for each (NSF, destination) pair in every SAD it
writes, and fresh random keys of the right length for every SA. Key material never reaches a
log: `SaKeys` hides it from repr and str.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from controller.core.records import SaKeys
from controller.ipsec.model import CryptoProfile, check_profile
from netconf_core.i2nsf.algorithms import ENCRYPTION, INTEGRITY
from netconf_core.i2nsf.types import IpAddr

log = logging.getLogger(__name__)

# Below 256 SPIs are reserved by IANA (RFC 4303 section 2.1). We stay below 0xC0000000 so that
# SPIs the kernel or strongSwan allocate (charon's default range is 0xc0000000-0xcfffffff) never
# collide with ours, and above 0x10000 to leave room for hand-made test SAs.
SPI_MIN = 0x0001_0000
SPI_MAX = 0xBFFF_FFFF


class CryptoProfileError(ValueError):
    """The profile asks for an algorithm or key length we cannot produce keys for."""


class SpiIndex(Protocol):
    """What the key manager needs from the store."""

    def spi_in_use(self, nsf: str, dst: str, spi: int) -> bool: ...


@dataclass(frozen=True)
class KeySizes:
    enc: int  # bytes, salt included
    integ: int
    iv: int


def key_sizes(profile: CryptoProfile) -> KeySizes:
    """Key lengths from the shared algorithm tables (netconf_core.i2nsf.algorithms), so that
    what the controller generates is exactly what the agent accepts (AEAD/CTR keys carry
    the salt)."""
    problems = check_profile(profile)
    if problems:
        raise CryptoProfileError(f"crypto profile {profile.name!r}: {'; '.join(problems)}")
    enc = ENCRYPTION[profile.encryption]
    enc_len = 0 if enc.number == 11 else profile.key_length // 8 + enc.salt_bytes
    integ_len = INTEGRITY[profile.integrity].key_bytes if profile.integrity else 0
    return KeySizes(enc=enc_len, integ=integ_len, iv=enc.iv_bytes)


class KeyManager:
    """Allocates SPIs (checked against the store and against SPIs handed out but not stored
    yet) and generates keys from the OS CSPRNG."""

    def __init__(self, index: SpiIndex, spi_min: int = SPI_MIN, spi_max: int = SPI_MAX,
                 rng: random.Random | None = None) -> None:
        if not 256 <= spi_min <= spi_max <= 0xFFFF_FFFF:
            raise ValueError("SPI range must lie within 256..0xffffffff")
        self.index = index
        self.spi_min = spi_min
        self.spi_max = spi_max
        self._rng = rng or secrets.SystemRandom()
        self._reserved: set[tuple[str, str, int]] = set()

    def allocate_spi(self, holders: Iterable[tuple[str, IpAddr | str]],
                     attempts: int = 64) -> int:
        """A random SPI unused for every (nsf, destination address) in `holders` — the sender
        and the receiver of the SA, each with the destination as it sees it (they differ
        through a NAT). Reserved until `release`d or stored."""
        keys = [(nsf, str(dst)) for nsf, dst in holders]
        for _ in range(attempts):
            spi = self._rng.randint(self.spi_min, self.spi_max)
            if any((n, d, spi) in self._reserved or self.index.spi_in_use(n, d, spi)
                   for n, d in keys):
                continue
            for n, d in keys:
                self._reserved.add((n, d, spi))
            return spi
        raise RuntimeError(f"no free SPI found in {attempts} attempts "
                           f"(range {self.spi_min:#x}-{self.spi_max:#x} nearly full?)")

    def release(self, holders: Iterable[tuple[str, IpAddr | str]], spi: int) -> None:
        """Forget a reservation: the SA was stored (the store now answers) or abandoned."""
        for nsf, dst in holders:
            self._reserved.discard((nsf, str(dst), spi))

    def release_all(self) -> None:
        self._reserved.clear()

    @property
    def reserved_count(self) -> int:
        return len(self._reserved)

    def new_keys(self, profile: CryptoProfile) -> SaKeys:
        sizes = key_sizes(profile)
        return SaKeys(
            enc_key=secrets.token_bytes(sizes.enc),
            integ_key=secrets.token_bytes(sizes.integ),
            iv=secrets.token_bytes(sizes.iv),
        )
