"""i2nsf-agent CLI: --help documents every option, hash-password, init-config, bad config."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from netconf_core.auth import verify_password
from nsf_agent.cli import build_parser, main
from nsf_agent.config import ConfigError, load_config


def test_help_mentions_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for opt in ("--config", "--host", "--port", "--state-dir", "--dataplane", "--ready-file",
                "--log-level", "--log-json"):
        assert opt in out
    assert build_parser().format_help()


def test_hash_password_and_init_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("hunter2\n"))
    assert main(["hash-password", "--stdin"]) == 0
    assert verify_password("hunter2", capsys.readouterr().out.strip())
    cfg = tmp_path / "agent.toml"
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["init-config", str(cfg), "--password-stdin", "--port", "8300",
                 "--state-dir", str(tmp_path / "st")]) == 0
    assert cfg.stat().st_mode & 0o777 == 0o600
    loaded = load_config(cfg)
    assert loaded.port == 8300 and loaded.users[0].name == "admin"
    assert verify_password("pw", loaded.users[0].password_hash or "")
    # #13.4: a new agent enforces what it accepts (not the store-only "null" applier)
    assert loaded.appliers == ["auto"] and not loaded.accept_unenforced
    assert main(["init-config", str(cfg)]) == 2  # never overwrites


def test_bad_config_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[server]\nport = "830"\n')
    with pytest.raises(ConfigError, match="wrong type"):
        load_config(cfg)
    cfg.write_text("[serverr]\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_config(cfg)
    cfg.write_text('[[users]]\nname = "x"\n')
    with pytest.raises(ConfigError, match="neither"):
        load_config(cfg)
    assert main(["run", "-c", str(tmp_path / "missing.toml")]) == 2
