"""The controller against in-process agents (null data plane, real SSH on 127.0.0.1): pinned
host keys, all-or-nothing transactions when one NSF refuses, password-file logins, policy
groups, re-creation of changed policies. No root needed."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from lxml import etree
from ncharness import (
    IKELESS_NS,
    NC_NS,
    PASSWORD,
    PASSWORD_HASH,
    AgentThread,
    connect,
    names,
    wait_for,
)

from controller.config import ControllerConfig
from controller.core.engine import ServiceOptions
from controller.server import ControllerServer
from netconf_core.auth import User

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"


class ControllerThread:
    def __init__(self, state_dir: Path) -> None:
        opts = ServiceOptions(grace=0.2, reconnect_min=0.05, reconnect_max=0.5, retry_max=0.5,
                              retry_base=0.1, confirm_timeout=30, status_interval=0.3)
        self.ctl = ControllerServer(ControllerConfig(
            host="127.0.0.1", port=0, state_dir=state_dir, options=opts,
            users=[User("admin", PASSWORD_HASH)]))
        self.loop = asyncio.new_event_loop()
        self._ready = concurrent.futures.Future[None]()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.ctl.start())
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        self.loop.run_forever()

    def start(self) -> ControllerThread:
        self._thread.start()
        self._ready.result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.ctl.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    def edit(self, body: str) -> None:
        m = connect(self.ctl.port)
        try:
            m.edit_config(target="running", config=f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}">'
                          f'<flow-protection xmlns="{FP}">{body}</flow-protection></config>')
        finally:
            m.close_session()

    def state(self) -> etree._Element:
        m = connect(self.ctl.port)
        try:
            filt = f'<flow-protection-state xmlns="{FP}"/>'
            return etree.fromstring(m.get(filter=("subtree", filt)).data_xml.encode())
        finally:
            m.close_session()

    def status(self, policy: str) -> str | None:
        for p in self.state().iter(Q + "policy"):
            if p.findtext(Q + "name") == policy:
                return p.findtext(Q + "status")
        return None


def host_key(agent: AgentThread, state: Path) -> str:
    key = asyncssh.read_private_key(str(state / "ssh_host_ed25519_key"))
    return key.export_public_key().decode().strip()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    agents: dict[str, AgentThread] = {}
    ctl = None
    try:
        for n in ("s1", "s2", "s3", "s4"):
            agents[n] = AgentThread(tmp_path / n).start()
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        ctl = ControllerThread(tmp_path / "ctl").start()
        yield {"agents": agents, "ctl": ctl, "tmp": tmp_path}
    finally:
        if ctl is not None:
            ctl.stop()
        for a in agents.values():
            a.stop()


def nsf_xml(env: dict[str, Any], name: str, i: int, key: str | None = None) -> str:
    a = env["agents"][name]
    key = key or host_key(a, env["tmp"] / name)
    return (f"<nsf><name>{name}</name><management><address>127.0.0.1</address>"
            f"<port>{a.port}</port><username>admin</username>"
            f"<password-file>{env['tmp'] / 'pw'}</password-file><host-key>{key}</host-key>"
            f"</management><data-plane-address>192.0.2.{i}</data-plane-address>"
            f"<protected-prefix>10.{i}.0.0/16</protected-prefix></nsf>")


PROFILE = ("<crypto-profiles><crypto-profile><name>p</name><lifetime-soft><time>300</time>"
           "</lifetime-soft><lifetime-hard><time>600</time></lifetime-hard></crypto-profile>"
           "</crypto-profiles>")


def policy(name: str, a: str, b: str, extra: str = "") -> str:
    return (f"<policies><policy><name>{name}</name><endpoint-a><nsf>{a}</nsf>{extra}"
            f"</endpoint-a><endpoint-b><nsf>{b}</nsf></endpoint-b><crypto-profile>p"
            "</crypto-profile></policy></policies>")


def sad(agent: AgentThread) -> list[str]:
    return names(agent.snapshot()["running"], "sad-entry")


def spd(agent: AgentThread) -> list[str]:
    return names(agent.snapshot()["running"], "spd-entry")


def test_host_key_mismatch_is_refused(env: dict[str, Any]) -> None:
    ctl = env["ctl"]
    wrong = host_key(env["agents"]["s3"], env["tmp"] / "s3")  # another agent's key
    ctl.edit("<nsfs>" + nsf_xml(env, "s1", 1) + nsf_xml(env, "s2", 2, key=wrong) + "</nsfs>"
             + PROFILE + policy("x", "s1", "s2"))
    m = connect(ctl.ctl.port)
    try:
        def s2_state() -> str | None:
            d = etree.fromstring(m.get(filter=("subtree", f'<flow-protection xmlns="{FP}"/>'))
                                 .data_xml.encode())
            for n in d.iter(Q + "nsf"):
                if n.findtext(Q + "name") == "s2":
                    return n.findtext(f"{Q}session/{Q}state")
            return None
        wait_for(lambda: s2_state() == "host-key-mismatch", 10, "host-key-mismatch")
    finally:
        m.close_session()
    wait_for(lambda: ctl.status("x") == "failed", 10, "policy failed")
    assert sad(env["agents"]["s1"]) == [] and sad(env["agents"]["s2"]) == []
    # the password never went to s2 (it is another server's key: nobody authenticated there)
    assert env["agents"]["s2"].server.sessions == {}
    # fixing the inventory entry reconnects and provisions
    ctl.edit("<nsfs>" + nsf_xml(env, "s2", 2) + "</nsfs>")
    wait_for(lambda: ctl.status("x") == "active", 10, "policy active")
    assert len(sad(env["agents"]["s1"])) == 2 and len(sad(env["agents"]["s2"])) == 2


def test_refusal_on_one_nsf_leaves_the_other_unchanged(env: dict[str, Any]) -> None:
    ctl, a1, a2 = env["ctl"], env["agents"]["s1"], env["agents"]["s2"]
    ctl.edit("<nsfs>" + nsf_xml(env, "s1", 1) + nsf_xml(env, "s2", 2) + "</nsfs>" + PROFILE)
    before = a1.snapshot()
    a2.applier.fail_next = "backend says no"
    ctl.edit(policy("x", "s1", "s2"))
    wait_for(lambda: ctl.status("x") == "active", 10, "retry succeeded")
    # the first attempt failed on s2's commit; s1's confirmed commit was cancelled: its
    # data plane saw the SAs come and go before the retry installed them for good
    counts = [len(names(etree.tostring(c.new), "sad-entry")) for c in a1.applier.applied]
    assert counts[-3:] == [2, 0, 2], counts
    assert len(sad(a1)) == 2 and sad(a1) == sad(a2)
    ctl.edit('<policies><policy nc:operation="delete"><name>x</name></policy></policies>')
    wait_for(lambda: sad(a1) == [] and spd(a1) == [] and sad(a2) == [], 10, "removal")
    assert a1.snapshot()["running"] == before["running"]


def test_group_mesh_grows_without_touching_existing_pairs(env: dict[str, Any]) -> None:
    ctl, ag = env["ctl"], env["agents"]
    ctl.edit("<nsfs>" + "".join(nsf_xml(env, n, i) for i, n in enumerate(ag, 1)) + "</nsfs>"
             + PROFILE + "<policy-groups><policy-group><name>t</name><member>s1</member>"
             "<member>s2</member><member>s3</member><crypto-profile>p</crypto-profile>"
             "</policy-group></policy-groups>")
    pairs = ["t:s1:s2", "t:s1:s3", "t:s2:s3"]
    wait_for(lambda: all(ctl.status(p) == "active" for p in pairs), 15, "mesh of three")
    spis = {s.findtext(Q + "spi") for s in ctl.state().iter(Q + "sa")}
    ctl.edit("<policy-groups><policy-group><name>t</name><member>s4</member>"
             "</policy-group></policy-groups>")
    new = ["t:s1:s4", "t:s2:s4", "t:s3:s4"]
    wait_for(lambda: all(ctl.status(p) == "active" for p in new), 15, "s4 meshed")
    after = {s.findtext(Q + "spi") for p in ctl.state().iter(Q + "policy")
             if p.findtext(Q + "name") in pairs for s in p.iter(Q + "sa")}
    assert after == spis  # existing pairs untouched
    assert len(sad(ag["s4"])) == 6 and len(spd(ag["s4"])) == 6


def test_changed_policy_is_recreated_and_stale_entries_removed(env: dict[str, Any]) -> None:
    ctl, a1, a2, a3 = (env["ctl"], env["agents"]["s1"], env["agents"]["s2"],
                       env["agents"]["s3"])
    ctl.edit("<nsfs>" + "".join(nsf_xml(env, n, i) for i, n in
                                ((1, "s1"), (2, "s2"), (3, "s3"))) + "</nsfs>" + PROFILE
             + policy("x", "s1", "s2", extra="<prefix>10.1.1.0/24</prefix>"
                      "<prefix>10.1.2.0/24</prefix>"))
    wait_for(lambda: ctl.status("x") == "active" and len(spd(a1)) == 4, 10, "two flows")
    # one prefix less, and the other end moves from s2 to s3
    ctl.edit('<policies><policy nc:operation="replace"><name>x</name><endpoint-a><nsf>s1</nsf>'
             "<prefix>10.1.1.0/24</prefix></endpoint-a><endpoint-b><nsf>s3</nsf></endpoint-b>"
             "<crypto-profile>p</crypto-profile></policy></policies>")
    wait_for(lambda: spd(a2) == [] and sad(a2) == [] and len(spd(a1)) == 2
             and len(spd(a3)) == 2, 10, "re-created on s1/s3, gone from s2")
    assert ctl.status("x") == "active"
    assert len(sad(a1)) == 2 and sorted(sad(a1)) == sorted(sad(a3))


def _generation(ctl: ControllerThread, name: str) -> int:
    for p in ctl.state().iter(Q + "policy"):
        if p.findtext(Q + "name") == name:
            return int(p.findtext(Q + "generation") or -1)
    return -1


def _restart(env: dict[str, Any], name: str, *, clean: bool) -> str:
    """Stop agent `name` and start it again on the same port and state; without `clean`
    its boot record is left as a kill -9 leaves it. Returns the new run's boot id."""
    import json

    old = env["agents"][name]
    port = old.port
    old.stop()
    boot = env["tmp"] / name / "boot.json"
    if not clean:
        rec = json.loads(boot.read_text())
        boot.write_text(json.dumps({**rec, "clean": False}))
    new = env["agents"][name] = AgentThread(env["tmp"] / name, port=port).start()
    return new.call(lambda: new.agent.boot.info.boot_id)


