"""`i2nsf-controller` client commands against a real controller process and real agents
(SSH, NETCONF, null data plane), as a script would use them: host-key verification before
any credential is sent, --json everywhere, --wait with exit codes and progress, per-policy
options that leave a shared profile alone, removals that finish or are refused with a
reason, `status` failing when something failed (issue 13 section 3, issue 22)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from ctlproc import ADMIN_PW, ROOT, ControllerProcess
from lxml import etree
from ncharness import PASSWORD, AgentThread

from netconf_core.polling import wait_until

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agents: dict[str, AgentThread] = {}
        self.ctl: ControllerProcess | None = None

    @property
    def ctl_pub(self) -> Path:
        assert self.ctl is not None
        return self.ctl.state / "ssh_host_ed25519_key.pub"

    def cli(self, *args: str, pin: bool = True, home: Path | None = None,
            subprocess_: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the CLI: in this process (its `main`, fast), or as `python -m controller.cli`
        (the real entry point) with `subprocess_`."""
        assert self.ctl is not None
        env = {"I2NSF_PASSWORD": ADMIN_PW, "HOME": str(home or self.tmp / "home")}
        pre = ["--port", str(self.ctl.port)]
        if pin:
            pre += ["--host-key-file", str(self.ctl_pub)]
        if subprocess_:
            full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
            for k in ("I2NSF_CONTROLLER_HOST_KEY_FILE", "I2NSF_CONTROLLER_HOST_KEY"):
                full.pop(k, None)
            return subprocess.run([sys.executable, "-m", "controller.cli", *pre, *args],
                                  capture_output=True, text=True, timeout=120, env=full)
        from controller.cli import main

        out, err = io.StringIO(), io.StringIO()
        saved = {k: os.environ.get(k) for k in (*env, "I2NSF_CONTROLLER_HOST_KEY_FILE",
                                                 "I2NSF_CONTROLLER_HOST_KEY")}
        os.environ.update(env)
        for k in ("I2NSF_CONTROLLER_HOST_KEY_FILE", "I2NSF_CONTROLLER_HOST_KEY"):
            os.environ.pop(k, None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    rc = main([*pre, *args])
                except SystemExit as exc:
                    rc = int(exc.code or 0)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())

    def ok(self, *args: str) -> str:
        r = self.cli(*args)
        assert r.returncode == 0, f"{args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def js(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def nsf_add(self, name: str) -> None:
        a = self.agents[name]
        key = asyncssh.read_private_key(str(self.tmp / name / "ssh_host_ed25519_key"))
        i = list(self.agents).index(name) + 1
        self.ok("nsf", "add", name, "--address", "127.0.0.1", "--mgmt-port", str(a.port),
                "--username", "admin", "--password-file", str(self.tmp / "pw"),
                "--host-key", key.export_public_key().decode().strip(),
                "--data-plane-address", f"192.0.2.{i}", "--prefix", f"10.{i}.0.0/16")

    def in_sessions(self) -> int:
        assert self.ctl is not None
        with self.ctl.netconf() as m:
            xml = m.get(filter=("subtree", '<netconf-state xmlns="urn:ietf:params:xml:ns:'
                                'yang:ietf-netconf-monitoring"><statistics/></netconf-state>'
                                )).xml
        el = etree.fromstring(xml.encode())
        return int(el.findtext(".//{urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring}"
                               "in-sessions"))

    def profile_xml(self) -> str:
        assert self.ctl is not None
        with self.ctl.netconf() as m:
            return m.get_config("running", filter=(
                "subtree", f'<flow-protection xmlns="{FP}"><crypto-profiles/>'
                "</flow-protection>")).data_xml


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("cli")
    e = Env(tmp)
    (tmp / "pw").write_text(PASSWORD + "\n")
    (tmp / "home").mkdir()
    try:
        for n in ("c1", "c2", "c3"):
            e.agents[n] = AgentThread(tmp / n).start()
        (tmp / "ctl").mkdir()
        e.ctl = ControllerProcess(tmp / "ctl", restconf=False, metrics=False).start()
        for n in e.agents:
            e.nsf_add(n)
        yield e
    finally:
        if e.ctl is not None:
            e.ctl.stop()
        for a in e.agents.values():
            a.stop()


# ---- host key ---------------------------------------------------------------------------


