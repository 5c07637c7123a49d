"""Controller store: CRUD, transactions, persistence across restarts, file modes (it holds
keys) and SPI uniqueness queries — on both backends (SQLite WAL, and PostgreSQL on a real
server started once per session by tests.pgserver)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.core.store import MIGRATIONS, SaRecord, SqliteStore, Store
from controller.ipsec.keys import KeyManager, SaKeys
from tests.pgserver import fresh_dsn


def sa(policy: str = "p1", gen: int = 0, a2b: bool = True, spi: int = 0x10001,
       flow: int = 0) -> SaRecord:
    snd, rcv = ("gw1", "gw2") if a2b else ("gw2", "gw1")
    return SaRecord(
        policy=policy, flow=flow, a2b=a2b, generation=gen, spi=spi,
        keys=SaKeys(b"\x01" * 20, b"", b"\x02" * 8), sender=snd, receiver=rcv,
        sender_src="198.51.100.1" if a2b else "198.51.100.2",
        sender_dst="198.51.100.2" if a2b else "198.51.100.1",
        receiver_src="198.51.100.1" if a2b else "198.51.100.2",
        receiver_dst="198.51.100.2" if a2b else "198.51.100.1",
        created=1000.0,
    )


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens a store on the same backing data each time it is called (a restart)."""
    if request.param == "sqlite":
        return lambda: SqliteStore(tmp_path / "controller.db")
    from controller.core.store_pg import PgStore

    dsn = fresh_dsn(request.getfixturevalue("pg"))
    return lambda: PgStore(dsn)


@pytest.fixture
def db(opener: Callable[[], Store]) -> Iterator[Any]:
    s = opener()
    yield s
    s.close()


