"""What the DMS has created, persisted before each step (write, fsync, rename): after a crash
the next start knows every namespace, link and process it may have left behind, and either
adopts a complete instance or removes what a half-done create or remove left."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CREATING, RUNNING, FAILED, REMOVING = "creating", "running", "failed", "removing"


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.exists():
            self.entries = json.loads(path.read_text()).get("instances", {})

    def put(self, name: str, entry: dict[str, Any]) -> None:
        self.entries[name] = entry
        self._write()

    def update(self, name: str, **fields: Any) -> None:
        self.entries[name].update(fields)
        self._write()

    def drop(self, name: str) -> None:
        if self.entries.pop(name, None) is not None:
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "instances": self.entries}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