def test_host_key_verified_before_credentials(env: Env) -> None:
    other = asyncssh.read_private_key(str(env.tmp / "c1" / "ssh_host_ed25519_key"))
    before = env.in_sessions()
    for pin in (other.export_public_key().decode().strip(),
                other.get_fingerprint("sha256")):
        r = env.cli("--host-key", pin, "status", pin=False)
        assert r.returncode == 1
        assert "host key mismatch" in r.stderr and "credentials were not sent" in r.stderr
        assert r.stderr.startswith("i2nsf-controller: error: ")
    # not pinned and not in known_hosts: refused too, saying how to pin it
    r = env.cli("status", pin=False)
    assert r.returncode == 1 and "not known" in r.stderr and "--host-key-file" in r.stderr
    # no session was opened by any of those (the password is right: had it been sent, the
    # login would have succeeded and counted)
    assert env.in_sessions() == before + 1  # only in_sessions()'s own session
    key = asyncssh.read_public_key(str(env.ctl_pub))
    assert env.cli("--host-key", key.get_fingerprint("sha256"), "nsf", "list",
                   pin=False).returncode == 0
    # known_hosts works like ssh's: [host]:port entries
    home = env.tmp / "home2"
    (home / ".ssh").mkdir(parents=True)
    assert env.ctl is not None
    (home / ".ssh" / "known_hosts").write_text(
        f"[127.0.0.1]:{env.ctl.port} {key.export_public_key().decode().strip()}\n")
    assert env.cli("nsf", "list", pin=False, home=home).returncode == 0


# ---- policies: --wait, --json, per-policy options --------------------------------------


def test_policy_apply_wait_json_and_profile_left_alone(env: Env) -> None:
    r = env.cli("policy", "apply", "w1", "-a", "c1", "-b", "c2", "--profile", "shared",
                "--encryption", "aes-gcm-16", "--key-length", "128", "--wait")
    assert r.returncode == 0, r.stderr
    assert "w1: active" in r.stderr  # progress on stderr
    show = env.js("policy", "show", "w1")
    assert show["status"] == "active" and len(show["sa"]) >= 2
    assert {s["direction"] for s in show["sa"]} <= {"outbound", "inbound", "a2b", "b2a"}
    pols = {p["name"]: p for p in env.js("policy", "list")["policies"]}
    assert pols["w1"]["status"] == "active"
    sas = env.js("sa", "list", "--policy", "w1")["sas"]
    assert sas and all(s["policy"] == "w1" and isinstance(s["spi"], int) for s in sas)
    profiles_before = env.profile_xml()
    # the shared profile is not rewritten by another policy's options
    r = env.cli("policy", "apply", "w2", "-a", "c1", "-b", "c3", "--profile", "shared",
                "--encryption", "aes-cbc", "--integrity", "hmac-sha2-256-128")
    assert r.returncode == 1
    assert "profile set shared" in r.stderr and "--profile NEW" in r.stderr
    assert env.profile_xml() == profiles_before
    assert "w2" not in {p["name"] for p in env.js("policy", "list")["policies"]}
    # lifetimes are this policy's own overrides: the profile stays as it was
    r = env.cli("policy", "apply", "w2", "-a", "c1", "-b", "c3", "--profile", "shared",
                "--soft-time", "100", "--hard-time", "200", "--wait")
    assert r.returncode == 0, r.stderr
    assert env.profile_xml() == profiles_before
    assert env.js("policy", "show", "w1")["generation"] == show["generation"]  # untouched
    prof = {p["name"]: p for p in env.js("profile", "list")["crypto-profiles"]}
    assert prof["shared"]["encryption-algorithm"] == 20
    r = env.cli("resync", "c1", "--wait")
    assert r.returncode == 0 and "resynced (2 policies active)" in r.stdout, r.stderr
    # rekey --wait: back to active at the new generation
    r = env.cli("policy", "rekey", "w1", "--wait")
    assert r.returncode == 0, r.stderr
    assert env.js("policy", "show", "w1")["generation"] > show["generation"]
    for p in ("w1", "w2"):
        r = env.cli("policy", "delete", p, "--wait")
        assert r.returncode == 0, r.stderr
    assert env.js("policy", "list")["policies"] == []
    r = env.cli("policy", "delete", "nope")
    assert r.returncode == 1 and "no policy 'nope'" in r.stderr