def test_unclean_nsf_restart_rekeys_its_policies_once(env: dict[str, Any]) -> None:
    """Issue 13.1 (controller side): an NSF that comes back from an unclean stop gets every
    SA replaced (make-before-break); a clean restart, or the same run seen again, does not."""
    ctl, ag = env["ctl"], env["agents"]
    ctl.edit("<nsfs>" + "".join(nsf_xml(env, n, i) for i, n in
                                ((1, "s1"), (2, "s2"), (3, "s3"))) + "</nsfs>" + PROFILE
             + policy("x", "s1", "s2"))
    ctl.edit(policy("y", "s2", "s3"))
    wait_for(lambda: ctl.status("x") == ctl.status("y") == "active", 10, "policies active")
    gx, gy = _generation(ctl, "x"), _generation(ctl, "y")
    old_sas = set(sad(ag["s1"]))
    store = ctl.ctl.store

    boot = _restart(env, "s1", clean=False)
    wait_for(lambda: _generation(ctl, "x") == gx + 1 and ctl.status("x") == "active", 20,
             "x rekeyed after s1's unclean restart")
    # make-before-break done: both ends hold only the new generation's SAs
    wait_for(lambda: len(sad(ag["s1"])) == 2 and not old_sas & set(sad(ag["s1"]))
             and set(sad(ag["s1"])) <= set(sad(ag["s2"])), 10, "old SAs removed")
    assert all(n.endswith(f"/{gx + 1}") for n in sad(ag["s1"]))
    assert _generation(ctl, "y") == gy  # s1 is not one of y's NSFs
    assert ctl.ctl.service.stats.restarts_handled == 1
    assert store.get_meta("boot:s1") == boot

    # a clean restart: nothing to rekey
    boot2 = _restart(env, "s1", clean=True)
    wait_for(lambda: store.get_meta("boot:s1") == boot2, 10, "s1's new run seen")
    assert _generation(ctl, "x") == gx + 1
    assert ctl.ctl.service.stats.restarts_handled == 1


