"""The engine's combined transactions, against NSFs in this process: the shared NETCONF
server core with real (libyang-validated) datastores, reached by the controller's own NETCONF
client over a loopback pipe instead of SSH.

* many actions due at once → one edit-config, one confirmed commit, one confirm per NSF;
* a policy one NSF refuses fails alone (with that NSF's error), the others commit;
* an unreachable NSF fails its own policies at once, the others commit in one transaction;
* across rekeys of many policies in one batch, make-before-break holds at every commit of
  every NSF: nobody sends on an SA its peer does not accept yet, and no NSF drops an inbound
  SA its peer still sends on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from controller.core import nc_client
from controller.core.engine import ServiceOptions
from controller.core.nc_client import BASE_11, NC, NcClient, NcError
from controller.core.store import SqliteStore
from controller.ipsec.checks import check_config
from controller.ipsec.model import parse_config
from controller.ipsec.service import FlowService
from netconf_core.applier import ConfigChange, Notify
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.features import set_features
from netconf_core.schema import YangSchema
from netconf_core.server import NetconfServer, ServerConfig
from netconf_core.session import NetconfSession
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent import ikeless
from nsf_agent.agent import NETCONF_FEATURES, PROTOCOL_MODULES

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
HOSTKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyForTests"


@pytest.fixture(scope="module")
def schema() -> Iterator[YangSchema]:
    ctx = create_context([*PROTOCOL_MODULES, *IPSEC_MODULES])
    set_features(ctx, "ietf-netconf", list(NETCONF_FEATURES))
    yield YangSchema(ctx)
    ctx.destroy()


class Nsf:
    """One in-process NSF. Its applier sees every change of running: it can refuse changes
    touching a given policy, and checks make-before-break against the other NSFs."""

    name = "recorder"

    def __init__(self, schema: YangSchema, label: str, farm: dict[int, Nsf]) -> None:
        self.label = label
        self.farm = farm
        self.refuse: str | None = None  # refuse changes adding SAs of this policy
        self.on_apply: Callable[[ConfigChange], None] | None = None  # called in apply
        self.violations: list[str] = []
        self.ops: list[str] = []
        self.server = NetconfServer(schema, ServerConfig(confirm_timeout=60))
        self.ds = Datastores(schema, [self])
        self.server.attach(self.ds)
        dispatch = self.server.dispatch

        def counting(sess: NetconfSession, rpc: etree._Element) -> Any:
            ops = [c for c in rpc if isinstance(c.tag, str)]
            self.ops.append(etree.QName(ops[0]).localname if ops else "?")
            return dispatch(sess, rpc)

        self.server.dispatch = counting  # type: ignore[method-assign]

    def count(self, op: str) -> int:
        return self.ops.count(op)

    def sad(self) -> dict[str, str]:
        """SA name → direction in running."""
        return {e.name: e.direction for e in ikeless.parse(self.ds.get_config("running")).sad}

    def spd(self) -> set[str]:
        return {e.name for e in ikeless.parse(self.ds.get_config("running")).spd}

    # ---- the applier interface ---------------------------------------------------------

    def bind(self, notify: Notify) -> None:
        return None

    def reconcile(self, running: etree._Element) -> None:
        return None

    def validate(self, change: ConfigChange) -> None:
        if self.refuse is None:
            return
        before = {e.name for e in ikeless.parse(change.old).sad}
        for e in ikeless.parse(change.new).sad:
            if e.name.startswith(f"fp/{self.refuse}/") and e.name not in before:
                raise RpcError("application", "operation-failed",
                               f"{self.label} refuses SA {e.name}")

    def prepare(self, change: ConfigChange) -> None:
        return None

    def apply(self, change: ConfigChange) -> None:
        if self.on_apply is not None:
            self.on_apply(change)
        old = {e.name: e.direction for e in ikeless.parse(change.old).sad}
        new = {e.name: e.direction for e in ikeless.parse(change.new).sad}
        peers = [n.sad() for n in self.farm.values() if n is not self]
        for name, d in new.items():
            if d == "outbound" and not any(p.get(name) == "inbound" for p in peers):
                self.violations.append(f"{self.label} sends on {name}, no peer accepts it")
        for name, d in old.items():
            if d == "inbound" and name not in new and any(
                    p.get(name) == "outbound" for p in peers):
                self.violations.append(f"{self.label} dropped {name}, a peer still sends")

    def abort(self, change: ConfigChange) -> None:
        return None

    def state(self, running: etree._Element) -> list[etree._Element]:
        return []

    def close(self) -> None:
        return None


class _Pipe:
    """The client's end: what it writes goes to the server session (on the next tick)."""

    def __init__(self, sess: NetconfSession) -> None:
        self.sess = sess

    def write(self, data: bytes) -> None:
        asyncio.get_running_loop().call_soon(self.sess.data_received, data)

    def close(self) -> None:
        self.sess.connection_lost()

    async def wait_closed(self) -> None:
        return None


