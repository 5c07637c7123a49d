"""Fixtures for SAD tests that need a kernel with ESP (run by `make test-kernel` in the
test VM; on a host kernel without ESP they skip with the reason)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from nsf_agent.xfrm import Xfrm, probe_esp


def _new_netns() -> str:
    name = f"i2x-{os.getpid()}-{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"network namespaces unavailable: {r.stderr.strip()}")
    return name


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    if not shutil.which("ip"):
        pytest.skip("iproute2 (ip) not installed")
    name = _new_netns()
    try:
        refusal = probe_esp(name)
        if refusal is not None:
            pytest.skip(f"kernel without ESP ({refusal}); run `make test-kernel`")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def xfrm(netns: str) -> Iterator[Xfrm]:
    with Xfrm(netns) as x:
        yield x


def sh(netns: str, *cmd: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                          text=True, check=True).stdout