@pytest.mark.parametrize("key_length", [["--key-length", "0"], []])
def test_cli_null_encryption_with_key_length_0(env: dict[str, Any],
                                               key_length: list[str]) -> None:
    """Issue 24.5: `--key-length 0` was dropped (a falsy value), so `--encryption null`
    could not be applied from the CLI; `--encryption null` alone now implies it."""
    from controller import cli, cli_client

    ctl, ag = env["ctl"], env["agents"]
    ctl.edit("<nsfs>" + nsf_xml(env, "s1", 1) + nsf_xml(env, "s2", 2) + "</nsfs>")
    args = cli.build_parser().parse_args(
        ["policy", "apply", "n", "-a", "s1", "-b", "s2", "--profile", "nul",
         "--encryption", "null", *key_length, "--integrity", "hmac-sha2-256-128"])
    m = connect(ctl.ctl.port)
    try:
        cli_client.policy_apply(m, args)
    finally:
        m.close_session()
    wait_for(lambda: ctl.status("n") == "active", 10, "null-encryption policy active")
    IK = "{urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless}"
    run = etree.fromstring(ag["s1"].snapshot()["running"])
    encs = [e for e in run.iter(IK + "encryption") if e.getparent().tag == IK + "esp-sa"]
    assert encs and all(e.findtext(IK + "encryption-algorithm") == "11" for e in encs)
    assert all((e.findtext(IK + "key") or "") == "" for e in encs)