def loopback(farm: dict[int, Nsf]) -> Callable[..., Awaitable[None]]:
    """A replacement for NcClient.connect that reaches farm[port] without SSH."""

    async def connect(self: NcClient, host: str, port: int, username: str, **_: Any) -> None:
        nsf = farm.get(port)
        if nsf is None:
            raise NcError(f"cannot connect to {host}:{port}: connection refused")
        loop = asyncio.get_running_loop()
        nsf.server.bind_loop(loop)
        self._hello = loop.create_future()
        sess = nsf.server.new_session(username, "127.0.0.1",
                                      lambda b: loop.call_soon(self._data, b),
                                      lambda: loop.call_soon(self._lost, None))
        self.chan = self.conn = _Pipe(sess)
        sess.start()
        hello = etree.Element(NC + "hello", nsmap={None: NC_NS})
        caps = etree.SubElement(hello, NC + "capabilities")
        for c in (nc_client.BASE_10, BASE_11):
            etree.SubElement(caps, NC + "capability").text = c
        self.chan.write(etree.tostring(hello) + b"]]>]]>")
        server_hello = await asyncio.wait_for(self._hello, 5)
        self.server_capabilities = [
            (c.text or "").strip()
            for c in server_hello.iterfind(f"{NC}capabilities/{NC}capability")]
        if BASE_11 in self.server_capabilities:
            self.framer.use_chunked()

    return connect


def nsf_xml(i: int) -> str:
    return (f"<nsf><name>gw{i}</name><management><address>127.0.0.1</address>"
            f"<port>{1000 + i}</port><username>controller</username>"
            f"<private-key-file>/nonexistent</private-key-file><host-key>{HOSTKEY}</host-key>"
            f"</management><data-plane-address>198.51.100.{i}</data-plane-address></nsf>")


def policy_xml(name: str, a: int, b: int, k: int) -> str:
    return (f"<policy><name>{name}</name><endpoint-a><nsf>gw{a}</nsf>"
            f"<prefix>10.{a}.{k}.0/24</prefix></endpoint-a><endpoint-b><nsf>gw{b}</nsf>"
            f"<prefix>10.{b}.{100 + k}.0/24</prefix></endpoint-b>"
            "<crypto-profile>fast</crypto-profile></policy>")


def config(nsfs: int, policies: list[tuple[str, int, int]]) -> str:
    return (f'<data xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>'
            + "".join(nsf_xml(i) for i in range(1, nsfs + 1))
            + "</nsfs><crypto-profiles><crypto-profile><name>fast</name><lifetime-soft><time>"
            "300</time></lifetime-soft><lifetime-hard><time>600</time></lifetime-hard>"
            "</crypto-profile></crypto-profiles><policies>"
            + "".join(policy_xml(n, a, b, k) for k, (n, a, b) in enumerate(policies))
            + "</policies></flow-protection></data>")


