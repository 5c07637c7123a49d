"""Inspection throughput of one security function instance at 1400-byte packets: an IDS and
a DPI instance (NFQUEUE + Hyperscan, a signature set that does not match the traffic, so
every packet is scanned whole) against the same path with a plain forwarding instance, and
an nftables firewall for reference. Same run, same namespaces (nsf_agent.functions.lab):
SRC -> host (routes into the instance's sf-in) -> instance -> host -> DST.

Traffic: iperf3 UDP at the highest rate it can send (-b 0), 1372-byte datagrams = 1400-byte
IP packets. For forward/firewall the rate is what arrived at DST; for the IDS/DPI it is what
the function inspected (its own counter): an IDS/DPI lets what overflows its queue pass
uninspected (fail-open). pps and Mbit/s are counted at the IP layer.

Usage (root): .venv/bin/python bench/sf_inspection.py [--time 4] [--rules 200]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nsf_agent.functions.lab import DST_IP, Lab, SfProcess, pending

PKT = 1400
PAYLOAD = PKT - 28  # IPv4 + UDP headers


def signature_set(n: int) -> str:
    """n content rules in the style of a real rule set (8-20 byte literals, some nocase, some
    with hex bytes, some port-bound), none of which matches iperf3's payload."""
    rnd = random.Random(7)
    lines = []
    for sid in range(1, n + 1):
        lit = "".join(rnd.choice(string.ascii_letters) for _ in range(rnd.randint(8, 20)))
        content = f'"{lit[:4]}|{rnd.randrange(256):02x} {rnd.randrange(256):02x}|{lit[4:]}"'
        mods = "; nocase" if sid % 3 == 0 else ""
        port = "any" if sid % 4 else str(1000 + sid)
        lines.append(f'alert udp any any -> any {port} (msg:"bench {sid}"; content:{content}'
                     f'{mods}; sid:{sid};)')
    return "\n".join(lines)


def _control(path: Path, req: dict[str, Any]) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        s.sendall(json.dumps(req).encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return dict(json.loads(buf))


def iperf_udp(lab: Lab, seconds: float, kind: str) -> dict[str, float]:
    srv = subprocess.Popen(["ip", "netns", "exec", lab.dst, "iperf3", "-s", "-1", "-B", DST_IP,
                            "--forceflush"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert srv.stdout is not None
    for _ in range(3):
        if "listening" in srv.stdout.readline():
            break
    r = subprocess.run(["ip", "netns", "exec", lab.src, "iperf3", "-c", DST_IP, "-u", "-b", "0",
                        "-l", str(PAYLOAD), "-t", str(seconds), "-J"],
                       capture_output=True, text=True, timeout=seconds + 60, check=False)
    srv.wait(30)
    if r.returncode != 0:
        raise RuntimeError(f"iperf3: {r.stdout[-400:]} {r.stderr[-400:]}")
    end = json.loads(r.stdout)["end"]
    s = end["sum"]
    secs = float(s["seconds"])
    sent = int(s["packets"])
    received = sent - int(s["lost_packets"])
    pps = received / secs
    return {"sent_pps": sent / secs, "pps": pps, "mbps": pps * PKT * 8 / 1e6,
            "lost_percent": float(s["lost_percent"]), "seconds": secs}


def run(lab: Lab, kind: str, spec: dict[str, Any], seconds: float, tmp: Path
        ) -> dict[str, float]:
    d = tmp / kind
    d.mkdir()
    sf = SfProcess(lab, kind, spec, d)
    try:
        out = iperf_udp(lab, seconds, kind)
        loads = [json.loads(x) for x in pending(sf.loads)]
        cpu = [ld["cpu"] for ld in loads if ld.get("pps", 0) > 0]
        out["sf_cpu"] = max(cpu) if cpu else 0.0
        # CPU the function's process spent per packet it inspected (NFQUEUE functions)
        busy = [ld for ld in loads if ld.get("inspected")]
        out["us_per_pkt"] = 0.0
        if len(busy) >= 2 and busy[-1]["inspected"] > busy[0]["inspected"]:
            out["us_per_pkt"] = 1e6 * (busy[-1]["cpu_seconds"] - busy[0]["cpu_seconds"]) / (
                busy[-1]["inspected"] - busy[0]["inspected"])
        # an ids/dpi lets what overflows its queue through uninspected: count what it saw
        out["inspected"] = out["pps"]
        if kind in ("ids", "ips", "dpi"):
            now = _control(d / "ctl.sock", {"op": "load"})["load"]
            out["inspected"] = now["inspected"] / out["seconds"]
        return out
    finally:
        sf.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=float, default=4.0, help="seconds per measurement")
    ap.add_argument("--rules", type=int, default=200, help="signatures in the IDS/DPI set")
    args = ap.parse_args()
    rules = signature_set(args.rules)
    lab = Lab()
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            results["forward"] = run(lab, "forward", {}, args.time, tmp)
            results["firewall"] = run(lab, "firewall", {"firewall": {
                "default_action": "accept", "rules": [
                    {"seq": s, "action": "drop", "protocol": 6,
                     "destination_port": str(2000 + s)} for s in range(1, 51)]}},
                args.time, tmp)
            results["ids"] = run(lab, "ids", {"signatures": rules}, args.time, tmp)
            results["dpi"] = run(lab, "dpi", {"signatures": rules}, args.time, tmp)
    finally:
        lab.close()
    base = results["forward"]
    print(f"1400-byte IP packets, iperf3 UDP -b 0, {args.time:g} s each; IDS/DPI with "
          f"{args.rules} signatures (no match: every byte scanned); one instance each")
    print("inspected = packets the function looked at (an ids/dpi lets what overflows its "
          "queue pass uninspected); 'vs forward' = inspected / forward's passed")
    print(f"{'instance':<10} {'offered pps':>12} {'passed pps':>11} {'inspected':>10} "
          f"{'Mbit/s':>7} {'SF CPU %':>9} {'us CPU/pkt':>11} {'vs forward':>11}")
    for k, r in results.items():
        mbps = r["inspected"] * PKT * 8 / 1e6
        print(f"{k:<10} {r['sent_pps']:>12.0f} {r['pps']:>11.0f} {r['inspected']:>10.0f} "
              f"{mbps:>7.0f} {r['sf_cpu']:>9.0f} {r['us_per_pkt']:>11.1f} "
              f"{r['inspected'] / base['pps']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
