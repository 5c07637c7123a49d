"""HTTP basic authentication against the NETCONF server's user database.

The password check is scrypt (tens of milliseconds, on purpose): it runs in a worker thread
so that other requests keep flowing, and a successful check is remembered for a short time
under an HMAC of the credentials with a per-process random key (never the password itself),
so a script issuing many requests pays the cost once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import time

from netconf_core.auth import UserDb

CACHE_SECONDS = 60.0
CACHE_MAX = 1024


class BasicAuth:
    def __init__(self, users: UserDb) -> None:
        self.users = users
        self._key = os.urandom(32)
        self._ok: dict[bytes, float] = {}

    @staticmethod
    def parse(header: str | None) -> tuple[str, str] | None:
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, colon, password = text.partition(":")
        if not colon:
            return None
        return user, password

    def _token(self, user: str, password: str) -> bytes:
        return hmac.new(self._key, f"{user}\0{password}".encode(), hashlib.sha256).digest()

    async def check(self, user: str, password: str) -> bool:
        token = self._token(user, password)
        now = time.monotonic()
        until = self._ok.get(token)
        if until is not None and until > now:
            return True
        ok = await asyncio.get_running_loop().run_in_executor(
            None, self.users.check_password, user, password)
        if ok:
            if len(self._ok) >= CACHE_MAX:
                self._ok = {k: v for k, v in self._ok.items() if v > now}
                if len(self._ok) >= CACHE_MAX:
                    self._ok.clear()
            self._ok[token] = now + CACHE_SECONDS
        return ok
