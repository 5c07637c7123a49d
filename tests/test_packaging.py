"""`pip install .` (not editable) into a fresh virtualenv gives working console scripts:
the YANG modules come along as data files and are found there, the systemd units as
package data, the LICENSE matches pyproject. The agent is started from the installed copy
and answers a NETCONF get-schema for one of our modules (read from the installed file)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from netconf_core.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_license_matches_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"]["text"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_readme_names_only_files_in_the_repo() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "shared folder" not in readme
    for doc in ("docs/operations.md", "docs/restconf.md"):
        assert doc in readme and (ROOT / doc).exists()


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("python3") is None:
        pytest.skip("needs python3 to create a virtualenv")
    v = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(v)], check=True,
                   timeout=120)
    # build isolation fetches setuptools>=68 (build-system.requires) from the index
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(v / "bin" / "python"),
                        "install", "-q", "--no-deps", str(ROOT)], capture_output=True,
                       text=True, timeout=300, cwd=tmp_path_factory.getbasetemp())
    if r.returncode != 0:
        pytest.fail(f"pip install . failed:\n{r.stdout}\n{r.stderr}")
    # the dependencies (libyang bindings built against Debian's libyang) from this venv
    sp = next(Path(p) for p in site.getsitepackages() if Path(p).is_dir())
    vsp = next((v / "lib").glob("python3*/site-packages"))
    (vsp / "zz_deps.pth").write_text(str(sp) + "\n")
    return v


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "I2NSF_YANG_DIR")}
    return env


def test_installed_scripts_run(venv: Path, tmp_path: Path) -> None:
    bin_ = venv / "bin"
    for script in ("i2nsf-agent", "i2nsf-controller"):
        r = subprocess.run([str(bin_ / script), "--version"], capture_output=True, text=True,
                           timeout=60, env=_env(), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    share = venv / "share" / "i2nsf-sdn" / "yang"
    assert (share / "i2nsf-flow-policy@2026-12-04.yang").exists()
    assert any((share / "standard").glob("ietf-restconf-monitoring@*.yang"))
    r = subprocess.run([str(bin_ / "i2nsf-agent"), "install-unit", "--print"],
                       capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert f"ExecStart={bin_}/i2nsf-agent run" in r.stdout, r.stderr

    cfg = tmp_path / "agent.toml"
    r = subprocess.run([str(bin_ / "i2nsf-agent"), "init-config", str(cfg), "--password-stdin",
                        "--state-dir", str(tmp_path / "st"), "--host", "127.0.0.1",
                        "--port", "0"], input="pw-for-test\n", capture_output=True,
                       text=True, timeout=60, env=_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ready = tmp_path / "ready"
    log = tmp_path / "agent.log"
    with open(log, "wb") as logf:
        # (--dataplane null: init-config writes "auto", which would start a userspace data
        # path in this host's namespace, and it outlives the agent by design)
        proc = subprocess.Popen([str(bin_ / "i2nsf-agent"), "run", "-c", str(cfg),
                                 "--ready-file", str(ready), "--log-format", "json",
                                 "--dataplane", "null"],
                                stdout=logf, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 60, "agent to start")
        assert proc.poll() is None, log.read_text()
        port = int(ready.read_text())
        from ncclient import manager

        with manager.connect(host="127.0.0.1", port=port, username="admin",
                             password="pw-for-test", hostkey_verify=False,
                             allow_agent=False, look_for_keys=False, timeout=30) as m:
            text = m.get_schema("ietf-i2nsf-ikeless").data
        assert "module ietf-i2nsf-ikeless" in text
    finally:
        proc.terminate()
        proc.wait(30)
    import json

    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    assert any("agent ready" in ln["message"] for ln in lines)
    assert all({"time", "level", "logger", "message"} <= set(ln) for ln in lines)
    # the installed copy is what runs, not this source tree
    r = subprocess.run([str(bin_ / "python"), "-c", "import netconf_core.yang_context as y; "
                        "print(y.__file__); print(y.yang_dir())"], capture_output=True,
                       text=True, timeout=60, env=_env(), cwd=tmp_path)
    mod_file, ydir = r.stdout.split()
    assert mod_file.startswith(str(venv)) and ydir == str(share), r.stdout + r.stderr
