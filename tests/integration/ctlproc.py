"""A real controller process (`python -m controller.cli serve`) on 127.0.0.1 with NETCONF,
RESTCONF (TLS, generated certificate) and metrics, for the RESTCONF and metrics tests."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from netconf_core.auth import hash_password
from netconf_core.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]
ADMIN_PW = "admin-pw-restconf"
OPER_PW = "oper-pw-restconf"
_HASHES = {"admin": hash_password(ADMIN_PW), "oper": hash_password(OPER_PW)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControllerProcess:
    def __init__(self, workdir: Path, restconf: bool = True, metrics: bool = True,
                 extra: str = "", restconf_extra: str = "") -> None:
        self.workdir = workdir
        self.state = workdir / "state"
        # port 0: the controller binds any free port and logs it (no race with other
        # processes between choosing a port and binding it)
        self.rc_port: int | None = 0 if restconf else None
        self.metrics_port: int | None = 0 if metrics else None
        self.ready = workdir / "ready"
        self.log = workdir / "controller.log"
        cfg = [f'[server]\nhost = "127.0.0.1"\nport = 0\nstate_dir = "{self.state}"\n',
               "[controller]\nreconnect_min = 0.05\nreconnect_max = 0.5\nretry_max = 0.5\n"
               "rekey_grace = 0.2\n"]
        if restconf:
            cfg.append(f'[restconf]\nhost = "127.0.0.1"\nport = {self.rc_port}\n'
                       + restconf_extra)
        if metrics:
            cfg.append(f'[metrics]\nhost = "127.0.0.1"\nport = {self.metrics_port}\n')
        cfg.append(extra)
        cfg.append(f'[[users]]\nname = "admin"\npassword_hash = "{_HASHES["admin"]}"\n')
        cfg.append(f'[[users]]\nname = "oper"\npassword_hash = "{_HASHES["oper"]}"\n'
                   "read_secrets = false\n")
        self.config = workdir / "controller.toml"
        self.config.write_text("\n".join(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> ControllerProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "serve", "-c", str(self.config),
                 "--ready-file", str(self.ready), "--log-format", "json",
                 "--log-level", os.environ.get("CTL_LOG_LEVEL", "INFO")],
                stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        wait_until(lambda: self.ready.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   60, "controller to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"controller exited: {self.log.read_text()[-3000:]}")
        self.port = int(self.ready.read_text())
        for line in self.log.read_text().splitlines():
            if not line.startswith("{"):
                continue
            msg = json.loads(line)["message"]
            m = re.match(r"RESTCONF on https?://[^:]+:(\d+)/restconf", msg)
            if m:
                self.rc_port = int(m.group(1))
            m = re.match(r"metrics on http://[^:]+:(\d+)/metrics", msg)
            if m:
                self.metrics_port = int(m.group(1))
        return self

    @property
    def cert(self) -> Path:
        return self.state / "restconf-tls.crt"

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.rc_port}/restconf"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def netconf(self, user: str = "admin") -> Any:
        from ncclient import manager

        return manager.connect(host="127.0.0.1", port=self.port, username=user,
                               password=ADMIN_PW if user == "admin" else OPER_PW,
                               hostkey_verify=False, allow_agent=False, look_for_keys=False,
                               timeout=30)
