"""HA on PostgreSQL (#21): the leadership lease and its fencing epoch, fenced store writes,
and what several instances sharing one store see — on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from controller.core.lease import Lease, LeaseKeeper
from controller.core.store import SqliteStore
from controller.core.store_pg import PG_MIGRATIONS, Fenced, PgStore, tables
from tests.pgserver import PgServer, fresh_dsn
from tests.test_controller_store import sa


@pytest.fixture
def dsn(pg: PgServer) -> str:
    return fresh_dsn(pg)


@pytest.fixture
def store(dsn: str) -> Iterator[PgStore]:
    s = PgStore(dsn)
    yield s
    s.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_migrations_once_even_when_instances_start_together(dsn: str) -> None:
    stores: list[PgStore] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(PgStore(dsn))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(stores) == 4
    assert {s.schema_version() for s in stores} == {PG_MIGRATIONS[-1][0]}
    n = stores[0]._db.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert n is not None and n[0] == len(PG_MIGRATIONS)
    assert {"nsf", "policy", "sa", "spd", "schedule", "meta", "lease"} <= set(tables(stores[0]))
    for s in stores:
        s.close()


def test_views_and_order_match_sqlite(store: PgStore, tmp_path: Any) -> None:
    lite = SqliteStore(tmp_path / "c.db")
    try:
        for s in (store, lite):
            # byte order as SQLite sorts TEXT, whatever the database's locale
            for name in ("b", "B", "a", "_x", "Z1"):
                s.put_policy(name, {"name": name, "a": {"nsf": "gw1"}, "b": {"nsf": "gw2"}})
            s.add_sas([sa("a", gen=1), sa("a", gen=0, a2b=False, spi=7), sa("b", spi=9)])
            s.put_spd("a", "gw1", ["z", "y", "x"])
            s.put_schedule("a", None, {})
            s.put_schedule("b", 5.0, {})
            s.put_schedule("B", 1.0, {})
        strip = [dataclasses.replace(v, updated=0) for v in lite.policy_views()]
        assert [dataclasses.replace(v, updated=0) for v in store.policy_views()] == strip
        assert [v.name for v in strip] == ["B", "Z1", "_x", "a", "b"]
        assert store.sa_views() == lite.sa_views()
        assert store.get_spd("a") == lite.get_spd("a") == {"gw1": ["z", "y", "x"]}
        assert store.list_schedule() == lite.list_schedule()
    finally:
        lite.close()


def test_a_second_instance_never_reads_stale_state(dsn: str) -> None:
    active, standby = PgStore(dsn), PgStore(dsn)
    try:
        active.put_policy("p1", {"name": "p1"})
        assert standby.get_sas("p1") == []
        v = standby.changed()
        active.add_sas([sa(gen=0)])
        assert [s.generation for s in standby.get_sas("p1")] == [0]
        active.delete_sas("p1", [0])
        assert standby.get_sas("p1") == []  # no cache on an unfenced instance
        assert standby.changed() != v
    finally:
        active.close()
        standby.close()


def test_fenced_store_refuses_writes_of_an_old_epoch(dsn: str) -> None:
    old, new = PgStore(dsn), PgStore(dsn)
    try:
        a, b = Lease(dsn, ttl=0.3), Lease(dsn, ttl=5)
        e1 = run(a.try_acquire())
        assert e1 == 1
        old.fence("controller", e1)
        old.put_policy("p1", {"name": "p1"})
        old.add_sas([sa(gen=0)])
        time.sleep(0.35)  # the old leader is paused past its lease
        e2 = run(b.try_acquire())
        assert e2 == e1 + 1
        new.fence("controller", e2)
        before = new.get_sas("p1")
        for write in (lambda: old.add_sas([sa(gen=1, spi=99)]),
                      lambda: old.set_policy_generation("p1", 1),
                      lambda: old.put_meta("persist:gw1", "x"),
                      lambda: old.delete_policy("p1")):
            with pytest.raises(Fenced, match=r"epoch 2.*holds epoch 1"):
                write()
        with pytest.raises(Fenced), old.transaction():
            old.put_nsf({"name": "gw9"})
        assert old.get_policy("p1") is not None  # refused writes leave the connection usable
        assert new.get_sas("p1") == before and new.get_nsf("gw9") is None
        assert new.get_meta("persist:gw1") is None
        rec = new.get_policy("p1")
        assert rec is not None and rec.generation == 0
        new.set_policy_generation("p1", 4)  # the new leader writes
        run(a.close())
        run(b.close())
    finally:
        old.close()
        new.close()


def test_lease_epochs_expiry_and_release(dsn: str) -> None:
    PgStore(dsn).close()  # the schema

    async def main() -> None:
        a = Lease(dsn, ttl=0.4, address="192.0.2.1:8300")
        b = Lease(dsn, ttl=0.4, address="192.0.2.2:8300")
        assert await a.try_acquire() == 1 and a.held
        assert await b.try_acquire() is None and not b.held
        info = await b.current()
        assert info is not None and (info.holder, info.epoch, info.address) == (
            a.holder, 1, "192.0.2.1:8300") and 0 < info.remaining <= 0.4
        assert await a.renew()
        await asyncio.sleep(0.45)
        assert not a.held  # its own clock says so before anyone takes over
        assert await b.try_acquire() == 2
        assert not await a.renew() and a.epoch is None  # taken over: never renewed again
        await b.release()
        assert await a.try_acquire() == 3  # released: no wait for the expiry
        await a.close()
        await b.close()

    run(main())


def test_keepers_fail_over_within_the_lease(dsn: str) -> None:
    """Two keepers; the active one dies without releasing (its task is gone, as after
    kill -9): the standby is elected within ttl + one renewal interval."""
    PgStore(dsn).close()
    ttl = 0.6

    async def main() -> tuple[float, list[str]]:
        events: list[str] = []
        elected = asyncio.Event()

        def keeper(tag: str) -> LeaseKeeper:
            async def up(epoch: int) -> None:
                events.append(f"{tag} up {epoch}")
                elected.set()

            async def down() -> None:
                events.append(f"{tag} down")

            return LeaseKeeper(Lease(dsn, ttl=ttl), up, down)

        k1 = keeper("k1")
        k1.start()
        await asyncio.wait_for(elected.wait(), 5)
        elected.clear()
        k2 = keeper("k2")
        k2.start()
        await asyncio.sleep(ttl * 1.5)  # k1 keeps renewing: k2 stays standby
        assert events == ["k1 up 1"] and k2.info is not None and k2.info.holder == \
            k1.lease.holder
        k1.kill()  # dies: no release, no on_lost
        died = time.monotonic()
        await asyncio.wait_for(elected.wait(), ttl + 2)
        took = time.monotonic() - died
        await k2.stop()
        await k1.stop(release=False)
        return took, events

    took, events = run(main())
    assert events == ["k1 up 1", "k2 up 2", "k2 down", "k1 down"]  # down: their own stops
    assert took <= ttl + ttl / 3 + 0.3, took


def test_keeper_stands_down_when_renewal_hangs(dsn: str, pg: PgServer) -> None:
    """A renewal that never answers (the lease row locked by someone else, like a partition
    between the active and the database) ends the leadership at the local deadline."""
    PgStore(dsn).close()
    ttl = 0.6

    async def main() -> float:
        lost = asyncio.Event()
        started = asyncio.Event()

        async def up(epoch: int) -> None:
            started.set()

        async def down() -> None:
            lost.set()

        k = LeaseKeeper(Lease(dsn, ttl=ttl), up, down)
        k.start()
        await asyncio.wait_for(started.wait(), 5)
        blocker = await psycopg.AsyncConnection.connect(dsn)
        await blocker.execute("SELECT * FROM lease FOR UPDATE")  # held open: renew blocks
        t0 = time.monotonic()
        await asyncio.wait_for(lost.wait(), ttl + 1)
        took = time.monotonic() - t0
        assert not k.leading and not k.lease.held
        await blocker.rollback()
        await blocker.close()
        await k.stop()
        return took

    assert run(main()) <= ttl + 0.2


def test_store_and_ha_config(tmp_path: Any) -> None:
    import os

    from controller.config import parse_config
    from netconf_core.configfile import ConfigError

    assert parse_config({}, tmp_path).store_backend == "sqlite"
    dsn = tmp_path / "pg.dsn"
    dsn.write_text("host=127.0.0.1 dbname=i2nsf user=ctl password=x\n")
    os.chmod(dsn, 0o600)
    cfg = parse_config({"server": {"port": 8301}, "store": {"backend": "postgres",
                                                             "dsn_file": "pg.dsn"},
                        "ha": {"lease_ttl": 3, "advertise": "ctl-a:8301"}}, tmp_path)
    assert cfg.store_dsn == "host=127.0.0.1 dbname=i2nsf user=ctl password=x"
    assert cfg.ha is not None and (cfg.ha.lease_ttl, cfg.ha.advertise) == (3.0, "ctl-a:8301")
    cfg = parse_config({"store": {"backend": "postgres", "dsn_file": "pg.dsn"}}, tmp_path)
    assert cfg.ha is not None and cfg.ha.advertise == "127.0.0.1:8300"  # [ha] defaults
    bad = [({"store": {"backend": "mysql"}}, "expected \"sqlite\" or \"postgres\""),
           ({"store": {"backend": "postgres"}}, "needs dsn_file"),
           ({"ha": {}}, "need backend = \"postgres\""),
           ({"store": {"backend": "postgres", "dsn_file": "nope"}}, "No such file"),
           ({"store": {"backend": "postgres", "dsn_file": "pg.dsn"},
             "ha": {"lease_ttl": 0}}, "lease_ttl 0.0"),
           ({"store": {"backend": "postgres", "dsn_file": "pg.dsn"},
             "ha": {"ttl": 1}}, "unknown key 'ttl'")]
    for data, msg in bad:
        with pytest.raises(ConfigError, match=msg):
            parse_config(data, tmp_path)
    os.chmod(dsn, 0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        parse_config({"store": {"backend": "postgres", "dsn_file": "pg.dsn"}}, tmp_path)


def test_store_reconnects_after_the_server_dropped_it(store: PgStore, dsn: str) -> None:
    store.put_policy("p1", {"name": "p1"})
    pid = store._db.info.backend_pid
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        store.get_policy("p1")  # the statement that finds the connection gone fails
    rec = store.get_policy("p1")  # the next one reconnects
    assert rec is not None and rec.name == "p1"
    assert store._db.info.backend_pid != pid
