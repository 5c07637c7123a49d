"""iperf3 TCP throughput hostA -> hostB through: our userspace ESP data path, strongSwan
charon with kernel-libipsec, and plain forwarding — same run, same namespaces.

Usage (root): .venv/bin/python bench/esp_throughput.py [--time 8] [--skip-strongswan]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nsf_agent.userspace import lab as L
from nsf_agent.userspace.client import DatapathClient, spawn
from nsf_agent.userspace.model import UdpEncap

log = logging.getLogger("bench.esp_throughput")
PSK = "0sv+NkxY9LLZvwj4qCC2o/gGrWDF2d21jL"


MSS: list[int] = []  # iperf3's reported MSS per run, in run order


def iperf(lab: L.Lab, seconds: float, parallel: int) -> float:
    """Receiver-side TCP goodput in Gbit/s. Every path gets the same iperf3 command (default
    window autotuning, default MSS); the MSS each path ends up with is recorded in `MSS`."""
    srv = lab.popen(lab.host_b, ["iperf3", "-s", "-1", "--forceflush"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert srv.stdout is not None
    for _ in range(3):  # a separator line, then "Server listening on 5201"
        line = srv.stdout.readline()
        if "listening" in line or not line:
            break
    if "listening" not in line:
        raise RuntimeError(f"iperf3 server did not start: {line!r}")
    r = lab.run(lab.host_a, ["iperf3", "-c", L.HOST_B, "-t", str(seconds), "-P", str(parallel),
                             "-J"], timeout=seconds + 60)
    srv.wait(30)
    if r.returncode != 0:
        raise RuntimeError(f"iperf3 failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    res = json.loads(r.stdout)
    MSS.append(int(res["start"].get("tcp_mss_default", 0)))
    return res["end"]["sum_received"]["bits_per_second"] / 1e9


def run_ours(lab: L.Lab, tmp: Path, seconds: float, parallel: int, encap: bool = False,
             extra: tuple[str, ...] = ()) -> tuple[float, dict[str, dict[str, int]]]:
    keys = L.TunnelKeys.random()
    clients = {}
    procs = []
    try:
        for side, ns in (("a", lab.gw_a), ("b", lab.gw_b)):
            sock = str(tmp / f"dp-{side}.sock")
            p = spawn(sock, tun="i2u0", netns=ns, log_path=str(tmp / f"dp-{side}.log"),
                      extra=extra)
            procs.append(p)
            c = DatapathClient(sock)
            clients[side] = c
            c.replace(*L.gateway_config(side, keys,
                                        encap=UdpEncap(4500, 4500) if encap else None))
        L.wait_until(lambda: lab.run(lab.host_a, ["ping", "-c1", "-W1", L.HOST_B]).returncode
                     == 0, 10, "tunnel up")
        bps = iperf(lab, seconds, parallel)
        stats = {s: c.stats()["global"] for s, c in clients.items()}
        return bps, stats
    finally:
        for c in clients.values():
            try:
                c.shutdown()
            except Exception as e:
                log.warning("data path shutdown: %s", e)
            c.close()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


STRONGSWAN_CONF = """
charon {{
  load = random nonce aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 pubkey openssl curve25519 \
kernel-libipsec kernel-netlink socket-default vici
  port = 500
  port_nat_t = 4500
  install_routes = yes
  plugins {{
    vici {{ socket = unix://{vici} }}
  }}
  filelog {{
    log {{ path = {log}
           default = 1 }}
  }}
}}
"""

SWANCTL_CONF = """
connections {{
  bench {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    proposals = aes128gcm16-prfsha256-x25519
    local {{ auth = psk
             id = {local} }}
    remote {{ auth = psk
              id = {remote} }}
    children {{
      net {{
        local_ts = {lnet}
        remote_ts = {rnet}
        esp_proposals = aes128gcm16
        mode = tunnel
      }}
    }}
  }}
}}
secrets {{
  ike-bench {{
    id-a = {local}
    id-b = {remote}
    secret = {psk}
  }}
}}
"""


def run_strongswan(lab: L.Lab, tmp: Path, seconds: float, parallel: int) -> float:
    charon = "/usr/lib/ipsec/charon"
    if not os.path.exists(charon) or shutil.which("swanctl") is None:
        raise RuntimeError("strongSwan not installed (apt-get install strongswan-charon "
                           "strongswan-swanctl libcharon-extra-plugins "
                           "libstrongswan-extra-plugins)")
    procs = []
    sides = (("a", lab.gw_a, L.GW_A, L.GW_B, L.NET_A, L.NET_B),
             ("b", lab.gw_b, L.GW_B, L.GW_A, L.NET_B, L.NET_A))
    try:
        for side, ns, local, remote, lnet, rnet in sides:
            d = tmp / f"ss-{side}"
            d.mkdir()
            vici = d / "charon.vici"
            conf = d / "strongswan.conf"
            conf.write_text(STRONGSWAN_CONF.format(vici=vici, log=d / "charon.log"))
            (d / "swanctl.conf").write_text(SWANCTL_CONF.format(
                local=local, remote=remote, lnet=lnet, rnet=rnet, psk=PSK))
            # a private /run per instance (ip netns exec gives us a mount namespace)
            script = f"mount -t tmpfs tmpfs /run && exec {charon}"
            env = dict(os.environ, STRONGSWAN_CONF=str(conf))
            p = lab.popen(ns, ["sh", "-c", script], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
            procs.append(p)
            L.wait_until(vici.exists, 20, f"charon vici socket in {ns}")
            r = subprocess.run(["swanctl", "--load-all", "--uri", f"unix://{vici}", "--file",
                                str(d / "swanctl.conf")], capture_output=True, text=True,
                               env=env)
            if r.returncode != 0:
                raise RuntimeError(f"swanctl --load-all: {r.stdout} {r.stderr}")
        vici_a = tmp / "ss-a" / "charon.vici"
        r = subprocess.run(["swanctl", "--initiate", "--child", "net", "--uri",
                            f"unix://{vici_a}", "--timeout", "20"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"swanctl --initiate: {r.stdout[-800:]} {r.stderr}")
        L.wait_until(lambda: lab.run(lab.host_a, ["ping", "-c1", "-W1", L.HOST_B]).returncode
                     == 0, 20, "strongSwan tunnel up")
        return iperf(lab, seconds, parallel)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def run_plain(lab: L.Lab, seconds: float, parallel: int) -> float:
    lab.route(lab.gw_a, str(L.NET_B), L.GW_B)
    lab.route(lab.gw_b, str(L.NET_A), L.GW_A)
    return iperf(lab, seconds, parallel)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=8.0, help="seconds per iperf3 run")
    ap.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams")
    ap.add_argument("--skip-strongswan", action="store_true")
    ap.add_argument("--encap", action="store_true",
                    help="also measure our data path with UDP encapsulation (as libipsec uses)")
    ap.add_argument("--no-offload", action="store_true",
                    help="also measure our data path without TSO/GRO on the TUN")
    ap.add_argument("--segmented", action="store_true",
                    help="also measure our data path with one ESP packet per MSS segment "
                         "(--no-big-esp)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    lab = L.Lab(L.unique_prefix("i2b"))
    results: dict[str, float] = {}
    mss: dict[str, int] = {}

    def put(name: str, bps: float) -> None:
        results[name] = bps
        mss[name] = MSS[-1] if MSS else 0

    tmp = Path(tempfile.mkdtemp(prefix="i2u-bench-"))
    try:
        lab.build()
        bps, stats = run_ours(lab, tmp, a.time, a.parallel)
        put("userspace ESP (ours, raw ESP)", bps)
        print(f"ours: {bps:.3f} Gbit/s   gwA {stats['a']}\n      gwB {stats['b']}",
              flush=True)
        if a.no_offload:
            bps, _ = run_ours(lab, tmp, a.time, a.parallel, extra=("--no-offload",))
            put("userspace ESP (ours, no TUN offload)", bps)
        if a.segmented:
            bps, _ = run_ours(lab, tmp, a.time, a.parallel, extra=("--no-big-esp",))
            put("userspace ESP (ours, segmented)", bps)
        if a.encap:
            bps, _ = run_ours(lab, tmp, a.time, a.parallel, encap=True)
            put("userspace ESP (ours, UDP 4500)", bps)
        if not a.skip_strongswan:
            try:
                put("strongSwan kernel-libipsec", run_strongswan(lab, tmp, a.time, a.parallel))
            except Exception as e:
                print(f"strongSwan run failed: {e}", file=sys.stderr)
        put("plain forwarding", run_plain(lab, a.time, a.parallel))
    finally:
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    ours = results["userspace ESP (ours, raw ESP)"]
    print(f"\niperf3 TCP, {a.time:g} s, -P {a.parallel}, hostA -> hostB, {os.cpu_count()} CPUs")
    for name, bps in results.items():
        print(f"  {name:38s} {bps * 1000:9.1f} Mbit/s   (iperf3 MSS {mss[name]})")
    ss = results.get("strongSwan kernel-libipsec")
    if ss:
        print(f"  ours / strongSwan kernel-libipsec      {ours / ss:6.2f}x")
    print(f"  ours / plain forwarding                {ours / results['plain forwarding']:6.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
