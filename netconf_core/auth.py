"""Who may open a NETCONF session: users with scrypt password hashes and/or authorized keys.

Passwords are never stored, only `scrypt$<n>$<r>$<p>$<salt>$<hash>` (base64) strings that the
`i2nsf-agent hash-password` command prints; comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_DKLEN = 32


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A storable scrypt hash of `password` with a random salt."""
    salt = os.urandom(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=_DKLEN)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(dk).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True if `password` matches the stored hash; malformed hashes never match."""
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(dk)
        got = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=128 * int(n) * int(r) * int(p) + 1024 * 1024,
        )
    except (ValueError, TypeError):
        log.warning("malformed password hash in configuration")
        return False
    return hmac.compare_digest(got, want)


@dataclass
class User:
    name: str
    password_hash: str | None = None
    authorized_keys: list[str] = field(default_factory=list)  # OpenSSH public key lines
    # May this user see and set key material (RFC 8341 default-deny-all nodes)?
    read_secrets: bool = True
    # RFC 8341 external groups (used when /nacm/enable-external-groups is true)
    groups: list[str] = field(default_factory=list)

    def keys(self) -> asyncssh.SSHAuthorizedKeys | None:
        if not self.authorized_keys:
            return None
        return asyncssh.import_authorized_keys("\n".join(self.authorized_keys) + "\n")


class UserDb:
    """The users allowed to log in, by name."""

    def __init__(self, users: list[User]) -> None:
        self.users = {u.name: u for u in users}
        self._keys: dict[str, asyncssh.SSHAuthorizedKeys | None] = {
            u.name: u.keys() for u in users
        }
        # A fixed dummy hash so unknown users cost as much time as known ones.
        self._dummy = hash_password("not-a-password")

    def check_password(self, username: str, password: str) -> bool:
        user = self.users.get(username)
        if user is None or user.password_hash is None:
            verify_password(password, self._dummy)
            return False
        return verify_password(password, user.password_hash)

    def authorized_keys(self, username: str) -> asyncssh.SSHAuthorizedKeys | None:
        return self._keys.get(username)

    def has_passwords(self) -> bool:
        return any(u.password_hash for u in self.users.values())

    def has_keys(self) -> bool:
        return any(k is not None for k in self._keys.values())


def load_or_create_host_key(path: Path, algorithm: str = "ssh-ed25519") -> asyncssh.SSHKey:
    """Read the persisted host key, or generate one and store it (mode 0600, atomically) so
    clients see the same key across restarts."""
    if path.exists():
        key = asyncssh.read_private_key(str(path))
        _write_public(path, key)
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key(algorithm)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.export_private_key())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    log.info("generated host key %s (%s)", path, key.get_fingerprint())
    _write_public(path, key)
    return key


def _write_public(path: Path, key: asyncssh.SSHKey) -> None:
    """`<key>.pub` in OpenSSH format: what an operator pins in the controller's inventory
    (or a known_hosts file) to verify this host."""
    pub = path.with_name(path.name + ".pub")
    text = key.export_public_key()
    if not pub.exists() or pub.read_bytes() != text:
        tmp = pub.with_name(pub.name + ".tmp")
        tmp.write_bytes(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, pub)
