"""Compile fastpath.bpf.c with Debian's clang on first use, cached by content.

The object is keyed by a hash of the source and the compiler's version, so an edited
source or an upgraded clang gives a new object; the cache write is atomic (temporary
file, then rename), so concurrent agents never load a half-written object.
Cache directory: $I2NSF_FASTPATH_CACHE, else $XDG_CACHE_HOME/i2nsf-sdn/fastpath, else
~/.cache/i2nsf-sdn/fastpath. `python -m nsf_agent.sfc.fastpath build` fills it ahead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("fastpath.bpf.c")


class BuildError(RuntimeError):
    pass


def cache_dir() -> Path:
    env = os.environ.get("I2NSF_FASTPATH_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "i2nsf-sdn" / "fastpath"


def _clang() -> str:
    clang = shutil.which("clang")
    if not clang:
        raise BuildError("clang not found (Debian packages clang llvm libbpf-dev)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        raise BuildError("libbpf headers not found (Debian package libbpf-dev)")
    return clang


def _run(args: list[str]) -> str:
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise BuildError(f"{' '.join(args)} failed:\n{p.stderr.strip()}")
    return p.stdout


def object_path() -> Path:
    """Path of the compiled object, compiling it first if the cache has none."""
    clang = _clang()
    version = _run([clang, "--version"]).splitlines()[0]
    multiarch = _run([clang, "-print-multiarch"]).strip()
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + version.encode() + multiarch.encode()).hexdigest()[:16]
    out = cache_dir() / f"fastpath-{key}.o"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".fastpath-", suffix=".o")
    os.close(fd)
    try:
        args = [clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]
        if multiarch:
            args += ["-idirafter", f"/usr/include/{multiarch}"]
        _run([*args, "-c", str(SOURCE), "-o", tmp])
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
