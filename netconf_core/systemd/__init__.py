"""systemd unit files for the daemons, shipped as package data so that `pip install` users
get them too; `install-unit` renders one with the absolute path of the installed console
script (a virtualenv's bin/ or /usr/local/bin) and writes it where systemd looks."""

from __future__ import annotations

import os
import shutil
import sys
from importlib import resources
from pathlib import Path

UNITS = {"agent": "i2nsf-agent.service", "controller": "i2nsf-controller.service",
         "dms": "i2nsf-dms.service"}
DEFAULT_DIR = Path("/etc/systemd/system")


def template(which: str) -> str:
    return resources.files(__package__).joinpath(UNITS[which]).read_text(encoding="utf-8")


def bin_dir(script: str) -> Path:
    """Where the console scripts live: beside the running one, else on PATH, else beside
    the interpreter (a virtualenv's bin/)."""
    here = Path(sys.argv[0]).resolve().parent
    if (here / script).exists():
        return here
    found = shutil.which(script)
    if found:
        return Path(found).resolve().parent
    return Path(sys.executable).parent


def render(which: str, bindir: Path | None = None, log_format: str = "json") -> str:
    script = UNITS[which].removesuffix(".service")
    text = template(which)
    return text.replace("@BIN@", str(bindir or bin_dir(script))).replace(
        "@LOG_FORMAT@", log_format)


def install(which: str, dest: Path = DEFAULT_DIR, bindir: Path | None = None,
            log_format: str = "json", force: bool = False) -> Path:
    """Write the unit into `dest` (refuses to overwrite unless `force`)."""
    path = dest / UNITS[which]
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(which, bindir, log_format), encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
