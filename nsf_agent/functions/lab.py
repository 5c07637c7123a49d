"""A lab for security function instances (tests, bench/sf_inspection.py): namespaces SRC
(192.0.2.10 and .11, 2001:db8:1::10) and DST (198.51.100.10, 2001:db8:2::10) around a HOST
namespace that plays the SFC proxy with plain kernel routing: what enters from SRC or DST is
sent into an instance's host-side `to-sf` link (policy routing to the instance's sf-in MAC),
and what comes back on `from-sf` is routed normally to the other side. Names are unique per
run; `close` removes it all."""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]  # the tree holding nsf_agent
SRC_A, SRC_B, DST_IP = "192.0.2.10", "192.0.2.11", "198.51.100.10"
SRC6, DST6 = "2001:db8:1::10", "2001:db8:2::10"
T = TypeVar("T")

def sh(*args: str, input: str | None = None, check: bool = True) -> str:
    r = subprocess.run(list(args), input=input, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` on a thread that entered `ns` (sockets it makes stay in `ns`)."""
    from pyroute2 import netns as pnetns

    fut: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            pnetns.setns(ns)
            fut.set_result(fn())
        except BaseException as exc:  # handed to the caller
            fut.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return fut.result(timeout=30)


def udp_socket(ns: str, bind: tuple[str, int], family: int = socket.AF_INET) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(bind)
        return s

    return in_netns(ns, make)


def drain(sock: socket.socket, settle: float = 0.3) -> list[tuple[bytes, Any]]:
    """Read datagrams until none arrived for `settle` seconds (traffic has stopped)."""
    out: list[tuple[bytes, Any]] = []
    sock.settimeout(settle)
    while True:
        try:
            out.append(sock.recvfrom(65535))
        except TimeoutError:
            return out


def pending(sock: socket.socket) -> list[bytes]:
    """The datagrams already queued on `sock` (for streams that never pause, like loads)."""
    out: list[bytes] = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536))
    except BlockingIOError:
        return out
    finally:
        sock.setblocking(True)


class Lab:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.tag = tag
        self.src, self.dst, self.host = f"sfl-s-{tag}", f"sfl-d-{tag}", f"sfl-h-{tag}"
        for ns in (self.src, self.dst, self.host):
            sh("ip", "netns", "add", ns)
        sh("ip", "netns", "exec", self.host, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
           "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
           "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0",
           "net.ipv6.conf.default.accept_dad=0")
        for ns in (self.src, self.dst):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w",
               "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        sh("ip", "-n", self.host, "-batch", "-", input="\n".join([
            f"link add hs type veth peer name lan netns {self.src}",
            f"link add hd type veth peer name lan netns {self.dst}",
            "link set lo up", "link set hs up", "link set hd up",
            "addr add 192.0.2.1/24 dev hs", "addr add 198.51.100.1/24 dev hd",
            "addr add 2001:db8:1::1/64 dev hs nodad", "addr add 2001:db8:2::1/64 dev hd nodad",
        ]) + "\n")
        sh("ip", "-n", self.src, "-batch", "-", input="\n".join([
            "link set lo up", "link set lan up", f"addr add {SRC_A}/24 dev lan",
            f"addr add {SRC_B}/24 dev lan", f"addr add {SRC6}/64 dev lan nodad",
            "route add default via 192.0.2.1", "route add default via 2001:db8:1::1",
        ]) + "\n")
        sh("ip", "-n", self.dst, "-batch", "-", input="\n".join([
            "link set lo up", "link set lan up", f"addr add {DST_IP}/24 dev lan",
            f"addr add {DST6}/64 dev lan nodad",
            "route add default via 198.51.100.1", "route add default via 2001:db8:2::1",
        ]) + "\n")
        self.steered: str | None = None

    def steer(self, to_sf: str, sf_mac: str) -> None:
        """Send what arrives from SRC and DST through the instance behind `to_sf`."""
        cmds = [
            f"neigh replace 169.254.2.2 lladdr {sf_mac} dev {to_sf} nud permanent",
            f"neigh replace fe80::2 lladdr {sf_mac} dev {to_sf} nud permanent",
            f"route replace default via 169.254.2.2 dev {to_sf} onlink table 100",
            f"route replace default via fe80::2 dev {to_sf} table 100",
        ]
        sh("ip", "-n", self.host, "-batch", "-", input="\n".join(cmds) + "\n")
        if self.steered is None:
            for fam in ("-4", "-6"):
                sh("ip", fam, "-n", self.host, "-batch", "-",
                   input="rule add iif hs lookup 100 pref 100\n"
                   "rule add iif hd lookup 100 pref 101\n")
        self.steered = to_sf

    def close(self) -> None:
        for ns in (self.src, self.dst, self.host):
            sh("ip", "netns", "del", ns, check=False)


class SfProcess:
    """A function process run directly (without the DMS) in an instance namespace."""

    def __init__(self, lab: Lab, sf_type: str, spec: dict[str, Any], tmp: Path,
                 extra: tuple[str, ...] = ()) -> None:
        from nsf_agent.dms import plumbing

        self.ns = f"sfl-f-{lab.tag}"
        self.to_sf, self.from_sf = f"t{lab.tag}i", f"t{lab.tag}o"
        self.links = plumbing.create(self.ns, self.to_sf, self.from_sf, lab.host)
        self.lab = lab
        self.report_path = str(tmp / "report.sock")
        self.load_path = str(tmp / "load.sock")
        self.report = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.report.bind(self.report_path)
        self.loads = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.loads.bind(self.load_path)
        rules = tmp / "rules.json"
        rules.write_text(json.dumps({"type": sf_type, **spec}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "nsf_agent.functions",
             "--instance", f"t-{sf_type}", "--type", sf_type, "--rules", str(rules),
             "--report-socket", self.report_path, "--load-socket", self.load_path,
             "--control-socket", str(tmp / "ctl.sock"), "--load-interval", "0.2", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.close()
            raise RuntimeError(f"function did not start: {line!r} {err}")
        lab.steer(self.to_sf, self.links.sf_mac)

    def results(self, settle: float = 0.3) -> list[dict[str, Any]]:
        return [json.loads(d) for d, _ in drain(self.report, settle)]

    def close(self) -> None:
        from nsf_agent.dms import plumbing

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        plumbing.destroy(self.ns, self.to_sf, self.from_sf, self.lab.host)
        self.report.close()
        self.loads.close()


def send_udp(ns: str, src: str, dst: str, dport: int, payloads: list[bytes],
             pace: float = 0.0) -> float:
    """Send from (src, any port); returns the seconds it took."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = udp_socket(ns, (src, 0), fam)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    t0 = time.monotonic()
    try:
        for i, p in enumerate(payloads):
            while True:
                try:
                    s.sendto(p, (dst, dport))
                    break
                except BlockingIOError:
                    continue
            if pace:
                due = t0 + (i + 1) * pace
                while time.monotonic() < due:
                    pass
        return time.monotonic() - t0
    finally:
        s.close()
