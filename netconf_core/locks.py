"""Global datastore locks (RFC 6241 section 7.5): who holds which datastore and since when."""

from __future__ import annotations

import time
from dataclasses import dataclass

from netconf_core.errors import RpcError

DATASTORES = ("running", "candidate", "startup")


@dataclass
class Lock:
    session_id: int
    since: float  # time.time()


class LockManager:
    def __init__(self) -> None:
        self.locks: dict[str, Lock] = {}

    def holder(self, datastore: str) -> int | None:
        lk = self.locks.get(datastore)
        return lk.session_id if lk else None

    def lock(self, datastore: str, session_id: int, candidate_modified: bool = False) -> None:
        """Grant the lock or raise lock-denied with the holder's session-id (0 when the
        obstacle is not a NETCONF session, e.g. uncommitted candidate changes)."""
        held = self.locks.get(datastore)
        if held is not None:
            raise RpcError(
                "protocol", "lock-denied",
                f"{datastore} is already locked by session {held.session_id}",
                info={"session-id": str(held.session_id)},
            )
        if datastore == "candidate" and candidate_modified:
            raise RpcError(
                "protocol", "lock-denied",
                "candidate has uncommitted changes; commit or discard-changes first",
                info={"session-id": "0"},
            )
        self.locks[datastore] = Lock(session_id, time.time())

    def unlock(self, datastore: str, session_id: int) -> None:
        held = self.locks.get(datastore)
        if held is None:
            raise RpcError("protocol", "operation-failed", f"{datastore} is not locked")
        if held.session_id != session_id:
            raise RpcError(
                "protocol", "operation-failed",
                f"{datastore} is locked by session {held.session_id}, not by this session",
                info={"session-id": str(held.session_id)},
            )
        del self.locks[datastore]

    def check_write(self, datastore: str, session_id: int) -> None:
        """Refuse a change to a datastore another session has locked (in-use)."""
        held = self.locks.get(datastore)
        if held is not None and held.session_id != session_id:
            raise RpcError(
                "protocol", "in-use",
                f"{datastore} is locked by session {held.session_id}",
                info={"session-id": str(held.session_id)},
            )

    def release_all(self, session_id: int) -> list[str]:
        """Drop every lock of a session that ended; returns the datastores released."""
        gone = [ds for ds, lk in self.locks.items() if lk.session_id == session_id]
        for ds in gone:
            del self.locks[ds]
        return gone