class Env:
    def __init__(self, schema: YangSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 up: list[int]) -> None:
        self.farm: dict[int, Nsf] = {}
        for i in up:
            self.farm[1000 + i] = Nsf(schema, f"gw{i}", self.farm)
        monkeypatch.setattr(NcClient, "connect", loopback(self.farm))
        self.svc = FlowService(SqliteStore(tmp_path / "c.db"), ServiceOptions(
            grace=0.05, rpc_timeout=5, confirm_timeout=30, retry_base=30, reconnect_min=30))

    def nsf(self, i: int) -> Nsf:
        return self.farm[1000 + i]

    def apply(self, xml: str) -> None:
        cfg = parse_config(etree.fromstring(xml))
        check_config(cfg)
        self.svc.apply_config(cfg)

    def status(self) -> dict[str, tuple[str, str | None]]:
        return {r.name: (r.status, r.error) for r in self.svc.store.list_policies()}

    async def until(self, cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not cond():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.status()}")
            await asyncio.sleep(0.01)


def run(env: Env, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        env.svc.start()
        try:
            await body()
        finally:
            await env.svc.stop()
    asyncio.run(main())


def test_many_policies_one_transaction_per_nsf_and_lossless_rekeys(
        schema: YangSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """30 policies over the 6 pairs of 4 NSFs, due at once: every NSF gets exactly one
    edit-config and one confirmed commit + confirm; then every policy rekeys at once:
    one transaction per NSF per step, make-before-break at every commit."""
    env = Env(schema, tmp_path, monkeypatch, up=[1, 2, 3, 4])
    pairs = [(a, b) for a in range(1, 5) for b in range(a + 1, 5)]
    pols = [(f"p{k}", *pairs[k % len(pairs)]) for k in range(30)]

    async def body() -> None:
        env.apply(config(4, pols))
        await env.until(lambda: all(s == "active" for s, _ in env.status().values())
                        and len(env.status()) == 30, "all active")
        for n in env.farm.values():
            assert (n.count("lock"), n.count("edit-config"), n.count("commit"),
                    n.count("unlock"), n.count("validate")) == (1, 1, 2, 1, 0), n.ops
            assert len([s for s in n.sad().values() if s == "outbound"]) == 15
            # an install writes both directions on both NSFs at once (the tunnel carries
            # nothing before): make-before-break is a property of the rekeys
            n.violations.clear()
        for name, _, _ in pols:
            env.svc.request_rekey(name)
        await env.until(lambda: all(
            r.generation == 1 and r.status == "active"
            for r in env.svc.store.list_policies()), "one rekey of every policy")
        await env.until(lambda: all(len(n.sad()) == 30 for n in env.farm.values()),
                        "old SAs removed")
        for n in env.farm.values():
            # add inbound, switch outbound, remove old: one transaction each for all 30
            assert n.count("edit-config") == 4, n.ops
            assert n.violations == []
            assert {name.rsplit("/", 1)[1] for name in n.sad()} == {"1"}

    run(env, body)


def test_refused_policy_fails_alone(schema: YangSchema, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """gw2 refuses the SAs of `bad`: the combined transaction fails, is split, and every
    other policy is installed; `bad` is failed with gw2's error and is on neither NSF."""
    env = Env(schema, tmp_path, monkeypatch, up=[1, 2, 3])
    pols = [(f"p{k}", 1, 2 + k % 2) for k in range(12)] + [("bad", 1, 2)]
    env.nsf(2).refuse = "bad"

    async def body() -> None:
        env.apply(config(3, pols))
        await env.until(lambda: len(env.status()) == 13 and all(
            s in ("active", "failed") for s, _ in env.status().values())
            and env.status()["bad"][0] == "failed", "settled")
        st = env.status()
        assert all(st[f"p{k}"][0] == "active" for k in range(12)), st
        err = env.svc.sched.timers["bad"].last_error or ""
        assert "gw2" in err and "refuses SA fp/bad/" in err
        for i in (1, 2):
            assert not any(n.startswith("fp/bad/") for n in env.nsf(i).sad())
        assert len(env.nsf(1).sad()) == 24
        # halving: a handful of transactions, not one per policy
        assert env.nsf(1).count("edit-config") <= 10, env.nsf(1).ops

    run(env, body)


def test_unreachable_nsf_fails_its_policies_only(schema: YangSchema, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """gw3 is down: its policies fail with its reason at once; the rest commit together in
    a single transaction (gw1 sees one edit-config)."""
    caplog.set_level(logging.INFO)
    env = Env(schema, tmp_path, monkeypatch, up=[1, 2])
    pols = [(f"p{k}", 1, 2) for k in range(5)] + [(f"q{k}", 1, 3) for k in range(2)]

    async def body() -> None:
        env.apply(config(3, pols))
        await env.until(lambda: len(env.status()) == 7 and all(
            s in ("active", "failed") for s, _ in env.status().values()), "settled")
        st = env.status()
        assert all(st[f"p{k}"][0] == "active" for k in range(5)), st
        for k in range(2):
            assert st[f"q{k}"][0] == "failed"
            assert "gw3" in (env.svc.sched.timers[f"q{k}"].last_error or "")
        assert env.nsf(1).count("edit-config") == 1, env.nsf(1).ops
        assert env.nsf(2).count("edit-config") == 1

    run(env, body)


def test_queued_rekeys_ride_along(schema: YangSchema, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A second rekey asked for while the first runs starts with the first one's switch
    (switch + add next inbound), and the old generation's removal rides with the next
    switch: two rekeys of 20 policies in four transactions per NSF instead of six, and
    make-before-break at every commit."""
    env = Env(schema, tmp_path, monkeypatch, up=[1, 2])
    pols = [(f"p{k}", 1, 2) for k in range(20)]

    async def body() -> None:
        env.apply(config(2, pols))
        await env.until(lambda: len(env.status()) == 20 and all(
            s == "active" for s, _ in env.status().values()), "all active")
        for n in env.farm.values():
            n.violations.clear()
        for name, _, _ in pols:
            assert env.svc.request_rekey(name) == 1
        await env.until(lambda: all(t.in_flight is not None or t.generation == 1
                                    for t in env.svc.sched.timers.values()), "rekey started")
        for name, _, _ in pols:
            assert env.svc.request_rekey(name) == 2  # queued behind the running one
        await env.until(lambda: all(
            r.generation == 2 and r.status == "active"
            for r in env.svc.store.list_policies()), "two rekeys of every policy")
        await env.until(lambda: all(len(n.sad()) == 40 for n in env.farm.values()),
                        "old SAs removed")
        for n in env.farm.values():
            # install; add 1; switch 0→1 + add 2; switch 1→2 + remove 0; remove 1
            assert n.count("edit-config") == 5, n.ops
            assert n.violations == []
            assert {name.rsplit("/", 1)[1] for name in n.sad()} == {"2"}
        assert {r.generation for r in env.svc.store.get_sas()} == {2}

    run(env, body)


def test_policy_removed_while_its_install_runs_leaves_nothing_behind(
        schema: YangSchema, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The removal arrives while the install's transaction is committing on the NSFs: once
    the install is through, the removal takes away everything it put there (SPD entries
    included, which the store only learns of when the install is recorded)."""
    env = Env(schema, tmp_path, monkeypatch, up=[1, 2])
    removed: list[bool] = []

    def remove_now(change: ConfigChange) -> None:
        if not removed and ikeless.parse(change.new).sad:
            removed.append(True)
            env.apply(config(2, []))

    env.nsf(1).on_apply = remove_now

    async def body() -> None:
        env.apply(config(2, [("p0", 1, 2)]))
        await env.until(lambda: bool(removed) and not env.status(), "the policy gone")
        await env.until(lambda: all(not n.sad() and not n.spd() for n in env.farm.values()),
                        "both NSFs clean")

    run(env, body)
