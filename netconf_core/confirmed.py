"""RFC 6241 section 8.4 confirmed commit (:confirmed-commit:1.1).

A confirmed commit keeps the running configuration from before it (the snapshot) and restores
it unless a confirming commit arrives in time. The snapshot is also written to the state
directory (atomically) so that a restart before confirmation rolls back too, as 8.4.1 asks:
"If the device reboots for any reason before the confirm time expires, the server MUST
restore the configuration to its state before the confirmed commit was issued."
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from netconf_core.datastore import wipe_file, write_atomic
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

DEFAULT_CONFIRM_TIMEOUT = 600
SNAPSHOT_FILE = "confirmed-commit-snapshot.xml"


@dataclass
class Pending:
    snapshot: etree._Element  # running (`<data>` root) before the first confirmed commit
    session_id: int  # who issued it; 0 once that session ended with a persist token
    persist: str | None
    timeout: int
    handle: asyncio.TimerHandle | None = None


class ConfirmedCommit:
    """At most one pending confirmed commit per server."""

    def __init__(self, state_dir: Path | None, on_expire: Callable[[], None]) -> None:
        self.state_dir = state_dir
        self.pending: Pending | None = None
        self._on_expire = on_expire

    # -- authorisation ------------------------------------------------------------------------

    def check_may_follow(self, session_id: int, persist_id: str | None) -> None:
        """May this session confirm, extend or cancel the pending commit?"""
        p = self.pending
        if p is None:
            if persist_id is not None:
                raise RpcError(
                    "protocol", "invalid-value", "no confirmed commit is pending for persist-id",
                    info={"bad-element": "persist-id"},
                )
            return
        if p.persist is not None:
            if persist_id != p.persist:
                raise RpcError(
                    "protocol", "invalid-value",
                    "a persistent confirmed commit is pending; give its persist-id",
                    info={"bad-element": "persist-id"},
                )
        elif persist_id is not None:
            raise RpcError(
                "protocol", "invalid-value", "the pending confirmed commit has no persist token",
                info={"bad-element": "persist-id"},
            )
        elif p.session_id != session_id:
            raise RpcError(
                "protocol", "in-use",
                f"a confirmed commit of session {p.session_id} is pending",
                info={"session-id": str(p.session_id)},
            )

    # -- lifecycle -----------------------------------------------------------------------------

    def begin(
        self, snapshot: etree._Element, session_id: int, persist: str | None, timeout: int
    ) -> None:
        """Record the snapshot durably before running changes."""
        self.pending = Pending(snapshot, session_id, persist, timeout)
        self._save(snapshot)

    def arm(self, loop: asyncio.AbstractEventLoop, timeout: int) -> None:
        """(Re)start the confirm timer (a follow-up confirmed commit resets it)."""
        p = self.pending
        assert p is not None
        if p.handle is not None:
            p.handle.cancel()
        p.timeout = timeout
        p.handle = loop.call_later(timeout, self._on_expire)

    def update(self, persist: str | None, session_id: int) -> None:
        """A follow-up confirmed commit may set a new persist token and owner."""
        p = self.pending
        assert p is not None
        p.persist = persist
        p.session_id = session_id

    def finish(self) -> Pending | None:
        """Forget the pending commit (confirmed, cancelled or rolled back)."""
        p, self.pending = self.pending, None
        if p is not None and p.handle is not None:
            p.handle.cancel()
        self._remove()
        return p

    def owned_by(self, session_id: int) -> bool:
        p = self.pending
        return p is not None and p.persist is None and p.session_id == session_id

    # -- persistence ---------------------------------------------------------------------------

    def _path(self) -> Path | None:
        return self.state_dir / SNAPSHOT_FILE if self.state_dir else None

    def _save(self, snapshot: etree._Element) -> None:
        path = self._path()
        if path is None:
            return
        # the snapshot holds running's key material: 0600, and wiped when replaced
        write_atomic(path, etree.tostring(snapshot), wipe_old=True)

    def _remove(self) -> None:
        path = self._path()
        if path is not None and path.exists():
            wipe_file(path)
            _fsync_dir(path.parent)

    def leftover_snapshot(self) -> etree._Element | None:
        """A snapshot left by a confirmed commit that was never confirmed before a restart."""
        path = self._path()
        if path is None or not path.exists():
            return None
        return etree.parse(str(path)).getroot()

    def clear_leftover(self) -> None:
        self._remove()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