def test_file_mode_and_wal(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        s = SqliteStore(tmp_path / "c.db")
        s.put_nsf({"name": "gw1"})
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for p in tmp_path.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        assert (tmp_path / "c.db-wal").exists()
        s.close()
        # an existing file with a lax mode is tightened on open
        os.chmod(tmp_path / "c.db", 0o644)
        SqliteStore(tmp_path / "c.db").close()
        assert stat.S_IMODE((tmp_path / "c.db").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_documents_crud(db: Any) -> None:
    db.put_nsf({"name": "gw1", "address": "192.0.2.1"})
    db.put_nsf({"name": "gw1", "address": "192.0.2.9"})
    db.put_nsf({"name": "gw0", "address": "192.0.2.8"})
    assert db.get_nsf("gw1") == {"name": "gw1", "address": "192.0.2.9"}
    assert [n["name"] for n in db.list_nsfs()] == ["gw0", "gw1"]
    assert db.delete_nsf("gw1") and not db.delete_nsf("gw1")
    assert db.get_nsf("gw1") is None
    with pytest.raises(ValueError):
        db.put_nsf({"name": "x", "password": "s3cret"})
    db.put_profile({"name": "gcm", "encryption": 20})
    assert db.get_profile("gcm") == {"name": "gcm", "encryption": 20}
    assert len(db.list_profiles()) == 1 and db.delete_profile("gcm")


def test_policies_sas_and_cascade(db: Any) -> None:
    pid = db.put_policy("p1", {"name": "p1"})
    assert db.put_policy("p1", {"name": "p1", "v": 2}) == pid  # id is stable on update
    pid2 = db.put_policy("t:a:b", {"name": "t:a:b"}, group="t")
    assert pid2 != pid
    rec = db.get_policy("p1")
    assert rec is not None and rec.status == "pending" and rec.data["v"] == 2
    db.set_policy_status("p1", "failed", "gw2 unreachable")
    db.set_policy_generation("p1", 3)
    rec = db.get_policy("p1")
    assert rec is not None and (rec.status, rec.error, rec.generation) == (
        "failed", "gw2 unreachable", 3)
    with pytest.raises(KeyError):
        db.set_policy_status("nope", "active")

    db.add_sas([sa(gen=0), sa(gen=0, a2b=False, spi=0x10002), sa(gen=1, spi=0x10003)])
    got = db.get_sas("p1")
    assert [(s.generation, s.a2b) for s in got] == [(0, True), (0, False), (1, True)]
    assert got[0].keys == SaKeys(b"\x01" * 20, b"", b"\x02" * 8)
    assert got[0].name == "fp/p1/0/a2b/0"
    assert len(db.get_sas("p1", generation=0)) == 2
    assert len(db.get_sas(nsf="gw1")) == 3
    assert db.spi_in_use("gw1", "198.51.100.2", 0x10001)  # as sender
    assert db.spi_in_use("gw2", "198.51.100.2", 0x10001)  # as receiver
    assert not db.spi_in_use("gw2", "198.51.100.9", 0x10001)
    assert not db.spi_in_use("gw3", "198.51.100.2", 0x10001)

    db.put_spd("p1", "gw1", ["fp/p1/0/out", "fp/p1/0/in"])
    db.put_spd("p1", "gw2", ["fp/p1/0/out", "fp/p1/0/in"])
    assert db.get_spd("p1")["gw1"] == ["fp/p1/0/out", "fp/p1/0/in"]
    db.put_schedule("p1", 1234.5, {"phase": "idle"})
    db.put_schedule("t:a:b", None, {"phase": "waiting-acquire"})
    assert db.list_schedule()[0] == ("p1", 1234.5, {"phase": "idle"})
    assert db.get_schedule("t:a:b") == (None, {"phase": "waiting-acquire"})

    assert db.delete_sas("p1", [0]) == 2
    assert db.delete_sas("p1", []) == 0
    assert db.delete_policy("p1")
    assert db.get_sas("p1") == [] and db.get_spd("p1") == {}
    assert db.get_schedule("p1") is None


def test_transactions_roll_back_and_nest(db: Any) -> None:
    db.put_policy("p1", {"name": "p1"})
    with pytest.raises(RuntimeError), db.transaction():
        db.add_sas([sa(gen=5)])
        db.set_policy_generation("p1", 5)
        raise RuntimeError("push to gw2 failed")
    assert db.get_sas("p1") == []
    rec = db.get_policy("p1")
    assert rec is not None and rec.generation == 0

    with db.transaction():
        db.add_sas([sa(gen=1)])
        with pytest.raises(ValueError), db.transaction():
            db.add_sas([sa(gen=2, spi=9)])
            raise ValueError("inner")
        db.set_policy_generation("p1", 1)
    assert [s.generation for s in db.get_sas("p1")] == [1]
    # a duplicate SA is refused and nothing of the batch is kept
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError / UniqueViolation
        db.add_sas([sa(gen=7), sa(gen=1)])
    assert [s.generation for s in db.get_sas("p1")] == [1]


def test_restart_persistence(opener: Callable[[], Any]) -> None:
    s = opener()
    pid = s.put_policy("p1", {"name": "p1"})
    s.add_sas([sa()])
    s.put_schedule("p1", 99.0, {"phase": "switch-outbound", "generation": 1})
    s.close()
    s = opener()
    try:
        rec = s.get_policy("p1")
        assert rec is not None and rec.policy_id == pid
        assert s.get_sas("p1")[0].keys.enc_key == b"\x01" * 20
        assert s.get_schedule("p1") == (99.0, {"phase": "switch-outbound", "generation": 1})
        migrations = MIGRATIONS
        if type(s) is not SqliteStore:
            from controller.core.store_pg import PG_MIGRATIONS as migrations
        assert s.schema_version() == migrations[-1][0]
        # ids are never reused, even after a delete (reqids on NSFs could still exist)
        s.delete_policy("p1")
        assert s.put_policy("p2", {"name": "p2"}) > pid
    finally:
        s.close()


def test_key_manager_checks_the_store(db: Any) -> None:
    db.put_policy("p1", {"name": "p1"})
    db.add_sas([sa(spi=500), sa(a2b=False, spi=501)])
    km = KeyManager(db, spi_min=500, spi_max=502)
    # 500 is taken towards 198.51.100.2, 501 only towards 198.51.100.1
    for _ in range(20):
        km.release_all()
        assert km.allocate_spi([("gw1", "198.51.100.2"), ("gw2", "198.51.100.2")]) in (501, 502)
        km.release_all()
        assert km.allocate_spi([("gw2", "198.51.100.1"), ("gw1", "198.51.100.1")]) in (500, 502)
