"""The process of one security function instance, started by the DMS inside the instance's
network namespace:

    python -m nsf_agent.functions --instance NAME --type TYPE --rules RULES.json
        [--report-socket PATH ...] [--load-socket PATH] [--control-socket PATH]

It installs its nftables tables (and, for ids/ips/dpi, the NFQUEUE hook), prints READY on
stdout once packets flow through it, then serves one select loop: packets from NFQUEUE
(signature engine: verdict per packet), drop copies from NFLOG (nftables functions: what
they dropped, reported with the flow), control requests (load now, replace rules) on a unix
stream socket, and a load report every --load-interval seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nsf_agent.functions import nftables, packet
from nsf_agent.functions.nflog import NflogListener
from nsf_agent.functions.report import LoadMeter, Reporter, nfqueue_depth
from nsf_agent.functions.signatures import SignatureEngine
from nsf_agent.functions.spec import NFT_TYPES, SIGNATURE_TYPES, Spec, SpecError, check

log = logging.getLogger("nsf_agent.functions")

_FW_VERDICT = {"accept": "pass", "drop": "drop", "reject": "drop"}


class Function:
    def __init__(self, instance: str, spec: Spec, reporter: Reporter,
                 control_path: str | None, load_interval: float,
                 queue_length: int = 16384) -> None:
        self.instance = instance
        self.queue_length = queue_length
        self.spec = spec
        self.reporter = reporter
        self.control_path = control_path
        self.load_interval = load_interval
        self.engine: SignatureEngine | None = None
        self.nfq: Any = None
        self.nflog: NflogListener | None = None
        self.ctl: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.meter = LoadMeter()
        self.user_pkts = self.user_bytes = self.user_drops = 0
        self.results = 0
        self.base_drops = 0  # nft drop counts of rule tables replaced since the start
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)

    # -- set-up ------------------------------------------------------------------------------

    def start(self) -> None:
        check(self.spec)  # the engine compiles in _install
        nftables.run_nft(f"table inet {nftables.ACCT}\ndelete table inet {nftables.ACCT}\n"
                         + nftables.acct_table())
        self._install(self.spec)
        if self.spec.type in SIGNATURE_TYPES:
            from netfilterqueue import NetfilterQueue

            self.nfq = NetfilterQueue()
            self.nfq.bind(nftables.QUEUE_NUM, self._on_packet, max_len=self.queue_length,
                          sock_len=32 << 20)
            if self.spec.type != "ips":  # passive: a full queue lets packets through
                _queue_fail_open(self.nfq.get_fd(), nftables.QUEUE_NUM)
            # ids/dpi are passive: if this process is gone, traffic passes (fail open);
            # an ips drops what nothing inspected (fail closed)
            nftables.queue_rules(bypass=self.spec.type != "ips")
        else:
            self.nflog = NflogListener(nftables.NFLOG_GROUP)
        if self.control_path:
            with_unlink(self.control_path)
            self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.ctl.bind(self.control_path)
            os.chmod(self.control_path, 0o600)
            self.ctl.listen(8)
            self.ctl.setblocking(False)

    def _install(self, spec: Spec) -> None:
        """Rules in force, all or nothing: the signature set compiles before anything
        changes, the nft table is replaced in one transaction."""
        engine = SignatureEngine.from_text(spec.signatures, spec.type) \
            if spec.type in SIGNATURE_TYPES else None
        if spec.type == "anti-spoofing":
            _bogon_routes(spec.anti_spoofing.bogon_prefix)
        before = self._nft_drops() if self.engine is not None or self.nflog else 0
        nftables.apply(spec)
        self.base_drops += before
        self.engine = engine
        self.spec = spec

    # -- packets -----------------------------------------------------------------------------

    def _on_packet(self, nfpkt: Any) -> None:
        data = nfpkt.get_payload()
        self.user_pkts += 1
        self.user_bytes += len(data)
        pkt = packet.parse(data)
        eng = self.engine
        if pkt is None or eng is None:
            nfpkt.accept()
            return
        v = eng.inspect(pkt)
        app = {"protocol": v.app.protocol, "name": v.app.name} if v.app else None
        for m in v.matches:
            if not m.reported:
                continue
            r = m.rule
            action = {"reclassify": r.reclassify} if r.reclassify else (
                {"next-function": r.next_function} if r.next_function else None)
            verdict = "drop" if v.drop and r.action == "drop" else "alert"
            self.reporter.result(r.sid, r.msg, pkt.flow, verdict, action, app)
            self.results += 1
        if v.new_app and v.app is not None and self.spec.type == "dpi" and v.app.name:
            self.reporter.result(0, f"{v.app.protocol} {v.app.name}", pkt.flow,
                                 "drop" if v.drop else "pass", None, app)
            self.results += 1
        if v.drop:
            self.user_drops += 1
            nfpkt.drop()
        else:
            nfpkt.accept()

    def _on_nflog(self) -> None:
        assert self.nflog is not None
        for prefix, data in self.nflog.read():
            pkt = packet.parse(data)
            if pkt is None:
                continue
            kind, _, ident = prefix.partition(" ")
            sid = int(ident) if ident.isdigit() else 0
            action: dict[str, str] | None = None
            if kind == "fw":
                rule = next((r for r in self.spec.firewall.rules if r.seq == sid), None)
                msg = (rule.name or f"rule {sid}") if rule else "default action"
            elif kind == "spoof":
                msg = "martian or bogon source" if sid == nftables.SPOOF_MARTIAN \
                    else "source not allowed"
            else:
                msg = "SYN rate per source exceeded" if sid == nftables.DDOS_SYN \
                    else "packet rate per source exceeded"
                if self.spec.ddos.reclassify:
                    action = {"reclassify": self.spec.ddos.reclassify}
            self.reporter.result(sid, msg, pkt.flow, "drop", action)
            self.results += 1

    # -- load and control --------------------------------------------------------------------

    def _nft_drops(self) -> int:
        try:
            return nftables.counters().get("dropped", (0, 0))[0]
        except nftables.NftError:
            return 0

    def load(self) -> dict[str, Any]:
        c = nftables.counters()
        pkts, nbytes = c.get("total", (0, 0))
        rates = self.meter.sample(pkts, nbytes)
        counters = {k: list(v) for k, v in c.items() if k != "total"}
        if self.engine is not None:
            counters.update({f"sid {s}": [n, 0] for s, n in self.engine.sid_hits.items()})
        return {
            **rates, "queue_depth": nfqueue_depth(nftables.QUEUE_NUM) if self.nfq else 0,
            "packets": pkts, "bytes": nbytes,
            "dropped": self.base_drops + c.get("dropped", (0, 0))[0] + self.user_drops,
            "alerts": self.results, "counters": counters,
            "inspected": self.user_pkts, "cpu_seconds": round(sum(os.times()[:2]), 3),
        }

    def _control(self, conn: socket.socket) -> bool:
        """Serve one request line; False when the peer closed."""
        try:
            data = conn.recv(1 << 20)
        except OSError:
            return False
        if not data:
            return False
        try:
            req = json.loads(data.decode())
            op = req.get("op")
            if op == "load":
                reply: dict[str, Any] = {"ok": True, "load": self.load()}
            elif op == "rules":
                spec = Spec.from_json(req["spec"])
                if spec.type != self.spec.type:
                    raise SpecError(f"an instance of type {self.spec.type} cannot take "
                                    f"rules of type {spec.type}")
                check(spec)
                self._install(spec)
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, KeyError, TypeError, SpecError, nftables.NftError) as exc:
            reply = {"ok": False, "error": str(exc)}
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            return False
        return True

    def serve(self) -> None:
        next_load = time.monotonic() + self.load_interval
        nfq_fd = self.nfq.get_fd() if self.nfq is not None else None
        while not self.stopping:
            fds: list[Any] = [self._wake_r, *self.conns]
            if nfq_fd is not None:
                fds.append(nfq_fd)
            if self.nflog is not None:
                fds.append(self.nflog)
            if self.ctl is not None:
                fds.append(self.ctl)
            timeout = max(0.0, next_load - time.monotonic())
            try:
                ready, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                continue
            for r in ready:
                if r == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
                elif r == nfq_fd:
                    self.nfq.run(block=False)
                elif r is self.nflog:
                    self._on_nflog()
                elif r is self.ctl:
                    try:
                        conn, _ = self.ctl.accept()
                        conn.setblocking(True)
                        conn.settimeout(2.0)
                        self.conns.append(conn)
                    except OSError:
                        pass
                elif not self._control(r):
                    r.close()
                    self.conns.remove(r)
            now = time.monotonic()
            if now >= next_load:
                next_load = now + self.load_interval
                if _links_gone():
                    log.warning("instance %s: sf-in and sf-out are gone (the instance was torn "
                                "down around this process): exiting", self.instance)
                    self.stopping = True
                    break
                if self.engine is not None:
                    self.engine.expire(now)
                try:
                    self.reporter.load(self.load())
                except nftables.NftError as exc:
                    log.warning("load: %s", exc)

    def close(self) -> None:
        if self.nfq is not None:
            self.nfq.unbind()
        if self.nflog is not None:
            self.nflog.close()
        if self.ctl is not None:
            self.ctl.close()
            if self.control_path:
                with_unlink(self.control_path)


def _queue_fail_open(fd: int, queue: int) -> None:
    """Set NFQA_CFG_F_FAIL_OPEN on the queue (netfilterqueue has no call for it): one
    NFQNL_MSG_CONFIG message on the queue's own netlink socket, no ACK asked."""
    import struct

    def attr(kind: int, value: int) -> bytes:
        return struct.pack("=HH", 8, kind) + struct.pack("!I", value)

    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attr(4, 1) + \
        attr(5, 1)  # NFQA_CFG_MASK, NFQA_CFG_FLAGS = FAIL_OPEN
    os.write(fd, struct.pack("=IHHII", 16 + len(body), (3 << 8) | 2, 1, 0, 0) + body)


