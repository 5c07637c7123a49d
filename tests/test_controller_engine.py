"""Scheduler + translation + store together, against two simulated NSF datastores: install,
several make-before-break rekeys, re-creation, deletion; the operational state validates
against i2nsf-flow-policy; keys never reach the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree

from controller.core.store import SqliteStore
from controller.ipsec import translate
from controller.ipsec.checks import check_config
from controller.ipsec.keys import KeyManager
from controller.ipsec.ledger import SaLedger, state_xml
from controller.ipsec.model import parse_config
from controller.ipsec.rekey import Phase, RekeyScheduler
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent import ikeless

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests"


@pytest.fixture(scope="module")
def schema() -> Iterator[YangSchema]:
    ctx = create_context([*IPSEC_MODULES, "i2nsf-flow-policy"])
    yield YangSchema(ctx)
    ctx.destroy()


def nsf(name: str, dp: str, prefix: str) -> str:
    return (f"<nsf><name>{name}</name><management><address>192.0.2.250</address>"
            f"<username>admin</username><private-key-file>/k</private-key-file>"
            f"<host-key>{HOSTKEY}</host-key></management>"
            f"<data-plane-address>{dp}</data-plane-address>"
            f"<protected-prefix>{prefix}</protected-prefix></nsf>")


CONFIG = (
    f'<data xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>'
    + nsf("gw1", "198.51.100.1", "192.0.2.0/24") + nsf("gw2", "198.51.100.2", "203.0.113.0/24")
    + "</nsfs><crypto-profiles><crypto-profile><name>fast</name>"
    "<lifetime-soft><time>3</time></lifetime-soft><lifetime-hard><time>5</time>"
    "</lifetime-hard></crypto-profile></crypto-profiles><policies><policy><name>p1</name>"
    "<endpoint-a><nsf>gw1</nsf></endpoint-a><endpoint-b><nsf>gw2</nsf></endpoint-b>"
    "<crypto-profile>fast</crypto-profile></policy></policies></flow-protection></data>"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_lifecycle(schema: YangSchema, tmp_path: Path, caplog: pytest.LogCaptureFixture
                   ) -> None:
    caplog.set_level(logging.DEBUG)
    root = etree.fromstring(CONFIG)
    schema.validate_config(root)
    cfg = parse_config(root)
    check_config(cfg)
    pol = cfg.policies["p1"]

    store = SqliteStore(tmp_path / "c.db")
    clock = Clock()
    km = KeyManager(store)
    ledger = SaLedger(store, km, clock)
    sched = RekeyScheduler(grace=0.5)
    pid = store.put_policy("p1", pol.to_dict())
    plan = translate.make_plan(pol, cfg, pid)
    soft, hard = pol.lifetimes(cfg.profiles["fast"])
    sched.add("p1", soft.time, hard.time, clock.now)
    agents = {"gw1": Datastores(schema, []), "gw2": Datastores(schema, [])}
    all_keys: set[str] = set()

    def step() -> Phase:
        w = sched.next_wakeup()
        assert w is not None
        clock.now = max(clock.now, w)
        (action,) = sched.due(clock.now)
        for n, conf in ledger.prepare(plan, action).items():
            agents[n].edit_config("running", conf)
        ledger.done(plan, action)
        sched.completed(action, clock.now)
        for sa in store.get_sas("p1"):
            all_keys.add(sa.keys.enc_key.hex())
        # at every point: exactly one outbound SA per SPD entry, and every outbound SA has
        # its inbound twin on the peer
        parsed = {n: ikeless.parse(a.get_config("running")) for n, a in agents.items()}
        for n, other in (("gw1", "gw2"), ("gw2", "gw1")):
            outs = [e for e in parsed[n].sad if e.direction == "outbound"]
            assert len(outs) == 1
            twin = parsed[other].sad_by_name()[outs[0].name]
            assert twin.direction == "inbound" and twin.spi == outs[0].spi
        return action.kind

    kinds = [step() for _ in range(1 + 3 * 5)]
    assert kinds[0] is Phase.INSTALL
    assert kinds[1:4] == [Phase.ADD_INBOUND, Phase.SWITCH_OUTBOUND, Phase.REMOVE_OLD]
    rec = store.get_policy("p1")
    assert rec is not None and rec.generation == 5
    assert {s.generation for s in store.get_sas("p1")} == {5}
    for a in agents.values():
        assert {e.name for e in ikeless.parse(a.get_config("running")).sad} == {
            "fp/p1/0/a2b/5", "fp/p1/0/b2a/5"}

    # state view: validates against the module, shows SAs on both NSFs, no keys
    st = state_xml(store, sched)
    text = etree.tostring(st).decode()
    # parse_only: full validation would want ietf-yang-library data; types and keys are checked
    tree = schema.ctx.parse_data_mem(text, "xml", strict=True, parse_only=True)
    assert tree is not None
    tree.free()
    assert st.findtext(f"{{{FP}}}policy/{{{FP}}}status") == "active"
    assert len(st.findall(f"{{{FP}}}policy/{{{FP}}}sa")) == 4
    assert not any(k in text for k in all_keys)

    # live SA hard-expires on an NSF: re-created as a new generation, others removed
    assert sched.on_hard_expire("p1", 5, clock.now)
    assert step() is Phase.INSTALL
    assert {s.generation for s in store.get_sas("p1")} == {6}

    # delete from what the store knows
    for n, conf in ledger.delete_edits("p1").items():
        agents[n].edit_config("running", conf)
    sched.remove("p1")
    store.delete_policy("p1")
    for a in agents.values():
        p = ikeless.parse(a.get_config("running"))
        assert p.spd == () and p.sad == ()

    assert len(all_keys) == 2 * 7
    for k in all_keys:
        assert k not in caplog.text
        assert translate._hex(bytes.fromhex(k)) not in caplog.text
    store.close()


def test_retry_resends_the_same_sas(schema: YangSchema, tmp_path: Path) -> None:
    root = etree.fromstring(CONFIG)
    cfg = parse_config(root)
    store = SqliteStore(tmp_path / "c.db")
    ledger = SaLedger(store, KeyManager(store), Clock())
    pid = store.put_policy("p1", cfg.policies["p1"].to_dict())
    plan = translate.make_plan(cfg.policies["p1"], cfg, pid)
    sched = RekeyScheduler()
    sched.add("p1", 3, 5, 0.0)
    (a,) = sched.due(0.0)
    first = {n: etree.tostring(c) for n, c in ledger.prepare(plan, a).items()}
    sched.failed(a, 0.0, "gw2 unreachable")
    (b,) = sched.due(10.0)
    again = {n: etree.tostring(c) for n, c in ledger.prepare(plan, b).items()}
    assert first == again
    assert len(store.get_sas("p1")) == 2
    store.close()


def test_state_view_rerenders_only_on_change(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached operational state follows every change of the store and of the timers."""
    from controller.ipsec import ledger as engine

    store = SqliteStore(tmp_path / "c.db")
    sched = RekeyScheduler()
    store.put_policy("p1", {"name": "p1", "a": {"nsf": "gw1"}, "b": {"nsf": "gw2"}})
    sched.add("p1", 100, 120, 0.0)
    renders: list[int] = []
    real = engine._state_text

    def counting(st: SqliteStore, sc: RekeyScheduler, *rest: object) -> str:
        renders.append(1)
        return real(st, sc, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_state_text", counting)
    view = engine.StateView()
    q = f"{{{FP}}}"

    def status() -> str | None:
        return view(store, sched).findtext(f"{q}policy/{q}status")

    assert status() == "pending" and len(renders) == 1
    assert status() == "pending" and len(renders) == 1  # nothing changed: re-used
    (a,) = sched.due(0.0)
    sched.completed(a, 0.0)  # a timer change alone
    assert status() == "active" and len(renders) == 2
    store.set_policy_generation("p1", 4)  # a store change alone
    assert view(store, sched).findtext(f"{q}policy/{q}generation") == "4"
    assert len(renders) == 3
    with pytest.raises(RuntimeError), store.transaction():  # a rollback counts too
        store.set_policy_generation("p1", 5)
        raise RuntimeError
    assert view(store, sched).findtext(f"{q}policy/{q}generation") == "4"
    assert len(renders) == 4


def test_generation_made_ahead_is_used_once_and_released_when_stale(tmp_path: Path) -> None:
    cfg = parse_config(etree.fromstring(CONFIG))
    store = SqliteStore(tmp_path / "c.db")
    km = KeyManager(store)
    ledger = SaLedger(store, km, Clock())
    pid = store.put_policy("p1", cfg.policies["p1"].to_dict())
    plan = translate.make_plan(cfg.policies["p1"], cfg, pid)
    ledger.pregenerate(plan, 1)
    ahead = {(sa.spi, sa.keys.enc_key) for sa in ledger._next["p1"][2]}
    assert km.reserved_count == 4 and store.get_sas("p1") == []  # 2 SAs, 2 holders each
    ledger.pregenerate(plan, 1)  # idempotent
    assert km.reserved_count == 4
    got = ledger.generation(plan, 1)  # the step that installs generation 1 takes them
    assert {(sa.spi, sa.keys.enc_key) for sa in got} == ahead
    assert km.reserved_count == 0 and len(store.get_sas("p1", generation=1)) == 2
    assert "p1" not in ledger._next
    # made for a plan that changed since (e.g. a new crypto profile): never used
    ledger.pregenerate(plan, 2)
    stale = {sa.keys.enc_key for sa in ledger._next["p1"][2]}
    newer = translate.make_plan(cfg.policies["p1"], cfg, pid)
    fresh = ledger.generation(newer, 2)
    assert km.reserved_count == 0 and {sa.keys.enc_key for sa in fresh}.isdisjoint(stale)
    assert all(sa.generation == 2 for sa in fresh) and "p1" not in ledger._next
    # a deleted policy's generation made ahead releases its SPIs
    ledger.pregenerate(newer, 3)
    assert km.reserved_count == 4
    ledger.forget_next(lambda name, p: False)
    assert km.reserved_count == 0 and ledger._next == {}
    store.close()
