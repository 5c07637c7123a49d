"""The controller's persistent state (decision 7): inventory, crypto profiles, policies with
their status, the SAs with their keys, installed SPD entry names and the rekey schedule.

`Store` is the small interface the rest of the controller uses, so that a shared store (etcd,
PostgreSQL) can back several controller instances later; `SqliteStore` is the embedded default
(WAL mode, one file, mode 0600 because it holds keys). Everything that must change together
goes through `transaction()`.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from controller.core.records import PolicyRecord, PolicyView, SaKeys, SaRecord, SaView

log = logging.getLogger(__name__)


class Store(abc.ABC):
    """What the controller needs from persistent storage."""

    # Changes whenever anything may have changed (a write or a rollback): lets readers
    # such as the operational state re-use what they derived from an unchanged store.
    # A store that cannot tell keeps bumping it on every read (`changed`).
    version: int = 0

    def changed(self) -> int:
        """The current version (this base class: a new one every time)."""
        self.version += 1
        return self.version

    @abc.abstractmethod
    def transaction(self) -> Any:
        """Context manager: everything inside commits together or not at all (nestable)."""

    # inventory and profiles: JSON documents keyed by name
    @abc.abstractmethod
    def put_nsf(self, data: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    def get_nsf(self, name: str) -> dict[str, Any] | None: ...
    @abc.abstractmethod
    def list_nsfs(self) -> list[dict[str, Any]]: ...
    @abc.abstractmethod
    def delete_nsf(self, name: str) -> bool: ...
    @abc.abstractmethod
    def put_profile(self, data: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    def get_profile(self, name: str) -> dict[str, Any] | None: ...
    @abc.abstractmethod
    def list_profiles(self) -> list[dict[str, Any]]: ...
    @abc.abstractmethod
    def delete_profile(self, name: str) -> bool: ...

    # policies
    @abc.abstractmethod
    def put_policy(self, name: str, data: dict[str, Any], group: str | None = None) -> int: ...
    @abc.abstractmethod
    def get_policy(self, name: str) -> PolicyRecord | None: ...
    @abc.abstractmethod
    def list_policies(self) -> list[PolicyRecord]: ...
    @abc.abstractmethod
    def delete_policy(self, name: str) -> bool: ...
    @abc.abstractmethod
    def set_policy_status(self, name: str, status: str, error: str | None = None) -> None: ...
    @abc.abstractmethod
    def set_policy_generation(self, name: str, generation: int) -> None: ...

    # SAs and installed SPD entries
    @abc.abstractmethod
    def add_sas(self, sas: Iterable[SaRecord]) -> None: ...
    @abc.abstractmethod
    def get_sas(self, policy: str | None = None, generation: int | None = None,
                nsf: str | None = None) -> list[SaRecord]: ...
    @abc.abstractmethod
    def delete_sas(self, policy: str, generations: Iterable[int] | None = None) -> int: ...
    @abc.abstractmethod
    def spi_in_use(self, nsf: str, dst: str, spi: int) -> bool: ...
    @abc.abstractmethod
    def put_spd(self, policy: str, nsf: str, names: Iterable[str]) -> None: ...
    @abc.abstractmethod
    def get_spd(self, policy: str) -> dict[str, list[str]]: ...
    @abc.abstractmethod
    def delete_spd(self, policy: str, nsf: str | None = None) -> None: ...

    # rekey schedule
    @abc.abstractmethod
    def put_schedule(self, policy: str, due: float | None, state: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    def get_schedule(self, policy: str) -> tuple[float | None, dict[str, Any]] | None: ...
    @abc.abstractmethod
    def list_schedule(self) -> list[tuple[str, float | None, dict[str, Any]]]: ...
    @abc.abstractmethod
    def delete_schedule(self, policy: str) -> None: ...

    # small key/value facts (e.g. persist ids of confirmed commits in flight)
    @abc.abstractmethod
    def put_meta(self, key: str, value: str) -> None: ...
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None: ...
    @abc.abstractmethod
    def delete_meta(self, key: str) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # ---- views for the operational state (override with something cheaper) ----------------

    def policy_views(self) -> list[PolicyView]:
        return [PolicyView(r.name, r.group, r.data.get("a", {}).get("nsf"),
                           r.data.get("b", {}).get("nsf"), r.status, r.error, r.generation,
                           r.updated) for r in self.list_policies()]

    def sa_views(self) -> list[SaView]:
        return [SaView(s.policy, s.flow, s.a2b, s.generation, s.spi, s.sender, s.receiver,
                       s.sender_src, s.sender_dst, s.receiver_src, s.receiver_dst, s.created)
                for s in self.get_sas()]


# Each migration is applied once, in order, inside a transaction; never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
    CREATE TABLE nsf (name TEXT PRIMARY KEY, data TEXT NOT NULL, updated REAL NOT NULL);
    CREATE TABLE crypto_profile (name TEXT PRIMARY KEY, data TEXT NOT NULL,
                                 updated REAL NOT NULL);
    CREATE TABLE policy (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        data TEXT NOT NULL,
        grp TEXT,
        status TEXT NOT NULL DEFAULT 'pending',
        error TEXT,
        generation INTEGER NOT NULL DEFAULT 0,
        updated REAL NOT NULL
    );
    CREATE TABLE sa (
        policy TEXT NOT NULL REFERENCES policy(name) ON DELETE CASCADE ON UPDATE CASCADE,
        flow INTEGER NOT NULL,
        a2b INTEGER NOT NULL,
        generation INTEGER NOT NULL,
        spi INTEGER NOT NULL,
        keys TEXT NOT NULL,
        sender TEXT NOT NULL,
        receiver TEXT NOT NULL,
        sender_src TEXT NOT NULL,
        sender_dst TEXT NOT NULL,
        receiver_src TEXT NOT NULL,
        receiver_dst TEXT NOT NULL,
        created REAL NOT NULL,
        PRIMARY KEY (policy, flow, a2b, generation)
    );
    CREATE INDEX sa_sender ON sa (sender, sender_dst, spi);
    CREATE INDEX sa_receiver ON sa (receiver, receiver_dst, spi);
    CREATE TABLE spd (
        policy TEXT NOT NULL REFERENCES policy(name) ON DELETE CASCADE ON UPDATE CASCADE,
        nsf TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (policy, nsf, name)
    );
    CREATE TABLE schedule (
        policy TEXT PRIMARY KEY REFERENCES policy(name) ON DELETE CASCADE,
        due REAL,
        state TEXT NOT NULL
    );
    CREATE INDEX schedule_due ON schedule (due);
    """),
    (2, """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """),
]


