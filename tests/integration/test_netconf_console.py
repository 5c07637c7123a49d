"""netconf-console2 (a client we did not write) against the agent, both framings."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from ncharness import IKELESS_NS, PASSWORD, AgentThread, names, spd_entry

CONSOLE = str(Path(sys.executable).with_name("netconf-console2"))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path_factory.mktemp("nc2") / "state").start()
    yield a
    a.stop()


def console(agent: AgentThread, *args: str, version: str = "1.1", stdin: str | None = None,
            ok: bool = True) -> str:
    cmd = [CONSOLE, "--host", "127.0.0.1", "--port", str(agent.port), "-u", "admin",
           "-p", PASSWORD, "-v", version, *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)
    if ok:
        assert p.returncode == 0, f"{cmd}: {p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_hello_lists_capabilities(agent: AgentThread, version: str) -> None:
    out = console(agent, "--hello", version=version)
    assert "urn:ietf:params:netconf:capability:candidate:1.0" in out
    assert "ietf-i2nsf-ikeless" in out


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_edit_commit_get(agent: AgentThread, version: str, tmp_path: Path) -> None:
    name = f"nc2-{version}"
    cfg = tmp_path / "edit.xml"
    cfg.write_text(f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd>{spd_entry(name)}</spd>'
                   "</ipsec-ikeless>")
    # one session, several operations in sequence
    console(agent, "--db", "candidate", "--lock", "--edit-config", str(cfg), "--unlock",
            "--validate", "candidate", "--commit", "--copy-running-to-startup", version=version)
    out = console(agent, "--get-config", "-x", f"/ikl:ipsec-ikeless/ikl:spd/ikl:spd-entry"
                  f"[ikl:name='{name}']", "--ns", f"ikl={IKELESS_NS}", version=version)
    assert names(out) == [name]
    # --filter turns a simple path into a subtree filter
    out = console(agent, "--get", "--filter", "/ikl:ipsec-ikeless/ikl:spd",
                  "--ns", f"ikl={IKELESS_NS}", "--get-config", "--db", "startup",
                  version=version)
    assert out.count(f"<name>{name}</name>") == 2


def test_get_schema_and_bad_edit(agent: AgentThread, tmp_path: Path) -> None:
    out = console(agent, "--get-schema", "ietf-i2nsf-ikeless")
    assert "module ietf-i2nsf-ikeless" in out
    before = agent.snapshot()
    bad = tmp_path / "bad.xml"
    bad.write_text(f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd>'
                   f'{spd_entry("bad", direction="upwards")}</spd></ipsec-ikeless>')
    out = console(agent, "--edit-config", str(bad), ok=False)
    assert "invalid-value" in out
    assert agent.snapshot() == before


def test_unprefixed_xpath_and_with_defaults(agent: AgentThread, tmp_path: Path) -> None:
    """Issue 14: netconf-console2's -x without --ns, and its --with-defaults."""
    cfg = tmp_path / "edit.xml"
    cfg.write_text(f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd>{spd_entry("nc2-wd")}</spd>'
                   "</ipsec-ikeless>")
    console(agent, "--edit-config", str(cfg))
    out = console(agent, "--get-config", "-x",
                  "/ipsec-ikeless/spd/spd-entry[name='nc2-wd']/reqid")
    assert names(out) == ["nc2-wd"] and "<reqid>1</reqid>" in out
    shown = {}
    for mode in ("report-all", "trim", "report-all-tagged", "explicit"):
        out = console(agent, "--get-config", "--with-defaults", mode, "-x",
                      "/ipsec-ikeless/spd/spd-entry[name='nc2-wd']")
        assert names(out) == ["nc2-wd"], (mode, out)
        shown[mode] = out
    # RFC 9061's anti-replay-window-size defaults to 64; inner-protocol "any" (set) is the
    # default too: trim drops it, report-all-tagged tags it
    assert "anti-replay-window-size" not in shown["explicit"]
    assert "<anti-replay-window-size>64<" in shown["report-all"]
    assert "inner-protocol" in shown["explicit"] and "inner-protocol" not in shown["trim"]
    assert 'wd:default="true">64<' in shown["report-all-tagged"]