def test_northbound_errors_are_sentences_and_change_nothing(env: dict[str, Any]) -> None:
    """Issue 13.5 through the controller's NETCONF server (what the CLI prints): the field,
    the value and the expected form; libyang's text in error-info; host bits refused."""
    from ncclient.operations.rpc import RPCError

    ctl = env["ctl"]
    ctl.edit("<nsfs>" + nsf_xml(env, "s1", 1) + nsf_xml(env, "s2", 2) + "</nsfs>" + PROFILE)
    m = connect(ctl.ctl.port)
    try:
        before = m.get_config("running").data_xml
        for libyang, bad, words in (
                (True, nsf_xml(env, "s1", 1).replace("10.1.0.0/16", "10.1.0.0/33"),
                 ["nsf 's1', protected-prefix: '10.1.0.0/33' is not valid",
                  "IPv4 or IPv6 prefix"]),
                (False, nsf_xml(env, "s3", 3).replace("10.3.0.0/16", "10.3.7.7/16"),
                 ["nsf 's3', protected-prefix: 10.3.7.7/16 has host bits set; "
                  "did you mean 10.3.0.0/16?"])):
            with pytest.raises(RPCError) as exc:
                m.edit_config(target="running", config=(
                    f'<config xmlns="{NC_NS}"><flow-protection xmlns="{FP}"><nsfs>{bad}'
                    "</nsfs></flow-protection></config>"))
            for w in words:
                assert w in exc.value.message, exc.value.message
            if libyang:  # libyang's own words stay in error-info
                assert "no matching subtype found" in etree.tostring(exc.value.xml).decode()
        assert m.get_config("running").data_xml == before
    finally:
        m.close_session()