def _links_gone() -> bool:
    """Both instance interfaces are gone from this namespace (their host-side peers were
    deleted, or the host namespace with them): nothing can reach this process any more."""
    return not any(os.path.exists(f"/sys/class/net/{n}") for n in ("sf-in", "sf-out"))


def with_unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _bogon_routes(prefixes: list[str]) -> None:
    """Blackhole routes for the bogon prefixes (the FIB check drops their sources)."""
    cmds = ["route flush type blackhole", "-6 route flush type blackhole"]
    cmds += [f"{'-6 ' if ':' in p else ''}route replace blackhole {p}" for p in prefixes]
    for c in cmds:
        r = subprocess.run(["ip", *c.split()], capture_output=True, text=True, check=False)
        if r.returncode != 0 and "flush" not in c:
            raise SpecError(f"cannot install bogon route ({c}): {r.stderr.strip()}",
                            "anti-spoofing/bogon-prefix")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nsf_agent.functions",
                                description="Run one security function instance (started "
                                "by the DMS inside the instance's network namespace).")
    p.add_argument("--instance", required=True)
    p.add_argument("--type", required=True, choices=(*NFT_TYPES, *SIGNATURE_TYPES))
    p.add_argument("--rules", type=Path, required=True, help="rules as JSON (the DMS's Spec)")
    p.add_argument("--report-socket", action="append", default=[],
                   help="unix datagram socket for inspection results (repeatable)")
    p.add_argument("--load-socket", help="unix datagram socket for load reports")
    p.add_argument("--control-socket", help="unix stream socket to serve control requests")
    p.add_argument("--load-interval", type=float, default=5.0)
    p.add_argument("--queue-length", type=int, default=16384,
                   help="NFQUEUE length (ids/ips/dpi); an ids/dpi passes what overflows it")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        spec = Spec.from_json(json.loads(args.rules.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"cannot read rules {args.rules}: {exc}", file=sys.stderr)
        return 2
    if spec.type != args.type:
        print(f"rules are for type {spec.type}, not {args.type}", file=sys.stderr)
        return 2
    fn = Function(args.instance, spec,
                  Reporter(args.instance, args.type, args.report_socket, args.load_socket),
                  args.control_socket, args.load_interval, args.queue_length)

    def stop(*_: object) -> None:
        fn.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        fn.start()
    except (SpecError, nftables.NftError, OSError) as exc:
        print(f"instance {args.instance}: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    log.info("instance %s (%s) ready", args.instance, args.type)
    try:
        fn.serve()
    finally:
        fn.close()
    return 0
