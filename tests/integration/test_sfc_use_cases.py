"""The seed's SFC use cases end to end with real security functions (nsf_agent.functions:
nftables firewall and DDoS mitigator, Hyperscan IDS on NFQUEUE) in the SF namespaces
behind F's proxies, real agents, the controller, traffic from hostA, tshark on the wire.

Use case 1 (seed §5.1, dynamic path alternation): SFP-1 firewall → IDS; the IDS matches
the flood's signature and asks for re-classification ("ddos-suspected"); the SFF that got
the tagged packet re-classifies it (rule pushed by the controller) onto SFP-2 firewall →
DDoS mitigator → IDS, where the mitigator caps the flood.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                       or shutil.which("tshark") is None or shutil.which("nft") is None,
                       reason="needs root, iproute2, nftables and tshark"),
    pytest.mark.root,
    pytest.mark.slow,
]

from tests.integration.sfc_ctl_lab import (  # noqa: E402
    Capture,
    SfcControllerLab,
    poll,
    sfc_controller_lab,
    tshark_nsh,
)

ROOT = Path(__file__).resolve().parents[2]
SIG = 'alert udp any any -> any 9000 (msg:"flood pattern"; content:"ATTACK"; sid:100; ' \
      'reclassify:"ddos-suspected";)'
# One instance per path hop (the agent's proxy serves an instance on one path): sfp-1 gets
# fw-1 and ids-1, sfp-2 fw-2, ddos-1 and ids-2 (the controller shares them out by name).
FW = {"firewall": {"default_action": "accept"}}
FUNCS = [("fw-1", "firewall", FW), ("ids-1", "ids", {"signatures": SIG}),
         ("fw-2", "firewall", FW),
         ("ddos-1", "ddos", {"ddos": {"per_source_pps": 50, "per_source_burst": 10}}),
         ("ids-2", "ids", {"signatures": SIG})]
CONFIG = """<sf-types><sf-type><name>firewall</name></sf-type><sf-type><name>ids</name>
</sf-type><sf-type><name>ddos</name></sf-type></sf-types>
<chains>
<chain><name>sfp-1</name><sf-type>firewall</sf-type><sf-type>ids</sf-type></chain>
<chain><name>sfp-2</name><sf-type>firewall</sf-type><sf-type>ddos</sf-type>
<sf-type>ids</sf-type></chain></chains>
<policies><policy><name>from-a</name><match><source-prefix>198.51.100.0/24</source-prefix>
</match><chain>sfp-1</chain></policy></policies>
<reclassification><rule><name>ddos</name><from-sf-type>ids</from-sf-type>
<inspection-result>ddos-suspected</inspection-result><from-chain>sfp-1</from-chain>
<to-chain>sfp-2</to-chain></rule></reclassification>"""


class Function:
    """One security function process in SF namespace `i` of the lab (what the DMS starts),
    reporting to the proxy's result socket and to a socket of the test."""

    def __init__(self, lab: SfcControllerLab, i: int, name: str, sf_type: str,
                 spec: dict[str, Any]) -> None:
        d = lab.workdir / f"sf-{name}"
        d.mkdir()
        self.proxy_socket = str(d / "proxy.sock")
        self.test_path = str(d / "test.sock")
        self.test = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.test.bind(self.test_path)
        rules = d / "rules.json"
        rules.write_text(json.dumps({"type": sf_type, **spec}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.net.sf(i), sys.executable, "-m", "nsf_agent.functions",
             "--instance", name, "--type", sf_type, "--rules", str(rules),
             "--report-socket", self.proxy_socket, "--report-socket", self.test_path,
             "--load-interval", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            raise RuntimeError(f"{sf_type} did not start: {line!r} "
                               f"{self.proc.stderr.read() if self.proc.stderr else ''}")

    def results(self, timeout: float = 0.3) -> list[dict[str, Any]]:
        out = []
        self.test.settimeout(timeout)
        with contextlib.suppress(TimeoutError, socket.timeout):
            while True:
                out.append(json.loads(self.test.recv(65536)))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.test.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[SfcControllerLab, dict[str, Function]]]:
    with sfc_controller_lab(sfs=len(FUNCS)) as lab:
        funcs: dict[str, Function] = {}
        try:
            for i, (name, t, spec) in enumerate(FUNCS):
                funcs[name] = Function(lab, i, name, t, spec)
            m = lab.connect()
            try:
                lab.configure(m, lab.forwarders_xml() + CONFIG.split("<chains>")[0])
                for i, (name, t, _spec) in enumerate(FUNCS):
                    lab.register(m, i, name, t, report_socket=funcs[name].proxy_socket)
            finally:
                m.close_session()
            yield lab, funcs
        finally:
            for f in funcs.values():
                f.close()


def _udp_receiver(lab: SfcControllerLab, port: int) -> socket.socket:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.host_b):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("203.0.113.10", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s


def _count(s: socket.socket, settle: float = 0.5) -> int:
    n = 0
    s.settimeout(settle)
    with contextlib.suppress(TimeoutError, socket.timeout):
        while True:
            s.recv(65536)
            n += 1
    return n


def _send(lab: SfcControllerLab, n: int, pace: float, payload: bytes, sport: int) -> None:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.host_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.51.100.10", sport))
    t0 = time.monotonic()
    for i in range(n):
        s.sendto(payload, ("203.0.113.10", 9000))
        due = t0 + (i + 1) * pace
        while time.monotonic() < due:
            pass
    s.close()


def test_dynamic_path_alternation(lab: tuple[SfcControllerLab, dict[str, Function]],
                                  tmp_path: Path) -> None:
    net, funcs = lab
    m = net.connect()
    try:
        net.configure(m, CONFIG, inventory=False)
        p = poll(lambda: (x := net.paths(m)) and all(
            x.get(c, {}).get("status") == "active" for c in ("sfp-1", "sfp-2")) and x, 20,
            "both paths active")
        spi1, spi2 = int(p["sfp-1"]["spi"]), int(p["sfp-2"]["spi"])
        rx = _udp_receiver(net, 9000)
        # a clean flow first: SFP-1 end to end, nothing dropped
        _send(net, 20, 0.005, b"hello " * 10, 40001)
        assert _count(rx) == 20
        for f in funcs.values():
            f.results(0.05)
        cap_fe = Capture(net.net.f, "e", tmp_path / "fe.pcap")  # F → E, after the last SF
        cap_dd = Capture(net.net.f, "i3", tmp_path / "ddos.pcap", bpf="udp")  # to the mitigator
        try:
            _send(net, 400, 0.002, b"ATTACK" + b"x" * 50, 40002)  # 500 pps for 0.8 s
            got = _count(rx)
        finally:
            time.sleep(0.2)
            rows_fe = tshark_nsh(cap_fe.stop())
            dd = cap_dd.stop()
        alerts = [r for r in funcs["ids-1"].results() if r.get("sid") == 100]
        assert alerts and alerts[0]["action"] == {"reclassify": "ddos-suspected"}
        t_alert = min(float(r["time"]) for r in alerts)
        first_dd = subprocess.run(
            ["tshark", "-r", str(dd), "-Y", "udp.dstport == 9000", "-T", "fields", "-e",
             "frame.time_epoch", "-c", "1"], capture_output=True, text=True).stdout.split()
        assert first_dd, "nothing reached the DDoS mitigator"
        latency = float(first_dd[0]) - t_alert
        print(f"\ndetection -> first packet on SFP-2 at the mitigator: {latency * 1000:.1f} ms; "
              f"flood 400 sent, {got} delivered")
        assert latency <= 0.2
        spis = {(spi, si) for src, spi, si in rows_fe if src == "198.51.100.10"}
        # the flood left F on SFP-2 after its last SF (SI 252); SFP-1 ends at SI 253
        assert (spi2, 252) in spis, (spi1, spis)
        assert 0 < got < 200  # the mitigator capped the flood (50 pps per source + burst)
        ddos_drops = [r for r in funcs["ddos-1"].results() if r.get("verdict") == "drop"]
        assert ddos_drops
        events = [k for k, _d in net.events(m)]
        assert "inspection-result" in events  # the controller was told
    finally:
        m.close_session()
