"""The agent's side of the SFC data path's control channel (same framing and client as the
userspace ESP path's), and how to start the data path process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from nsf_agent.userspace.client import DatapathClient, DatapathError, _encode

from .model import SfcConfig


class SfcDatapathError(DatapathError):
    """The data path refused a request; `path` names the offending configuration node."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SfcClient(DatapathClient):
    def call(self, op: str, **kw: Any) -> Any:
        rid = next(self._ids)
        self.sock.sendall(_encode({"id": rid, "op": op, **kw}))
        deadline = time.monotonic() + self.timeout
        while True:
            msg = self._read_msg(deadline)
            if msg is None:
                raise TimeoutError(f"no reply to {op}")
            if msg.get("type") == "event":
                self._events.append(msg)
                continue
            if msg.get("id") == rid:
                if not msg.get("ok"):
                    raise SfcDatapathError(msg.get("error", "unknown error"), msg.get("path"))
                return msg.get("result")

    def check(self, cfg: SfcConfig) -> None:
        self.call("check", config=cfg.to_dict())

    def replace(self, cfg: SfcConfig) -> None:  # type: ignore[override]
        self.call("replace", config=cfg.to_dict())


def spawn(control: str, *, netns: str | None = None, extra: Sequence[str] = (),
          log_path: str | None = None) -> subprocess.Popen[bytes]:
    """Start an SFC data path process, inside network namespace `netns` if given."""
    cmd = [sys.executable, "-m", "nsf_agent.sfc.datapath", "--control", control, *extra]
    preexec = None
    if netns is not None:
        def preexec() -> None:
            from pyroute2 import netns as pnetns
            pnetns.setns(netns)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        return subprocess.Popen(cmd, preexec_fn=preexec, stdout=out, stderr=out, env=env)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


__all__ = ["SfcClient", "SfcDatapathError", "spawn"]
