"""iperf3 throughput hostA -> hostB (TCP, UDP 1300 B and UDP 64 B) through: our userspace
ESP data path, strongSwan charon with kernel-libipsec, and plain forwarding — same run, same
namespaces, AES-128-GCM everywhere.

strongSwan gets its fastest AES: the `aesni` plugin (then `openssl`), loaded *instead of* the
portable `aes`/`gcm` plugins (which it would otherwise prefer by load order); the bench prints
the ESP proposal charon negotiated and the plugin that provides AES_GCM_16.

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


def iperf_udp(lab: L.Lab, seconds: float, size: int, rate: str) -> tuple[float, float]:
    """UDP datagrams of `size` bytes offered at `rate`: (received Mbit/s of UDP payload,
    loss %), from the receiver's counts."""
    srv = lab.popen(lab.host_b, ["iperf3", "-s", "-1", "--forceflush"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert srv.stdout is not None
    for _ in range(3):
        line = srv.stdout.readline()
        if "listening" in line or not line:
            break
    r = lab.run(lab.host_a, ["iperf3", "-c", L.HOST_B, "-u", "-b", rate, "-l", str(size),
                             "-t", str(seconds), "-J"], timeout=seconds + 60)
    srv.wait(30)
    if r.returncode != 0:
        raise RuntimeError(f"iperf3 -u failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    end = json.loads(r.stdout)["end"]["sum"]
    got = int(end["packets"]) - int(end["lost_packets"])
    return got * size * 8 / float(end["seconds"]) / 1e6, float(end["lost_percent"])


# What each path is measured with (name -> callable(lab) -> value), filled by main()
UDP_ROWS = ((1300, "UDP 1300 B"), (64, "UDP 64 B"))


def measure(lab: L.Lab, a: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """TCP and the UDP rows on the path currently set up: name -> (Mbit/s, loss %)."""
    out = {}
    if "tcp" in a.rows:
        out["TCP"] = (iperf(lab, a.time, a.parallel) * 1000, 0.0)
    for size, name in UDP_ROWS:
        if f"udp{size}" in a.rows:
            out[name] = iperf_udp(lab, a.time, size, a.udp_rate)
    return out


def run_ours(lab: L.Lab, tmp: Path, seconds: float, parallel: int, encap: bool = False,
             extra: tuple[str, ...] = (), a: argparse.Namespace | None = None,
             ) -> tuple[dict[str, tuple[float, float]], dict[str, dict[str, int]]]:
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
        assert a is not None
        rows = measure(lab, a)
        stats = {s: c.stats()["global"] for s, c in clients.items()}
        return rows, stats
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


# Crypto plugins by choice: strongSwan takes the first plugin in `load` that provides an
# algorithm, so the fast ones come first and the portable aes/gcm plugins are left out.
SS_CRYPTO = {
    "aesni": "aesni openssl",
    "openssl": "openssl",
    "software": "aes gcm",  # (what the bench used before: portable C, no AES-NI)
}

STRONGSWAN_CONF = """
charon {{
  load = random nonce {crypto} sha1 sha2 hmac kdf pem pkcs1 x509 pubkey curve25519 \
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


SS_INFO: dict[str, str] = {}  # negotiated proposal and AEAD plugin of the last run


def _strongswan_info(vici: Path) -> None:
    """The ESP proposal charon negotiated (list-sas) and the plugin providing AES_GCM_16
    (list-algs: `AES_GCM_16[aesni]`)."""
    r = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{vici}"],
                       capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if "ESP:" in line:  # the CHILD_SA line: "net: #1, reqid 1, INSTALLED, TUNNEL, ESP:..."
            SS_INFO["proposal"] = line.strip()
            break
    r = subprocess.run(["swanctl", "--list-algs", "--uri", f"unix://{vici}"],
                       capture_output=True, text=True)
    section = ""
    for line in r.stdout.splitlines():
        if not line.startswith(" "):
            section = line.strip().rstrip(":")
        elif section == "aead" and "AES_GCM_16" in line:
            SS_INFO["aead"] = line.strip()
            break


def run_strongswan(lab: L.Lab, tmp: Path, a: argparse.Namespace,
                   ) -> dict[str, tuple[float, float]]:
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
            conf.write_text(STRONGSWAN_CONF.format(vici=vici, log=d / "charon.log",
                                                   crypto=SS_CRYPTO[a.strongswan_crypto]))
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
        _strongswan_info(vici_a)
        return measure(lab, a)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


def run_plain(lab: L.Lab, a: argparse.Namespace) -> dict[str, tuple[float, float]]:
    lab.route(lab.gw_a, str(L.NET_B), L.GW_B)
    lab.route(lab.gw_b, str(L.NET_A), L.GW_A)
    return measure(lab, a)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time", type=float, default=8.0, help="seconds per iperf3 run")
    ap.add_argument("--parallel", type=int, default=1, help="iperf3 -P streams (TCP)")
    ap.add_argument("--udp-rate", default="1G", help="offered UDP rate (iperf3 -b)")
    ap.add_argument("--strongswan-crypto", choices=sorted(SS_CRYPTO), default="aesni",
                    help="strongSwan crypto plugins (default: aesni, then openssl)")
    ap.add_argument("--skip-strongswan", action="store_true")
    ap.add_argument("--skip-plain", action="store_true")
    ap.add_argument("--rows", default="tcp,udp1300,udp64",
                    help="comma-separated rows: tcp, udp1300, udp64")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure ours and strongSwan this many times, interleaved (the "
                         "machine is shared: ratios of neighbouring runs are what counts)")
    ap.add_argument("--encap", action="store_true",
                    help="also measure our data path with UDP encapsulation (as libipsec uses)")
    ap.add_argument("--no-offload", action="store_true",
                    help="also measure our data path without TSO/GRO on the TUN")
    ap.add_argument("--generic", action="store_true",
                    help="also measure our data path without its fast path (--no-fast-path)")
    ap.add_argument("--segmented", action="store_true",
                    help="also measure our data path with one ESP packet per MSS segment "
                         "(--no-big-esp)")
    a = ap.parse_args()
    a.rows = set(a.rows.split(","))
    logging.basicConfig(level=logging.WARNING)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    lab = L.Lab(L.unique_prefix("i2b"))
    results: dict[str, dict[str, tuple[float, float]]] = {}
    ours_name = "userspace ESP (ours, raw ESP)"
    ss_name = "strongSwan kernel-libipsec"
    tmp = Path(tempfile.mkdtemp(prefix="i2u-bench-"))
    try:
        lab.build()
        for i in range(a.repeat):
            sfx = f" #{i + 1}" if a.repeat > 1 else ""
            rows, stats = run_ours(lab, tmp, a.time, a.parallel, a=a)
            results[ours_name + sfx] = rows
            print(f"ours{sfx}: {rows}\n  gwA {stats['a']}\n  gwB {stats['b']}", flush=True)
            if a.generic:
                results["ours, generic path" + sfx] = run_ours(
                    lab, tmp, a.time, a.parallel, extra=("--no-fast-path",), a=a)[0]
            if not a.skip_strongswan:
                try:
                    shutil.rmtree(tmp / "ss-a", ignore_errors=True)
                    shutil.rmtree(tmp / "ss-b", ignore_errors=True)
                    results[ss_name + sfx] = run_strongswan(lab, tmp, a)
                    print(f"strongSwan{sfx}: {results[ss_name + sfx]}", flush=True)
                except Exception as e:
                    print(f"strongSwan run failed: {e}", file=sys.stderr)
        if a.no_offload:
            results["userspace ESP (ours, no TUN offload)"] = run_ours(
                lab, tmp, a.time, a.parallel, extra=("--no-offload",), a=a)[0]
        if a.segmented:
            results["userspace ESP (ours, segmented)"] = run_ours(
                lab, tmp, a.time, a.parallel, extra=("--no-big-esp",), a=a)[0]
        if a.encap:
            results["userspace ESP (ours, UDP 4500)"] = run_ours(
                lab, tmp, a.time, a.parallel, encap=True, a=a)[0]
        if not a.skip_plain:
            results["plain forwarding"] = run_plain(lab, a)
    finally:
        lab.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\niperf3, {a.time:g} s per row, TCP -P {a.parallel}, UDP offered {a.udp_rate}, "
          f"hostA -> hostB, {os.cpu_count()} CPUs; AES-128-GCM")
    print("  ours: AES_GCM_16-128 (cryptography/OpenSSL, AES-NI)")
    if any(k.startswith(ss_name) for k in results):
        print(f"  strongSwan ({a.strongswan_crypto}): {SS_INFO.get('proposal', '?')}; "
              f"aead {SS_INFO.get('aead', '?')}")
    rows = [r for r in ("TCP", *(n for _, n in UDP_ROWS)) if r in next(iter(results.values()))]
    print(f"  {'path':40s}" + "".join(f"{r:>24s}" for r in rows))
    for name, res in results.items():
        cells = ""
        for r in rows:
            mbit, loss = res.get(r, (0.0, 0.0))
            cells += f"{mbit:13.1f} Mbit/s" + (f" {loss:3.0f}%" if r != "TCP" else "     ")
        print(f"  {name:40s}{cells}")
    for i in range(a.repeat):
        sfx = f" #{i + 1}" if a.repeat > 1 else ""
        ours = results.get(ours_name + sfx)
        for base in (ss_name + sfx, "plain forwarding"):
            if ours is None or base not in results:
                continue
            ratio = "".join(f"{ours[r][0] / results[base][r][0]:23.2f}x"
                            if results[base].get(r, (0, 0))[0] else f"{'-':>24s}"
                            for r in rows)
            print(f"  {'ours' + sfx + ' / ' + base:40s}{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
