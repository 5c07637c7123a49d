"""IKEv2 transforms usable for IKE-less SAs (IANA registry; RFC 9061 refers to it by number).

The sizes are what an SA needs: the controller generates key material of exactly these
lengths and the agent refuses anything else, so both must read them from one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncAlg:
    """An IKEv2 encryption transform (IANA registry, Transform Type 1)."""

    number: int
    name: str
    kernel: str  # Linux crypto API name used in XFRM
    aead: bool
    key_bytes: tuple[int, ...]  # accepted key lengths, salt included for AEAD/CTR
    salt_bytes: int = 0
    icv_bits: int = 0
    iv_bytes: int = 8
    block_bytes: int = 4


ENCRYPTION: dict[int, EncAlg] = {
    a.number: a
    for a in (
        EncAlg(3, "3des-cbc", "cbc(des3_ede)", False, (24,), iv_bytes=8, block_bytes=8),
        EncAlg(11, "null", "ecb(cipher_null)", False, (0,), iv_bytes=0, block_bytes=4),
        EncAlg(12, "aes-cbc", "cbc(aes)", False, (16, 24, 32), iv_bytes=16, block_bytes=16),
        EncAlg(13, "aes-ctr", "rfc3686(ctr(aes))", False, (20, 28, 36), salt_bytes=4),
        EncAlg(14, "aes-ccm-8", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 64),
        EncAlg(15, "aes-ccm-12", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 96),
        EncAlg(16, "aes-ccm-16", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 128),
        EncAlg(18, "aes-gcm-8", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 64),
        EncAlg(19, "aes-gcm-12", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 96),
        EncAlg(20, "aes-gcm-16", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 128),
        EncAlg(21, "null-auth-aes-gmac", "rfc4543(gcm(aes))", True, (20, 28, 36), 4, 128),
        EncAlg(28, "chacha20-poly1305", "rfc7539esp(chacha20,poly1305)", True, (36,), 4, 128),
    )
}


@dataclass(frozen=True)
class IntegAlg:
    """An IKEv2 integrity transform (IANA registry, Transform Type 3)."""

    number: int
    name: str
    kernel: str
    key_bytes: int
    trunc_bits: int


INTEGRITY: dict[int, IntegAlg] = {
    a.number: a
    for a in (
        IntegAlg(1, "hmac-md5-96", "hmac(md5)", 16, 96),
        IntegAlg(2, "hmac-sha1-96", "hmac(sha1)", 20, 96),
        IntegAlg(5, "aes-xcbc-96", "xcbc(aes)", 16, 96),
        IntegAlg(8, "aes-cmac-96", "cmac(aes)", 16, 96),
        IntegAlg(12, "hmac-sha2-256-128", "hmac(sha256)", 32, 128),
        IntegAlg(13, "hmac-sha2-384-192", "hmac(sha384)", 48, 192),
        IntegAlg(14, "hmac-sha2-512-256", "hmac(sha512)", 64, 256),
    )
}
