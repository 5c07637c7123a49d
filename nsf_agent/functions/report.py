"""What a function tells others: inspection results (docs/sfc.md: JSON datagrams to each
--report-socket, e.g. the SFC proxy's and the DMS's) and load (JSON datagrams to the
--load-socket, the DMS's). Sending never blocks the packet path: a reader that is gone or
slow loses datagrams, counted in `lost`."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field

from nsf_agent.functions.packet import Flow


class Reporter:
    def __init__(self, instance: str, sf_type: str, report_sockets: list[str],
                 load_socket: str | None) -> None:
        self.instance = instance
        self.type = sf_type
        self.report_sockets = list(report_sockets)
        self.load_socket = load_socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sent = 0
        self.lost = 0

    def _send(self, path: str, msg: dict[str, object]) -> None:
        try:
            self.sock.sendto(json.dumps(msg, separators=(",", ":")).encode(), path)
            self.sent += 1
        except OSError:  # ENOENT, ECONNREFUSED, EAGAIN: the reader is not there or full
            self.lost += 1

    def result(self, sid: int, msg: str, flow: Flow, verdict: str,
               action: dict[str, str] | None = None,
               app: dict[str, str] | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "instance": self.instance, "type": self.type, "sid": sid, "msg": msg,
            "flow": flow.as_dict(), "verdict": verdict, "action": action, "time": time.time(),
        }
        if app:
            out["app"] = app
        for p in self.report_sockets:
            self._send(p, out)
        return out

    def load(self, load: dict[str, object]) -> None:
        if self.load_socket:
            self._send(self.load_socket, {"instance": self.instance, "type": self.type,
                                          "kind": "load", **load})


@dataclass
class LoadMeter:
    """pps, bytes/s and CPU % of this process between two samples."""

    last_t: float = field(default_factory=time.monotonic)
    last_pkts: int = 0
    last_bytes: int = 0
    last_cpu: float = field(default_factory=lambda: sum(os.times()[:2]))

    def sample(self, pkts: int, nbytes: int) -> dict[str, float | int]:
        now = time.monotonic()
        cpu = sum(os.times()[:2])
        dt = max(now - self.last_t, 1e-6)
        if pkts < self.last_pkts or nbytes < self.last_bytes:  # counters were reset
            self.last_pkts, self.last_bytes = 0, 0
        out = {
            "pps": int((pkts - self.last_pkts) / dt),
            "bps": int((nbytes - self.last_bytes) / dt),
            "cpu": round(100.0 * (cpu - self.last_cpu) / dt, 2),
        }
        self.last_t, self.last_pkts, self.last_bytes, self.last_cpu = now, pkts, nbytes, cpu
        return out


def nfqueue_depth(queue: int) -> int:
    """Packets waiting in NFQUEUE `queue` of this namespace (/proc/net/netfilter)."""
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as f:
            for line in f:
                parts = line.split()
                if parts and int(parts[0]) == queue:
                    return int(parts[2])
    except (OSError, ValueError, IndexError):
        pass
    return 0