def test_on_demand_policy_wait_ends_when_it_is_waiting(env: Env) -> None:
    """An on-demand policy has no SA until its first packet: --wait is done when it is in
    place ("waiting"), it must not time out."""
    r = env.cli("policy", "apply", "od1", "-a", "c1", "-b", "c2", "--on-demand", "--wait",
                "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert env.js("policy", "show", "od1")["status"] == "waiting"
    r = env.cli("policy", "delete", "od1", "--wait")
    assert r.returncode == 0, r.stderr


def test_wait_times_out_with_exit_3(env: Env) -> None:
    env.agents["c3"].stop()
    try:
        r = env.cli("policy", "apply", "t1", "-a", "c1", "-b", "c3", "--wait", "--timeout",
                    "2")
        assert r.returncode in (1, 3), r.stderr  # failed (NSF down) or still pending
        assert "t1" in r.stderr
        st = env.cli("status")
        assert st.returncode == 1 and "problems:" in st.stdout and "NSF c3" in st.stdout
        sj = json.loads(env.cli("status", "--json").stdout)
        assert sj["ok"] is False and any("c3" in p for p in sj["problems"])
        # c3 is down: removing it now (its policy removed in the same breath) is refused
        # with the reason, instead of a removal retried forever
        r = env.cli("nsf", "remove", "c3")
        assert r.returncode == 1 and "policy t1" in r.stderr
    finally:
        assert env.cli("policy", "delete", "t1").returncode == 0
    # the removal of t1 needs c3; c3 is down, so the NSF removal is refused, not a ghost
    r = env.cli("nsf", "remove", "c3")
    assert r.returncode == 1, r.stdout
    assert "t1" in r.stderr
    names = [n["name"] for n in env.js("nsf", "list")["nsfs"]]
    assert "c3" in names
    # the controller itself refuses it too (any NETCONF client), and nothing changes
    from ncclient.operations.rpc import RPCError

    assert env.ctl is not None
    with env.ctl.netconf() as m:
        before = m.get_config("running").data_xml
        with pytest.raises(RPCError) as exc:
            m.edit_config(target="running", config=(
                '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
                'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
                f'<flow-protection xmlns="{FP}"><nsfs><nsf nc:operation="delete">'
                "<name>c3</name></nsf></nsfs></flow-protection></config>"))
        assert exc.value.tag == "in-use" and "t1" in str(exc.value)
        assert m.get_config("running").data_xml == before


# ---- groups, road warriors, removals --------------------------------------------------------


def test_groups_and_removals(env: Env) -> None:
    r = env.cli("group", "add", "g", "-m", "c1", "-m", "c2", "--wait")
    assert r.returncode == 0, r.stderr
    groups = env.js("group", "list")["policy-groups"]
    assert groups[0]["name"] == "g" and groups[0]["policies"] == ["g:c1:c2"]
    assert groups[0]["statuses"] == {"active": 1}
    r = env.cli("nsf", "remove", "c2")
    assert r.returncode == 1 and "policy group g" in r.stderr
    r = env.cli("group", "delete", "g", "--wait")
    assert r.returncode == 0, r.stderr
    assert env.js("group", "list")["policy-groups"] == []
    assert not [p for p in env.js("policy", "list")["policies"] if p["name"].startswith("g:")]
    r = env.cli("roadwarrior", "remove", "nobody")
    assert r.returncode == 1 and "no road warrior 'nobody'" in r.stderr
    assert env.js("roadwarrior", "list") == {"road-warriors": []}
    # a clean removal with --wait leaves no row behind
    r = env.cli("nsf", "remove", "c2", "--wait")
    assert r.returncode == 0, r.stderr
    assert "c2" not in [n["name"] for n in env.js("nsf", "list")["nsfs"]]
    env.nsf_add("c2")
    wait_until(lambda: {n["name"]: n for n in env.js("nsf", "list")["nsfs"]}["c2"]
               ["session"]["state"] == "connected", 30, "c2 back")


def test_usage_errors_are_one_line(env: Env) -> None:
    r = env.cli("nsf", "remove", "nope", subprocess_=True)  # the real entry point
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == ["i2nsf-controller: error: no NSF 'nope' in the "
                                             "inventory"]
    r = env.cli("--host-key", "garbage!", "status", pin=False)
    assert r.returncode == 2 and "neither an OpenSSH public key" in r.stderr
