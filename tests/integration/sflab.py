"""The security functions' lab (nsf_agent.functions.lab) for the tests, and their root mark."""

from __future__ import annotations

import os

import pytest

from nsf_agent.functions.lab import (  # noqa: F401 (re-exported for the tests)
    DST6,
    DST_IP,
    ROOT,
    SRC6,
    SRC_A,
    SRC_B,
    Lab,
    SfProcess,
    drain,
    in_netns,
    pending,
    send_udp,
    sh,
    udp_socket,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, "
                                "veth, nftables)")
