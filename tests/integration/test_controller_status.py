"""Issue 13.2 with real data planes: a tunnel that dies one way while both NSFs stay
reachable and keep their SAs (gwB's ingress drops ESP, nftables) turns the policy from
`active` into `degraded` — read from the per-SA packet counters of both NSFs — and back to
`active` when the ESP flows again.

Real daemons: `i2nsf-agent run` (userspace ESP) in gwA/gwB, `i2nsf-controller serve`
(tests/integration/gateway_lab.py), ping hostA → hostB.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("nft") is None,
                       reason="needs root and nftables (network namespaces, TUN, raw sockets)"),
    pytest.mark.root,
    pytest.mark.slow,
]

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"
DROP_ESP = """table inet i2t_drop {
    chain pre { type filter hook prerouting priority raw; policy accept; ip protocol esp drop; }
}"""


def nft(gl: Any, ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True, timeout=30)


def test_one_way_dead_tunnel_is_degraded_then_active(tmp_path: Any) -> None:
    from gateway_lab import gateway_lab, poll

    from nsf_agent.userspace.lab import HOST_B

    with gateway_lab("i2s", soft=600, hard=1200,
                     ctl_options={"status_interval": 0.5}) as gl:
        m = gl.connect()
        try:
            m.edit_config(target="running", config=gl.inventory_xml())
        finally:
            m.close_session()

        def status() -> tuple[str | None, str]:
            p = gl.policy_state("g2g")
            if p is None:
                return None, ""
            return p.findtext(Q + "status"), p.findtext(Q + "error-message") or ""

        def counted(nsf: str, direction: str) -> int:
            p = gl.policy_state("g2g")
            gen = p.findtext(Q + "generation") if p is not None else None
            for s in (p.iter(Q + "sa") if p is not None else ()):
                if (s.findtext(Q + "nsf") == nsf and s.findtext(Q + "direction") == direction
                        and s.findtext(Q + "generation") == gen
                        and s.findtext(Q + "name", "").split("/")[3] == "a2b"):
                    return int(s.findtext(Q + "packets") or -1)
            return -1

        poll(lambda: status()[0] == "active", 30, "policy active")
        ping = gl.lab.popen(gl.lab.host_a, ["ping", "-n", "-i", "0.05", HOST_B],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # the counters of both ends move, as read by the controller
            poll(lambda: counted("gwa", "outbound") >= 10 and counted("gwb", "inbound") >= 10,
                 20, "a2b packets counted on gwa (sent) and gwb (received)")
            assert status()[0] == "active"
            nft(gl, gl.gw_ns("b"), DROP_ESP)  # gwB no longer receives what gwA sends
            poll(lambda: status()[0] == "degraded", 10, "policy degraded")
            why = status()[1]
            assert "NSF gwa sent" in why and "that NSF gwb did not receive" in why, why
            assert "fp/g2g/0/" in why
            nft(gl, gl.gw_ns("b"), "delete table inet i2t_drop")
            poll(lambda: status()[0] == "active", 10, "policy active again")
            assert status()[1] == ""
        finally:
            ping.send_signal(signal.SIGINT)
            ping.wait(10)
