"""RFC 6242 transport: SSH (asyncssh) with the `netconf` subsystem.

Authentication is by password (scrypt hashes) or public key (authorized keys) from the user
database; the host key is generated on first start and kept in the state directory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from netconf_core import ssh_coalesce, ssh_quickack
from netconf_core.auth import UserDb, load_or_create_host_key
from netconf_core.server import NetconfServer
from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)
ssh_coalesce.install()
ssh_quickack.install()

DEFAULT_PORT = 830
CHANNEL_WINDOW = 16 << 20
CHANNEL_MAX_PACKET = 256 << 10
SUBSYSTEM = "netconf"


@dataclass
class SshConfig:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    host_key_path: Path = Path("ssh_host_ed25519_key")
    login_timeout: float = 30.0
    keepalive_interval: float = 0.0


class _Channel(asyncssh.SSHServerSession):  # type: ignore[misc]
    """Bridges one SSH channel to one NetconfSession."""

    def __init__(self, server: NetconfServer, username: str, peer: str) -> None:
        self._server = server
        self._username = username
        self._peer = peer
        self._chan: asyncssh.SSHServerChannel | None = None
        self._session: NetconfSession | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self._chan = chan

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != SUBSYSTEM:
            log.info("refusing subsystem %r from %s", subsystem, self._peer)
            return False
        return True

    def shell_requested(self) -> bool:
        return False

    def exec_requested(self, command: str) -> bool:
        return False

    def session_started(self) -> None:
        chan = self._chan
        assert chan is not None
        self._session = self._server.new_session(
            self._username, self._peer, chan.write, self._close_channel
        )
        self._session.start()

    def _close_channel(self) -> None:
        if self._chan is not None:
            self._chan.close()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._session is not None:
            self._session.data_received(data)

    def eof_received(self) -> bool:
        return False  # close the channel

    def connection_lost(self, exc: Exception | None) -> None:
        if self._session is not None:
            self._session.connection_lost()
            self._session = None


class _SshServer(asyncssh.SSHServer):  # type: ignore[misc]
    def __init__(self, nc: NetconfServer, users: UserDb) -> None:
        self._nc = nc
        self._users = users
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = ""
        self._username = ""

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        peer = conn.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("SSH connection from %s lost: %s", self._peer, exc)

    def begin_auth(self, username: str) -> bool:
        self._username = username
        keys = self._users.authorized_keys(username)
        if keys is not None and self._conn is not None:
            self._conn.set_authorized_keys(keys)
        return True  # always require authentication

    def password_auth_supported(self) -> bool:
        return self._users.has_passwords()

    def validate_password(self, username: str, password: str) -> bool:
        ok = self._users.check_password(username, password)
        if not ok:
            log.warning("password authentication failed for user %r from %s", username, self._peer)
        return ok

    def public_key_auth_supported(self) -> bool:
        return self._users.has_keys()

    def auth_completed(self) -> None:
        log.info("user %r authenticated from %s", self._username, self._peer)

    def session_requested(self) -> _Channel:
        return _Channel(self._nc, self._username, self._peer)


class SshTransport:
    """Listens for SSH connections and opens NETCONF sessions on the `netconf` subsystem."""

    def __init__(self, nc: NetconfServer, users: UserDb, config: SshConfig) -> None:
        self.nc = nc
        self.users = users
        self.config = config
        self._acceptor: asyncssh.SSHAcceptor | None = None

    async def start(self) -> None:
        key = load_or_create_host_key(self.config.host_key_path)
        self._acceptor = await asyncssh.listen(
            self.config.host,
            self.config.port,
            server_factory=lambda: _SshServer(self.nc, self.users),
            server_host_keys=[key],
            encoding=None,
            login_timeout=self.config.login_timeout,
            keepalive_interval=self.config.keepalive_interval or None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            line_editor=False,
            # big edit-configs (MBs) should not stall on window adjustments
            window=CHANNEL_WINDOW,
            max_pktsize=CHANNEL_MAX_PACKET,
        )
        log.info("NETCONF over SSH listening on %s port %d", self.config.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0)."""
        if self._acceptor is None:
            return self.config.port
        return int(self._acceptor.get_port())

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        self.nc.close_all()
