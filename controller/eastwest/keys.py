"""Key agreement between two controllers: X25519 once per proposal, HKDF-SHA256 per SA.

The SA keys are derived on both sides from the shared secret, the proposal's nonce and the
SA's identity (policy pair, flow, direction, generation, SPI): only public keys cross the
east-west channel, so a recorded channel (even decrypted) does not give the SA keys, and
every SA has independent keys.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from controller.core.records import SaKeys
from controller.ipsec.keys import key_sizes
from controller.ipsec.model import CryptoProfile


class Ephemeral:
    """One side's ephemeral X25519 key pair (never stored: a lost proposal is redone)."""

    def __init__(self) -> None:
        self._priv = X25519PrivateKey.generate()

    @property
    def public_hex(self) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self._priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    def shared(self, peer_public_hex: str) -> bytes:
        """The X25519 shared secret; ValueError for a malformed or low-order peer key."""
        try:
            raw = bytes.fromhex(peer_public_hex)
            peer = X25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise ValueError(f"bad X25519 public key: {exc}") from None
        return self._priv.exchange(peer)  # raises ValueError on an all-zero result


def derive_keys(shared: bytes, nonce: str, label: str, profile: CryptoProfile) -> SaKeys:
    """Keys of one SA. `label` names the SA identically on both controllers."""
    sizes = key_sizes(profile)
    total = sizes.enc + sizes.integ + sizes.iv
    okm = HKDF(algorithm=hashes.SHA256(), length=max(total, 1), salt=bytes.fromhex(nonce),
               info=b"i2nsf-east-west/v1/" + label.encode()).derive(shared)
    return SaKeys(enc_key=okm[:sizes.enc], integ_key=okm[sizes.enc:sizes.enc + sizes.integ],
                  iv=okm[sizes.enc + sizes.integ:total])
