"""Issue #24.4 on a kernel with ESP: the xfrm applier's sadb-statistics count the namespace's
drops — an ESP packet with an unknown SPI is counted under unknown-spi."""

from __future__ import annotations

import socket
from pathlib import Path

from lxml import etree

from netconf_core.polling import wait_until
from nsf_agent.appliers.xfrm import XfrmApplier
from nsf_agent.userspace.lab import in_netns


def stats(ap: XfrmApplier) -> dict[str, int]:
    return {etree.QName(x).localname: int(x.text) for x in ap.state(etree.Element("d"))[0]}


def test_unknown_spi_is_counted(netns: str, tmp_path: Path) -> None:
    import subprocess

    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    ap = XfrmApplier(netns, state_dir=tmp_path)
    try:
        before = stats(ap)
        with in_netns(netns):
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
        try:
            s.sendto(b"\x00\x00\x12\x34\x00\x00\x00\x01" + bytes(40), ("127.0.0.1", 0))
        finally:
            s.close()
        wait_until(lambda: stats(ap)["unknown-spi"] == before["unknown-spi"] + 1, 5,
                   "XfrmInNoStates in the namespace", interval=0.05)
    finally:
        ap.close()
