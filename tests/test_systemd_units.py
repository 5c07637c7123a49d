"""The systemd units the daemons ship (netconf_core/systemd) as `install-unit` writes them:
`systemd-analyze verify` accepts them with no warning (an unknown or misspelt sandboxing
option is a warning, not an error, so the output must be empty), paths are /etc and
/var/lib, and the sandbox keeps what the agent needs for netlink, TUN and raw sockets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from netconf_core import systemd

ROOT = Path(__file__).resolve().parent.parent


def _bindir(tmp_path: Path) -> Path:
    """Executables for ExecStart: the venv's console scripts where installed; the DMS
    daemon has none yet, so a placeholder executable stands in for its path only."""
    venv_bin = Path(sys.executable).parent
    out = tmp_path / "bin"
    out.mkdir()
    for script in ("i2nsf-agent", "i2nsf-controller", "i2nsf-dms"):
        real = venv_bin / script
        if real.exists():
            (out / script).symlink_to(real)
        else:
            (out / script).write_text("#!/bin/sh\nexit 1\n")
            os.chmod(out / script, 0o755)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("which", sorted(systemd.UNITS))
def test_unit_verifies_cleanly(tmp_path: Path, which: str) -> None:
    path = systemd.install(which, tmp_path / "units", _bindir(tmp_path))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_verify_catches_a_bad_option(tmp_path: Path) -> None:
    """The check above would notice a misspelt directive (guards the test itself)."""
    path = systemd.install("agent", tmp_path / "units", _bindir(tmp_path))
    path.write_text(path.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                       text=True, timeout=60)
    assert "Unknown key" in r.stderr


def test_units_use_standard_paths_and_json_logs(tmp_path: Path) -> None:
    agent = systemd.render("agent", Path("/opt/i2nsf/bin"))
    ctl = systemd.render("controller", Path("/opt/i2nsf/bin"))
    assert ("ExecStart=/opt/i2nsf/bin/i2nsf-agent run -c /etc/i2nsf/agent.toml "
            "--log-format json") in agent
    assert ("ExecStart=/opt/i2nsf/bin/i2nsf-controller serve -c /etc/i2nsf/controller.toml "
            "--log-format json") in ctl
    assert "StateDirectory=i2nsf-agent" in agent and "StateDirectory=i2nsf-controller" in ctl
    for unit in (agent, ctl):
        assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    # what the agent's data plane needs is kept
    assert "CAP_NET_ADMIN" in agent and "CAP_NET_RAW" in agent
    assert "DeviceAllow=/dev/net/tun rw" in agent and "AF_NETLINK" in agent
    assert "ProtectKernelTunables" not in agent  # the data path writes rp_filter
    # the controller keeps no capability but low ports
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in ctl


def test_install_refuses_to_overwrite(tmp_path: Path) -> None:
    systemd.install("agent", tmp_path, Path("/usr/bin"))
    with pytest.raises(FileExistsError):
        systemd.install("agent", tmp_path, Path("/usr/bin"))
    systemd.install("agent", tmp_path, Path("/usr/bin"), force=True)


def test_dms_unit_matches_its_cli(tmp_path: Path) -> None:
    """The DMS unit's ExecStart parses with the DMS's own argument parser."""
    from nsf_agent.dms.cli import build_parser

    unit = systemd.render("dms", Path("/usr/bin"))
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    args = build_parser().parse_args(line.split()[1:])
    assert str(args.config) == "/etc/i2nsf/dms.toml" and args.log_format == "json"
    r = subprocess.run([sys.executable, "-m", "netconf_core.systemd", "dms", "--dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and (tmp_path / "i2nsf-dms.service").exists(), r.stderr


def test_agent_cli_install_unit_prints(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "nsf_agent.cli", "install-unit", "--dir",
                        str(tmp_path)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "i2nsf-agent.service").read_text()
    assert "ExecStart=/" in text and "@BIN@" not in text
