"""IKE case vs IKE-less case: time from policy apply to traffic flowing, N = 1, 10, 100.

One gateway pair on namespaces (`GatewayLab` of tests/integration/gateway_lab.py:
hostA — gwA ══ gwB — hostB),
agents with the `userspace` and `ike` appliers (charon with kernel-libipsec), the controller
as `i2nsf-controller serve`. N tunnels are N policies between the same two gateways, each
with its own subnet pair (10.100.i.0/24 behind gwA ↔ 10.200.i.0/24 behind gwB; hostA and
hostB hold 10.100.i.1 and 10.200.i.1), not N namespace pairs.

For each case and N: one edit-config with the N policies; the clock runs from sending it
until every one of the N flows has carried a UDP probe there and back (a probe client in
hostA sends from each 10.100.i.1 to an echo server on 10.200.i.1 until every flow has
answered). Then the policies are deleted and the next run starts from clean gateways.

Usage: `python bench/ike_setup.py [--sizes 1,10,100]` (root; ~1-2 min).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))  # gateway_lab, the test harness

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"

# one socket per address: a reply must leave from 10.200.i.1 to match the flow's selector
ECHO = """
import select, socket, sys
socks = []
for i in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"10.200.{i}.1", 9999))
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
"""

PROBE = """
import select, socket, sys, time
n, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
socks = {}
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((f"10.100.{i}.1", 0))
    s.setblocking(False)
    socks[s] = i
left = set(socks)
while left and time.monotonic() < deadline:
    for s in left:
        s.sendto(b"probe", (f"10.200.{socks[s]}.1", 9999))
    end = time.monotonic() + 0.05
    while left and time.monotonic() < end:
        r, _, _ = select.select(list(left), [], [], max(0.0, end - time.monotonic()))
        for s in r:
            try:
                s.recvfrom(2048)
                left.discard(s)
            except OSError:
                pass
print(len(left))
sys.exit(1 if left else 0)
"""


def policies_xml(n: int, ike: bool, op: str = "") -> str:
    out = []
    for i in range(n):
        km = "<ike><auth-method>psk</auth-method></ike>" if ike else ""
        attr = f' xmlns:nc="{NC}" nc:operation="{op}"' if op else ""
        body = "" if op == "delete" else (
            f"<endpoint-a><nsf>gwa</nsf><prefix>10.100.{i}.0/24</prefix></endpoint-a>"
            f"<endpoint-b><nsf>gwb</nsf><prefix>10.200.{i}.0/24</prefix></endpoint-b>"
            f"<crypto-profile>lab</crypto-profile>{km}")
        out.append(f"<policy{attr}><name>b{i}</name>{body}</policy>")
    return (f'<config xmlns="{NC}"><flow-protection xmlns="{FP}"><policies>{"".join(out)}'
            "</policies></flow-protection></config>")


def setup_hosts(gl: Any, n: int) -> None:
    run = gl.lab.run
    for i in range(n):
        run(gl.lab.host_a, ["ip", "addr", "add", f"10.100.{i}.1/32", "dev", "eth0"])
        run(gl.lab.host_b, ["ip", "addr", "add", f"10.200.{i}.1/32", "dev", "eth0"])
        # kernel-libipsec routes into ipsec0 from an address of the local selector: a
        # gateway without one gets "unable to install IPsec policies" (TS_UNACCEPTABLE)
        run(gl.lab.gw_a, ["ip", "addr", "add", f"10.100.{i}.254/32", "dev", "lan"])
        run(gl.lab.gw_b, ["ip", "addr", "add", f"10.200.{i}.254/32", "dev", "lan"])
    run(gl.lab.gw_a, ["ip", "route", "add", "10.100.0.0/16", "via", "198.51.100.10"])
    run(gl.lab.gw_b, ["ip", "route", "add", "10.200.0.0/16", "via", "203.0.113.10"])


def clean(gl: Any, n: int) -> None:
    from gateway_lab import poll

    m = gl.connect()
    try:
        m.edit_config(target="running", config=policies_xml(n, False, "delete"))
    finally:
        m.close_session()

    def gone() -> bool:
        m = gl.connect()
        try:
            st = m.get(filter=("subtree", f'<flow-protection-state xmlns="{FP}"/>')).xml
        finally:
            m.close_session()
        vici = [subprocess.run(["swanctl", "--list-sas", "--uri",
                                f"unix://{gl.agent_state(s) / 'ike' / 'charon.vici'}"],
                               capture_output=True, text=True).stdout for s in ("a", "b")]
        return "<name>b" not in st and all("fp/" not in v for v in vici)

    poll(gone, 120, "policies removed", interval=0.2)


def run_one(gl: Any, n: int, ike: bool) -> float:
    m = gl.connect()
    try:
        t0 = time.monotonic()
        m.edit_config(target="running", config=policies_xml(n, ike))
    finally:
        m.close_session()
    r = gl.lab.run(gl.lab.host_a, [sys.executable, "-c", PROBE, str(n), "120"], timeout=150)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{'IKE' if ike else 'IKE-less'} N={n}: {r.stdout.strip()} flows "
                           f"never answered; {r.stderr[-500:]}")
    clean(gl, n)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,10,100")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]

    from gateway_lab import GatewayLab

    from nsf_agent.userspace.lab import unique_prefix

    work = Path(tempfile.mkdtemp(prefix="i2nsf-ikebench-"))
    gl = GatewayLab(unique_prefix("ikb"), work, soft=600, hard=700,
                    appliers=("userspace", "ike"))
    echo = None
    try:
        gl.start()
        m = gl.connect()
        try:
            m.edit_config(target="running", config=gl.inventory_xml(policy=None))
        finally:
            m.close_session()
        setup_hosts(gl, max(sizes))
        echo = gl.lab.popen(gl.lab.host_b, [sys.executable, "-c", ECHO, str(max(sizes))])
        rows = []
        for n in sizes:
            ikeless = run_one(gl, n, ike=False)
            ike = run_one(gl, n, ike=True)
            rows.append((n, ike, ikeless))
            print(f"N={n:>3}: IKE {ike:7.2f} s   IKE-less {ikeless:7.2f} s   "
                  f"ratio IKE/IKE-less {ike / ikeless:5.2f}x", flush=True)
        print()
        print("| tunnels (policies, one gateway pair) | IKE case | IKE-less case | ratio |")
        print("|---|---|---|---|")
        for n, ike, ikeless in rows:
            print(f"| {n} | {ike:.2f} s | {ikeless:.2f} s | {ike / ikeless:.2f}x |")
    finally:
        if echo is not None:
            echo.kill()
        gl.destroy()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
