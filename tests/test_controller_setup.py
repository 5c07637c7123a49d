"""`i2nsf-controller init-config` and `install-unit`: a starter configuration that loads
(mode 0600, /var/lib state, optional RESTCONF and metrics), never overwritten; the unit."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import load_config
from netconf_core.auth import verify_password


def test_init_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "controller.toml"
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret-ctl\n"))
    assert main(["init-config", str(path), "--password-stdin", "--restconf-port", "8443",
                 "--metrics-port", "9100"]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = load_config(path)
    assert cfg.state_dir == Path("/var/lib/i2nsf-controller")
    assert cfg.restconf is not None and cfg.restconf.port == 8443 and cfg.restconf.tls
    assert cfg.metrics is not None and cfg.metrics.port == 9100
    assert cfg.users[0].name == "admin"
    assert verify_password("s3cret-ctl", cfg.users[0].password_hash or "")
    assert "s3cret-ctl" not in path.read_text()
    # never overwritten
    monkeypatch.setattr(sys, "stdin", io.StringIO("other\n"))
    assert main(["init-config", str(path), "--password-stdin"]) == 2
    assert "exists; not overwriting" in capsys.readouterr().err
    assert verify_password("s3cret-ctl", load_config(path).users[0].password_hash or "")


def test_init_config_minimal_has_no_optional_servers(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.toml"
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["init-config", str(path), "--password-stdin", "--state-dir",
                 str(tmp_path / "st")]) == 0
    cfg = load_config(path)
    assert cfg.restconf is None and cfg.metrics is None and cfg.state_dir == tmp_path / "st"


def test_install_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-unit", "--dir", str(tmp_path)]) == 0
    text = (tmp_path / "i2nsf-controller.service").read_text()
    assert "serve -c /etc/i2nsf/controller.toml --log-format json" in text
    assert main(["install-unit", "--dir", str(tmp_path)]) == 2  # exists
    assert "--force" in capsys.readouterr().err