def _sa_order(s: SaRecord) -> tuple[str, int, int, bool]:
    """The order of `get_sas` (policy, generation, flow, a2b descending)."""
    return (s.policy, s.generation, s.flow, not s.a2b)


class SqliteStore(Store):
    """SQLite in WAL mode. One connection guarded by a lock: the controller's event loop is
    the main user, worker threads may read."""

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._depth = 0
        if str(path) != ":memory:":
            # Create the file 0600 before SQLite does (it would honour the umask); SQLite
            # gives the -wal and -shm files the database file's mode.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"bad synchronous mode {synchronous!r}")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Every policy's SAs as last read or written, keys decoded: each rekey step reads
        # them, and decoding rows was a good part of a step's cost. Dropped wholesale on
        # any rollback (the database is the truth; the cache refills per policy).
        self._sa_cache: dict[str, list[SaRecord]] = {}
        self._migrate()

    # ---- plumbing --------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                             "version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
            done = {r[0] for r in self._db.execute("SELECT version FROM schema_migrations")}
            for version, script in MIGRATIONS:
                if version in done:
                    continue
                with self.transaction():
                    for stmt in script.split(";"):
                        if stmt.strip():
                            self._db.execute(stmt)
                    self._db.execute("INSERT INTO schema_migrations VALUES (?, ?)",
                                     (version, time.time()))
                log.info("store %s: applied schema migration %d", self.path, version)

    def schema_version(self) -> int:
        row = self._db.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            outer = self._depth == 0
            sp = f"sp{self._depth}"
            self._db.execute("BEGIN IMMEDIATE" if outer else f"SAVEPOINT {sp}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._sa_cache.clear()
                self.version += 1
                self._db.execute("ROLLBACK" if outer else f"ROLLBACK TO {sp}")
                if not outer:
                    self._db.execute(f"RELEASE {sp}")
                raise
            self._depth -= 1
            self._db.execute("COMMIT" if outer else f"RELEASE {sp}")

    def _x(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        with self._lock:
            if not sql.startswith("SELECT"):
                self.version += 1
            return self._db.execute(sql, tuple(args))

    def changed(self) -> int:
        return self.version

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- documents --------------------------------------------------------------------------

    def _put_doc(self, table: str, data: dict[str, Any]) -> None:
        self._x(f"INSERT INTO {table} (name, data, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET data=excluded.data, updated=excluded.updated",
                (data["name"], json.dumps(data, sort_keys=True), time.time()))

    def _get_doc(self, table: str, name: str) -> dict[str, Any] | None:
        row = self._x(f"SELECT data FROM {table} WHERE name=?", (name,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _list_docs(self, table: str) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self._x(f"SELECT data FROM {table} ORDER BY name")]

    def _del_doc(self, table: str, name: str) -> bool:
        return self._x(f"DELETE FROM {table} WHERE name=?", (name,)).rowcount > 0

    def put_nsf(self, data: dict[str, Any]) -> None:
        if data.get("password"):
            raise ValueError("inline passwords are not stored; use a password file")
        self._put_doc("nsf", data)

    def get_nsf(self, name: str) -> dict[str, Any] | None:
        return self._get_doc("nsf", name)

    def list_nsfs(self) -> list[dict[str, Any]]:
        return self._list_docs("nsf")

    def delete_nsf(self, name: str) -> bool:
        return self._del_doc("nsf", name)

    def put_profile(self, data: dict[str, Any]) -> None:
        self._put_doc("crypto_profile", data)

    def get_profile(self, name: str) -> dict[str, Any] | None:
        return self._get_doc("crypto_profile", name)

    def list_profiles(self) -> list[dict[str, Any]]:
        return self._list_docs("crypto_profile")

    def delete_profile(self, name: str) -> bool:
        return self._del_doc("crypto_profile", name)

    # ---- policies ---------------------------------------------------------------------------

    def put_policy(self, name: str, data: dict[str, Any], group: str | None = None) -> int:
        with self.transaction():
            self._x("INSERT INTO policy (name, data, grp, updated) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET data=excluded.data, grp=excluded.grp, "
                    "updated=excluded.updated",
                    (name, json.dumps(data, sort_keys=True), group, time.time()))
            row = self._x("SELECT id FROM policy WHERE name=?", (name,)).fetchone()
        return int(row[0])

    @staticmethod
    def _policy(r: sqlite3.Row) -> PolicyRecord:
        return PolicyRecord(name=r["name"], policy_id=r["id"], data=json.loads(r["data"]),
                            group=r["grp"], status=r["status"], error=r["error"],
                            generation=r["generation"], updated=r["updated"])

    def get_policy(self, name: str) -> PolicyRecord | None:
        r = self._x("SELECT * FROM policy WHERE name=?", (name,)).fetchone()
        return None if r is None else self._policy(r)

    def list_policies(self) -> list[PolicyRecord]:
        return [self._policy(r) for r in self._x("SELECT * FROM policy ORDER BY name")]

    def delete_policy(self, name: str) -> bool:
        """Also drops the policy's SAs, SPD names and schedule (foreign key cascade)."""
        with self._lock:
            self._sa_cache.pop(name, None)
            return self._x("DELETE FROM policy WHERE name=?", (name,)).rowcount > 0

    def set_policy_status(self, name: str, status: str, error: str | None = None) -> None:
        cur = self._x("UPDATE policy SET status=?, error=?, updated=? WHERE name=?",
                      (status, error, time.time(), name))
        if cur.rowcount == 0:
            raise KeyError(name)

    def set_policy_generation(self, name: str, generation: int) -> None:
        cur = self._x("UPDATE policy SET generation=?, updated=? WHERE name=?",
                      (generation, time.time(), name))
        if cur.rowcount == 0:
            raise KeyError(name)

    # ---- SAs ----------------------------------------------------------------------------------

    def add_sas(self, sas: Iterable[SaRecord]) -> None:
        sas = list(sas)
        with self.transaction():
            self.version += 1
            self._db.executemany(
                "INSERT INTO sa VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(s.policy, s.flow, int(s.a2b), s.generation, s.spi,
                  json.dumps(s.keys.to_dict()), s.sender, s.receiver, s.sender_src,
                  s.sender_dst, s.receiver_src, s.receiver_dst, s.created) for s in sas])
            for name in {s.policy for s in sas}:
                have = self._sa_cache.get(name)
                if have is not None:
                    self._sa_cache[name] = sorted(
                        [*have, *(s for s in sas if s.policy == name)], key=_sa_order)

    @staticmethod
    def _sa(r: sqlite3.Row) -> SaRecord:
        return SaRecord(
            policy=r["policy"], flow=r["flow"], a2b=bool(r["a2b"]), generation=r["generation"],
            spi=r["spi"], keys=SaKeys.from_dict(json.loads(r["keys"])), sender=r["sender"],
            receiver=r["receiver"], sender_src=r["sender_src"], sender_dst=r["sender_dst"],
            receiver_src=r["receiver_src"], receiver_dst=r["receiver_dst"],
            created=r["created"])

    def get_sas(self, policy: str | None = None, generation: int | None = None,
                nsf: str | None = None) -> list[SaRecord]:
        if policy is not None and nsf is None:
            with self._lock:
                have = self._sa_cache.get(policy)
                if have is None:
                    have = self._sa_cache[policy] = self._query_sas(policy, None, None)
            return [s for s in have if generation is None or s.generation == generation]
        return self._query_sas(policy, generation, nsf)

    def _query_sas(self, policy: str | None, generation: int | None, nsf: str | None
                   ) -> list[SaRecord]:
        where, args = [], []
        if policy is not None:
            where.append("policy=?")
            args.append(policy)
        if generation is not None:
            where.append("generation=?")
            args.append(generation)
        if nsf is not None:
            where.append("(sender=? OR receiver=?)")
            args += [nsf, nsf]
        sql = "SELECT * FROM sa" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY policy, generation, flow, a2b DESC"
        return [self._sa(r) for r in self._x(sql, args)]

    def delete_sas(self, policy: str, generations: Iterable[int] | None = None) -> int:
        with self._lock:
            have = self._sa_cache.get(policy)
            if generations is None:
                self._sa_cache.pop(policy, None)
                return self._x("DELETE FROM sa WHERE policy=?", (policy,)).rowcount
            gens = list(generations)
            if not gens:
                return 0
            if have is not None:
                self._sa_cache[policy] = [s for s in have if s.generation not in gens]
            marks = ",".join("?" * len(gens))
            return self._x(f"DELETE FROM sa WHERE policy=? AND generation IN ({marks})",
                           (policy, *gens)).rowcount

    def _tuples(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows as plain tuples (cheaper than sqlite3.Row for bulk reads)."""
        with self._lock:
            cur = self._db.cursor()
            cur.row_factory = None
            return cur.execute(sql).fetchall()

    def policy_views(self) -> list[PolicyView]:
        return [PolicyView(*r) for r in self._tuples(
            "SELECT name, grp, json_extract(data, '$.a.nsf'), json_extract(data, '$.b.nsf'), "
            "status, error, generation, updated FROM policy ORDER BY name")]

    def sa_views(self) -> list[SaView]:
        return [SaView(r[0], r[1], bool(r[2]), *r[3:]) for r in self._tuples(
            "SELECT policy, flow, a2b, generation, spi, sender, receiver, sender_src, "
            "sender_dst, receiver_src, receiver_dst, created FROM sa "
            "ORDER BY policy, generation, flow, a2b DESC")]

    def spi_in_use(self, nsf: str, dst: str, spi: int) -> bool:
        row = self._x(
            "SELECT 1 FROM sa WHERE spi=? AND ((sender=? AND sender_dst=?) OR "
            "(receiver=? AND receiver_dst=?)) LIMIT 1", (spi, nsf, dst, nsf, dst)).fetchone()
        return row is not None

    # ---- SPD entry names --------------------------------------------------------------------

    def put_spd(self, policy: str, nsf: str, names: Iterable[str]) -> None:
        with self.transaction():
            self._x("DELETE FROM spd WHERE policy=? AND nsf=?", (policy, nsf))
            for n in names:
                self._x("INSERT INTO spd VALUES (?,?,?)", (policy, nsf, n))

    def get_spd(self, policy: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self._x("SELECT nsf, name FROM spd WHERE policy=? ORDER BY rowid", (policy,)):
            out.setdefault(r[0], []).append(r[1])
        return out

    def delete_spd(self, policy: str, nsf: str | None = None) -> None:
        if nsf is None:
            self._x("DELETE FROM spd WHERE policy=?", (policy,))
        else:
            self._x("DELETE FROM spd WHERE policy=? AND nsf=?", (policy, nsf))

    # ---- schedule -----------------------------------------------------------------------------

    def put_schedule(self, policy: str, due: float | None, state: dict[str, Any]) -> None:
        self._x("INSERT INTO schedule VALUES (?,?,?) ON CONFLICT(policy) DO UPDATE SET "
                "due=excluded.due, state=excluded.state",
                (policy, due, json.dumps(state, sort_keys=True)))

    def get_schedule(self, policy: str) -> tuple[float | None, dict[str, Any]] | None:
        r = self._x("SELECT due, state FROM schedule WHERE policy=?", (policy,)).fetchone()
        return None if r is None else (r[0], json.loads(r[1]))

    def list_schedule(self) -> list[tuple[str, float | None, dict[str, Any]]]:
        return [(r[0], r[1], json.loads(r[2])) for r in
                self._x("SELECT policy, due, state FROM schedule "
                        "ORDER BY due IS NULL, due, policy")]

    def delete_schedule(self, policy: str) -> None:
        self._x("DELETE FROM schedule WHERE policy=?", (policy,))

    # ---- meta ---------------------------------------------------------------------------------

    def put_meta(self, key: str, value: str) -> None:
        self._x("INSERT INTO meta VALUES (?,?) ON CONFLICT(key) DO UPDATE SET "
                "value=excluded.value", (key, value))

    def get_meta(self, key: str) -> str | None:
        r = self._x("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if r is None else str(r[0])

    def delete_meta(self, key: str) -> None:
        self._x("DELETE FROM meta WHERE key=?", (key,))
