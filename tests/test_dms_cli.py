"""`i2nsf-dms` commands that need no root: init-config writes a configuration the DMS loads,
hash-password, and clear errors for bad configuration files."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from netconf_core.auth import verify_password
from nsf_agent.dms import cli
from nsf_agent.dms.config import ConfigError, load_config, parse_config


def test_init_config_writes_a_loadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw-123\n"))
    path = tmp_path / "dms.toml"
    assert cli.main(["init-config", str(path), "--password-stdin", "--name", "dms-x",
                     "--state-dir", str(tmp_path / "st")]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    cfg = load_config(path)
    assert cfg.name == "dms-x" and cfg.users[0].name == "admin"
    assert verify_password("pw-123", cfg.users[0].password_hash or "")
    assert cli.main(["init-config", str(path), "--password-stdin"]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err


def test_hash_password(monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("s3cret\n"))
    assert cli.main(["hash-password", "--stdin"]) == 0
    assert verify_password("s3cret", capsys.readouterr().out.strip())


@pytest.mark.parametrize(("data", "reason"), [
    ({"dms": {"nme": "x"}}, "unknown key"),
    ({"dms": {"capacity": {"nope": 5}}}, "a function type"),
    ({"controller": {"address": "192.0.2.1"}}, "host_key"),
    ({"dms": {"auto_restart": "yes"}}, "wrong type"),
    ({"extra": {}}, "unknown section"),
])
def test_bad_configuration_is_refused(data: dict, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match=reason):
        parse_config(data)


def test_bad_config_file_is_a_clear_cli_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[dms]\nmax_instances = -1\n")
    assert cli.main(["-c", str(bad)]) == 2
    assert "max_instances" in capsys.readouterr().err