def _policy_el(ctl: ControllerThread, name: str) -> etree._Element | None:
    for p in ctl.state().iter(Q + "policy"):
        if p.findtext(Q + "name") == name:
            return p
    return None


def test_status_follows_the_nsfs_state(env: dict[str, Any]) -> None:
    """Issue 13.2: `active` only with evidence — both NSFs reachable and holding the live
    SAs; an on-demand policy without SAs is `waiting`; an SA gone from an NSF makes the
    policy `degraded`, an unreachable NSF `stale` (each with the reason); a reconnected
    session shows no old error."""
    ctl, ag = env["ctl"], env["agents"]
    ctl.edit("<nsfs>" + "".join(nsf_xml(env, n, i) for i, n in
                                ((1, "s1"), (2, "s2"), (3, "s3"))) + "</nsfs>" + PROFILE
             + policy("x", "s1", "s2"))
    ctl.edit(policy("y", "s1", "s3", extra="").replace(
        "</endpoint-b>", "</endpoint-b><ikeless><on-demand>true</on-demand></ikeless>"))
    wait_for(lambda: ctl.status("x") == "active", 10, "x active")
    wait_for(lambda: ctl.status("y") == "waiting", 10, "on-demand y waiting for traffic")

    def evidence_seen() -> bool:
        p = _policy_el(ctl, "x")
        return p is not None and p.findtext(Q + "evidence-time") is not None and all(
            s.findtext(Q + "present") == "true" for s in p.iter(Q + "sa"))
    wait_for(evidence_seen, 10, "x's SAs seen on both NSFs")

    # an SA removed from s2 behind the controller's back
    p = _policy_el(ctl, "x")
    assert p is not None
    gen = p.findtext(Q + "generation")
    sa = f"fp/x/0/a2b/{gen}"
    m = ag["s2"].connect()
    try:
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS_NS}">'
            f'<sad><sad-entry nc:operation="delete"><name>{sa}</name></sad-entry></sad>'
            "</ipsec-ikeless></config>"))
    finally:
        m.close_session()
    wait_for(lambda: ctl.status("x") == "degraded", 10, "x degraded")
    p = _policy_el(ctl, "x")
    assert p is not None and f"SA {sa}" in (p.findtext(Q + "error-message") or "")
    assert "missing on NSF s2" in (p.findtext(Q + "error-message") or "")

    # s2 unreachable: stale, not active
    port = ag["s2"].port
    ag["s2"].stop()
    wait_for(lambda: ctl.status("x") == "stale", 10, "x stale")
    p = _policy_el(ctl, "x")
    assert p is not None and "NSF s2 is unreachable" in (p.findtext(Q + "error-message") or "")
    assert ctl.status("y") == "waiting"  # (s2 is none of y's NSFs)

    # back: the resync restores the SA; active again, and the session shows no old error
    ag["s2"] = AgentThread(env["tmp"] / "s2", port=port).start()
    wait_for(lambda: ctl.status("x") == "active", 15, "x active again")
    assert not (_policy_el(ctl, "x").findtext(Q + "error-message"))  # type: ignore[union-attr]
    m = connect(ctl.ctl.port)
    try:
        d = etree.fromstring(m.get(filter=("subtree", f'<flow-protection xmlns="{FP}"/>'))
                             .data_xml.encode())
    finally:
        m.close_session()
    s2 = next(n for n in d.iter(Q + "nsf") if n.findtext(Q + "name") == "s2")
    assert s2.findtext(f"{Q}session/{Q}state") == "connected"
    assert s2.find(f"{Q}session/{Q}last-error") is None
