"""The userspace ESP data path: a process of its own, moving packets between a TUN device
and raw IP sockets, fed with SPD/SAD over a Unix socket.

Why a process: packet work is CPU-bound Python; running it in the agent would stall the
NETCONF asyncio loop (and the GIL would make threads no better). The agent starts it inside
the NSF's network namespace and talks to it over a Unix stream socket carrying length-
prefixed JSON (see `client.py`). Everything runs in one thread: control messages are
handled between packet batches, so every SPD/SAD change is atomic with respect to traffic.

Routing: the data path owns the TUN device and installs the routes itself, in a table of its
own (default 4303) selected by `ip rule not fwmark <mark> lookup <table>`. Its own sockets
carry `<mark>`, so ESP it sends, and bypass packets it re-injects, never loop back into the
TUN. Protect and discard entries route their remote prefix into the TUN; port-agnostic
bypass entries get `throw` routes so the kernel forwards them without visiting us.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import gso, mmsg
from .esp import (
    NAT_KEEPALIVE,
    EspError,
    SaState,
    SequenceOverflow,
    decapsulate,
    encapsulate,
    open_gcm_tunnel,
    parse_udp_encap,
    seal_gcm_tunnel,
)
from .model import Action, Direction, Mode, ModelError, SaConfig, SpdEntry
from .seqstore import SeqStore, fingerprint
from .spd import Spd, flow_of
from .tun import TUNSETOFFLOAD, open_tun

log = logging.getLogger("nsf_agent.userspace.datapath")

SO_MARK = 36
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_PKTINFO = 8
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IPPROTO_ESP = 50
# Largest inner packet sent whole as one (IP-fragmented) ESP packet: the outer packet must stay
# within 65535 bytes with outer IPv4 (20), UDP (8), ESP header (8), IV (<= 16), padding
# (<= 15), trailer (2) and ICV (<= 32).
BIG_LIMIT = 65535 - 20 - 8 - 8 - 16 - 15 - 2 - 32
_LEN = struct.Struct("!I")
MAX_MSG = 16 * 1024 * 1024

GLOBAL_COUNTERS = (
    "tun_rx", "tun_tx", "tun_tx_errors", "esp_tx", "esp_rx", "esp_tx_errors", "unknown_spi",
    "malformed", "integrity_failed", "replay", "decrypt_failed", "policy_violation",
    "no_policy", "discarded", "bypassed", "no_sa", "acquires", "udp_non_esp", "seq_overflow",
    "dummy", "nat_keepalives", "wrong_next_header", "seq_store_failed", "sending_suspended",
    "out_of_window", "hard_expired",
)


@dataclass(slots=True)
class Options:
    """How the data path sets itself up in its namespace."""

    control: str
    tun: str = "i2u0"
    mtu: int = 1400
    table: int = 4303
    rule_priority: int = 4303
    mark: int = 0x4303
    manage_routes: bool = True
    acquire_interval: float = 1.0
    counters_interval: float = 0.0
    batch: int = 64
    tick: float = 0.25
    offload: bool = True
    big_esp: bool = True
    # RFC 3948 2.3 NAT-keepalive period (s) for outbound ESP-in-UDP SAs; 0 = never
    nat_keepalive: float = 20.0
    # file of sequence-number high-water marks (seqstore.py); None: not crash-safe (tests)
    seq_store: str | None = None
    # fused AES-GCM send and sendmmsg batching (off: the generic path, for comparison)
    fast_path: bool = True


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)


class _Sa:
    """An installed SA: ESP state plus the pre-computed bits the fast path needs."""

    __slots__ = ("cmsg", "dst_addr", "fast", "fp", "hdr_tail", "limit_bytes", "limit_packets",
                 "sockaddr", "state", "suspended", "udp", "udp_dst", "v4")

    def __init__(self, cfg: SaConfig) -> None:
        self.state = SaState(cfg)
        self.fp = fingerprint(cfg)
        self.suspended = False  # outbound: not used for sending (its counter is unknown)
        # the fused AES-GCM tunnel-mode send (esp.seal_gcm_tunnel), when it applies
        self.fast = (self.state.gcm_fast() if cfg.mode is Mode.TUNNEL and cfg.encap is None
                     else None)
        # sockaddr_in of the peer for sendmmsg (IPv4)
        self.sockaddr = (ctypes.create_string_buffer(
            struct.pack("=HH4s8x", socket.AF_INET, 0, cfg.dst.packed), 16)
            if cfg.dst.version == 4 else None)
        self.dst_addr = (str(cfg.dst), 0)
        self.udp = cfg.encap
        self.v4 = cfg.src.version == 4
        self.limit_bytes = 0
        self.limit_packets = 0
        proto = 17 if cfg.encap is not None else IPPROTO_ESP
        # big ESP packets go through sockets that build the outer header (and fragment):
        # IP_PKTINFO pins the SA's source address
        self.cmsg: list[tuple[int, int, bytes]] = []
        self.udp_dst = (str(cfg.dst), cfg.encap.dport if cfg.encap is not None else 0)
        if cfg.src.version == 4:
            self.cmsg = [(socket.IPPROTO_IP, IP_PKTINFO,
                          struct.pack("@i4s4s", 0, cfg.src.packed, bytes(4)))]
            # id, frag, ttl, proto, checksum 0 (the kernel fills id and checksum), addresses
            self.hdr_tail = struct.pack("!HHBBH4s4s", 0, 0, 64, proto, 0, cfg.src.packed,
                                        cfg.dst.packed)
        else:
            self.hdr_tail = bytes((proto, 64)) + cfg.src.packed + cfg.dst.packed
        self.set_limits()

    def set_limits(self) -> None:
        """Next byte/packet count at which lifetimes need a look (0 = never)."""
        cfg = self.state.cfg
        soft_pending = not self.state.soft_fired
        bl = [x for x in (cfg.soft.bytes if soft_pending else 0, cfg.hard.bytes) if x]
        pl = [x for x in (cfg.soft.packets if soft_pending else 0, cfg.hard.packets) if x]
        self.limit_bytes = min(bl) if bl else 1 << 80
        self.limit_packets = min(pl) if pl else 1 << 80

    def wire(self, esp: bytes) -> bytes:
        """Outer IP (and UDP) header + ESP, ready for the header-including raw socket."""
        if self.udp is not None:
            esp = struct.pack("!HHHH", self.udp.sport, self.udp.dport, 8 + len(esp), 0) + esp
        if self.v4:
            return b"\x45\x00" + (20 + len(esp)).to_bytes(2, "big") + self.hdr_tail + esp
        return (b"\x60\x00\x00\x00" + len(esp).to_bytes(2, "big") + self.hdr_tail + esp)


class Datapath:
    """State and event loop of one data path process."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.spd = Spd()
        self.by_name: dict[str, _Sa] = {}
        self.inbound: dict[int, _Sa] = {}
        self.outbound: dict[int, list[_Sa]] = {}  # reqid -> SAs, newest last
        self.stats: dict[str, int] = dict.fromkeys(GLOBAL_COUNTERS, 0)
        self._acquired: dict[tuple[str, int], float] = {}
        self._conns: dict[int, _Conn] = {}
        self._udp: dict[int, socket.socket] = {}
        # (prefix routed into the TUN -> its preferred source or None, throw prefixes)
        self._routes: tuple[dict[str, str | None], set[str]] = ({}, set())
        self._running = True
        self._next_counters = 0.0
        self._ipr: Any = None
        self._rule_installed: list[int] = []
        self._gro = gso.Coalescer() if opts.offload else None
        self._to_tun: list[bytes] = []
        # whole super-packets as single ESP packets (outer IPv4, fragmented by the kernel)
        self._big = opts.big_esp and opts.offload
        # (src, dst, sport, dport) of outbound ESP-in-UDP SAs -> next NAT-keepalive due
        self._keepalive_due: dict[tuple[str, str, int, int], float] = {}
        self.seqs = SeqStore(opts.seq_store) if opts.seq_store else None
        # outbound IPv4 ESP of one TUN drain, sent with one sendmmsg (packets, sockaddrs)
        self._txq: list[bytes] = []
        self._txa: list[Any] = []
        self.tx4: mmsg.SendBatch | None = None
        # the sender thread: sendmmsg runs (GIL released, in ctypes) while the loop goes on
        # encrypting; FIFO, so ESP leaves in sequence-number order. Its counters are its own.
        self._txqueue: queue.Queue[tuple[list[bytes], list[Any]] | None] = queue.Queue(64)
        self._txthread: threading.Thread | None = None
        self._tx_sent = 0
        self._tx_errors = 0
        # SAs installed again whose state was not carried over (name -> reason), reported by
        # the replace that installed them
        self._restored: dict[str, str] = {}

    # -- setup ----------------------------------------------------------------------------

    def open(self) -> None:
        o = self.opts
        self.tun_fd = open_tun(o.tun, vnet_hdr=o.offload)
        if o.offload:
            # TSO/checksum offload: the kernel hands us TCP super-packets (see gso.py)
            fcntl.ioctl(self.tun_fd, TUNSETOFFLOAD,
                        gso.TUN_F_CSUM | gso.TUN_F_TSO4 | gso.TUN_F_TSO6)
        self._setup_link()
        self.esp4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_ESP)
        self.esp4.setblocking(False)
        _bufsize(self.esp4, socket.SO_RCVBUF, SO_RCVBUFFORCE, 32 << 20)
        # big ESP leaves through esp4 itself: the kernel builds the outer header and, with
        # PMTU discovery off (DF clear), fragments it; the mark keeps it out of our table
        self.esp4.setsockopt(socket.SOL_SOCKET, SO_MARK, o.mark)
        self.esp4.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        _bufsize(self.esp4, socket.SO_SNDBUF, SO_SNDBUFFORCE, 8 << 20)
        self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw4.setsockopt(socket.SOL_SOCKET, SO_MARK, o.mark)
        _bufsize(self.raw4, socket.SO_SNDBUF, SO_SNDBUFFORCE, 8 << 20)
        self.esp6: socket.socket | None = None
        self.raw6: socket.socket | None = None
        try:
            self.esp6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, IPPROTO_ESP)
            self.esp6.setblocking(False)
            self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw6.setsockopt(socket.SOL_SOCKET, SO_MARK, o.mark)
        except OSError as e:
            log.info("IPv6 raw sockets unavailable (%s); IPv4 only", e)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(o.control)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(o.control)
        os.chmod(o.control, 0o600)  # the channel carries keys
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.tun_fd, select.EPOLLIN)
        self.ep.register(self.esp4.fileno(), select.EPOLLIN)
        if self.esp6 is not None:
            self.ep.register(self.esp6.fileno(), select.EPOLLIN)
        self.ep.register(self.listener.fileno(), select.EPOLLIN)
        self.mm4 = mmsg.RecvBatch(self.esp4.fileno(), self.opts.batch, 65536) \
            if mmsg.available() else None
        self.tx4 = mmsg.SendBatch(self.raw4.fileno(), self.opts.batch) \
            if mmsg.available() and self.opts.fast_path else None
        if self.tx4 is not None:
            self._txthread = threading.Thread(target=self._tx_loop, name="esp-tx", daemon=True)
            self._txthread.start()
        log.info("data path up: tun=%s mtu=%d table=%d control=%s offload=%s big_esp=%s",
                 o.tun, o.mtu, o.table, o.control, o.offload, self._big)

    def _setup_link(self) -> None:
        from pyroute2 import IPRoute

        o = self.opts
        self._ipr = IPRoute()
        idx = self._ipr.link_lookup(ifname=o.tun)[0]
        self.tun_index = idx
        self._ipr.link("set", index=idx, mtu=o.mtu, state="up")
        # decrypted packets arrive with remote sources
        with contextlib.suppress(OSError), \
                open(f"/proc/sys/net/ipv4/conf/{o.tun}/rp_filter", "w") as f:
            f.write("0")
        if o.manage_routes:
            for fam in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(Exception):
                    self._ipr.rule("del", family=fam, table=o.table, priority=o.rule_priority)
                try:
                    # FIB_RULE_INVERT: everything *not* carrying our mark consults our table
                    self._ipr.rule("add", family=fam, table=o.table, priority=o.rule_priority,
                                   fwmark=o.mark, fwmask=0xFFFFFFFF, flags=0x2)
                    self._rule_installed.append(fam)
                except Exception as e:
                    log.warning("cannot add policy rule for family %d: %s", fam, e)

    def close(self) -> None:
        self._stop_tx()
        o = self.opts
        if self._ipr is not None:
            for fam in self._rule_installed:
                with contextlib.suppress(Exception):
                    self._ipr.rule("del", family=fam, table=o.table, priority=o.rule_priority,
                                   fwmark=o.mark, fwmask=0xFFFFFFFF, flags=0x2)
            self._ipr.close()
        for c in list(self._conns.values()):
            c.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(o.control)
        os.close(self.tun_fd)
        if self.seqs is not None:
            self.seqs.close()

    def _sync_routes(self) -> None:
        """Bring the routing table in line with the SPD (add first, then remove). Routes of
        host-to-host entries carry their local address as preferred source (see
        Spd.route_sources): the TUN has no address of its own."""
        if not self.opts.manage_routes or self._ipr is None:
            return
        into, throw = self.spd.routed_prefixes()
        srcs = self.spd.route_sources()
        want = {p: srcs.get(p) for p in into}
        old_into, old_throw = self._routes
        t = self.opts.table
        for p in sorted(p for p in want if old_into.get(p, "-") != want[p]):
            fam = socket.AF_INET if ipaddress.ip_network(p).version == 4 else socket.AF_INET6
            kw: dict[str, Any] = {"prefsrc": want[p]} if want[p] else {}
            try:
                self._ipr.route("replace", dst=p, oif=self.tun_index, table=t, family=fam, **kw)
            except Exception as e:
                if kw:  # (not an address of this NSF: the kernel picks one)
                    log.warning("route %s into %s with source %s: %s; without source", p,
                                self.opts.tun, want[p], e)
                    want[p] = None
                    with contextlib.suppress(Exception):
                        self._ipr.route("replace", dst=p, oif=self.tun_index, table=t,
                                        family=fam)
                    continue
                log.error("route %s into %s: %s", p, self.opts.tun, e)
        for p in sorted(throw - old_throw):
            fam = socket.AF_INET if ipaddress.ip_network(p).version == 4 else socket.AF_INET6
            try:
                self._ipr.route("replace", dst=p, type="throw", table=t, family=fam)
            except Exception as e:
                log.error("throw route %s: %s", p, e)
        for p in (set(old_into) - set(want)) | (old_throw - throw):
            fam = socket.AF_INET if ipaddress.ip_network(p).version == 4 else socket.AF_INET6
            with contextlib.suppress(Exception):
                self._ipr.route("del", dst=p, table=t, family=fam)
        self._routes = (want, throw)

    # -- SAD ------------------------------------------------------------------------------

    def _install_sa(self, cfg: SaConfig, suspend: bool = False) -> None:
        old = self.by_name.get(cfg.name)
        if old is not None and old.state.cfg == cfg:
            if suspend and cfg.direction is Direction.OUTBOUND:
                old.suspended = True
            return  # unchanged: keep sequence numbers, replay window, counters
        sa = _Sa(cfg)
        if old is not None and old.fp == sa.fp:
            # same SPI and keys, other lifetimes or options: the same SA carries on
            st, ost = sa.state, old.state
            st.seq, st.replay, st.counters = ost.seq, ost.replay, ost.counters
            st.added, st.last_used, st.soft_fired = ost.added, ost.last_used, ost.soft_fired
            st.seq_limit, st.reserve = ost.seq_limit, ost.reserve
            sa.suspended = old.suspended
        elif self.seqs is not None:
            if self._hard_expired(sa):
                if old is not None:
                    self._unlink(old)
                return
            self._number(sa)
        if suspend and cfg.direction is Direction.OUTBOUND:
            sa.suspended = True
        sa.set_limits()
        # add the new SA before retiring the old one: no gap for either direction
        if cfg.direction is Direction.INBOUND:
            self.inbound[cfg.spi] = sa
        else:
            self.outbound.setdefault(cfg.reqid, []).append(sa)
        self.by_name[cfg.name] = sa
        if old is not None:
            self._unlink(old, keep=sa)
        self._udp_ports()
        if cfg.direction is Direction.OUTBOUND and sa.udp is not None:
            self._keepalives(time.monotonic())

    def _hard_expired(self, sa: _Sa) -> bool:
        """An SA installed again (a restart) counts its time lifetimes from when it was first
        installed; one whose hard time lifetime is already over is not installed (reported
        hard-expired, and a hard expire event asks the agent's controller for a new one)."""
        assert self.seqs is not None
        cfg = sa.state.cfg
        first = self.seqs.installed_at(cfg)
        if first is None:
            return False
        age = max(0.0, time.time() - first)
        if cfg.hard.time and age >= cfg.hard.time:
            log.warning("SA %s: its hard lifetime (%d s) ended %d s ago: not installed",
                        cfg.name, cfg.hard.time, int(age - cfg.hard.time))
            self._restored[cfg.name] = "hard-expired"
            self.stats["hard_expired"] += 1
            self.emit("expire", hard=True, trigger="time", **self._sa_event_fields(sa))
            return True
        sa.state.added = time.monotonic() - age  # (soft/hard time go on from the first add)
        return False

    def _number(self, sa: _Sa) -> None:
        """Sequence numbering of an SA (re)installed without a predecessor in this process:
        resume above its persisted mark if it was ever installed (reported to the agent)."""
        assert self.seqs is not None
        st, cfg, store = sa.state, sa.state.cfg, self.seqs
        before, st.seq_limit = store.install(cfg)
        fp = sa.fp
        st.reserve = lambda seq: store.reserve(cfg, seq, fp)
        if before is None:
            return
        if cfg.direction is Direction.OUTBOUND:
            st.seq = before
            self._restored[cfg.name] = "sequence-resumed"
            log.warning("SA %s was installed before: resuming above sequence number %d",
                        cfg.name, before)
        else:
            self._restored[cfg.name] = "replay-state-lost"
            log.warning("SA %s was installed before: its anti-replay window starts again",
                        cfg.name)

    def _unlink(self, sa: _Sa, keep: _Sa | None = None) -> None:
        cfg = sa.state.cfg
        if self.seqs is not None and (keep is None or keep.fp != sa.fp):
            self.seqs.retire(cfg)
        if cfg.direction is Direction.INBOUND:
            if self.inbound.get(cfg.spi) is sa:
                del self.inbound[cfg.spi]
        else:
            lst = self.outbound.get(cfg.reqid, [])
            if sa in lst:
                lst.remove(sa)
            if not lst:
                self.outbound.pop(cfg.reqid, None)
        if self.by_name.get(cfg.name) is sa and keep is None:
            del self.by_name[cfg.name]

    def remove_sa(self, name: str) -> bool:
        sa = self.by_name.get(name)
        if sa is None:
            return False
        self._unlink(sa)
        self._udp_ports()
        return True

    def _udp_ports(self) -> None:
        """Listen on the UDP ports inbound encapsulated SAs arrive on, and only those (with big
        ESP also the source ports of outbound ones: big packets leave through these sockets)."""
        want = {sa.state.cfg.encap.dport for sa in self.inbound.values()
                if sa.state.cfg.encap is not None}
        if self._big:
            want |= {sa.state.cfg.encap.sport for lst in self.outbound.values() for sa in lst
                     if sa.state.cfg.encap is not None and sa.v4}
        for port in set(self._udp) - want:
            s = self._udp.pop(port)
            self.ep.unregister(s.fileno())
            s.close()
        for port in want - set(self._udp):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as e:
                log.error("cannot listen on UDP %d for ESP-in-UDP: %s", port, e)
                s.close()
                continue
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.opts.mark)
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
            self._udp[port] = s
            self.ep.register(s.fileno(), select.EPOLLIN)

    def replace(self, sas: list[SaConfig], spd: list[SpdEntry],
                suspend: frozenset[str] = frozenset()) -> dict[str, str]:
        """Full replacement; unchanged SAs (same name and config) keep their state. Outbound
        SAs named in `suspend` are not used for sending. Returns the SAs installed again
        without their state (name -> reason, see i2nsf-sadb restart-reason)."""
        names = {c.name for c in sas}
        self._restored = {}
        for c in sas:
            self._install_sa(c, c.name in suspend)
        for name in [n for n in self.by_name if n not in names]:
            self.remove_sa(name)
        if self.seqs is not None:
            self.seqs.sync()  # before any packet: the marks of new SAs are on disk
        self.spd.replace(spd)
        self._sync_routes()
        return self._restored

    # -- events ---------------------------------------------------------------------------

    def emit(self, event: str, **data: Any) -> None:
        msg = {"type": "event", "event": event, **data}
        log.debug("event %s", msg)
        for c in list(self._conns.values()):
            self._send(c, msg)

    def _sa_event_fields(self, sa: _Sa) -> dict[str, Any]:
        cfg = sa.state.cfg
        return {"sa": cfg.name, "spi": cfg.spi, "direction": cfg.direction.value,
                "reqid": cfg.reqid}

    def _check_lifetime(self, sa: _Sa, now: float | None = None) -> None:
        st = sa.state
        cfg = st.cfg
        c = st.counters
        if now is None:
            now = time.monotonic()
        for hard, lt in ((True, cfg.hard), (False, cfg.soft)):
            if not hard and st.soft_fired:
                continue
            trigger = None
            if lt.bytes and c.bytes >= lt.bytes:
                trigger = "bytes"
            elif lt.packets and c.packets >= lt.packets:
                trigger = "packets"
            elif lt.time and now - st.added >= lt.time:
                trigger = "time"
            elif lt.idle and now - st.last_used >= lt.idle:
                trigger = "idle"
            if trigger is None:
                continue
            if hard:
                log.info("SA %s hard lifetime (%s): removed", cfg.name, trigger)
                self._unlink(sa)
                self._udp_ports()
                self.emit("expire", hard=True, trigger=trigger, **self._sa_event_fields(sa))
                return
            st.soft_fired = True
            log.info("SA %s soft lifetime (%s)", cfg.name, trigger)
            self.emit("expire", hard=False, trigger=trigger, **self._sa_event_fields(sa))
        sa.set_limits()

    def _keepalives(self, now: float) -> None:
        """RFC 3948 2.3: a one-byte 0xFF datagram on each outbound ESP-in-UDP path, at once
        for a new path and then every `nat_keepalive` seconds. It opens (and keeps) the
        mapping of a NAT in front of this NSF, so that the peer can reach it before this
        NSF sent any ESP. (IPv4 only: NAT-T is an IPv4 matter, and IPv6 UDP needs a checksum
        the raw path does not compute.)"""
        raw4: socket.socket | None = getattr(self, "raw4", None)  # None before open()
        if not self.opts.nat_keepalive or raw4 is None:
            return
        due = self._keepalive_due
        live: set[tuple[str, str, int, int]] = set()
        for lst in self.outbound.values():
            for sa in lst:
                if sa.udp is None or not sa.v4:
                    continue
                cfg = sa.state.cfg
                key = (str(cfg.src), str(cfg.dst), sa.udp.sport, sa.udp.dport)
                if key in live:
                    continue
                live.add(key)
                if due.get(key, 0.0) > now:
                    continue
                due[key] = now + self.opts.nat_keepalive
                try:
                    raw4.sendto(sa.wire(NAT_KEEPALIVE), sa.dst_addr)
                    self.stats["nat_keepalives"] += 1
                except OSError as e:
                    self.stats["esp_tx_errors"] += 1
                    log.debug("NAT-keepalive to %s:%d failed: %s", key[1], key[3], e)
        for key in set(due) - live:
            del due[key]

    def _tick(self) -> None:
        now = time.monotonic()
        self._keepalives(now)
        for sa in list(self.by_name.values()):
            cfg = sa.state.cfg
            if cfg.soft.time or cfg.hard.time or cfg.soft.idle or cfg.hard.idle:
                self._check_lifetime(sa, now)
        if self.opts.counters_interval and now >= self._next_counters:
            self._next_counters = now + self.opts.counters_interval
            self.emit("counters", **self.snapshot())
        cutoff = now - self.opts.acquire_interval
        self._acquired = {k: t for k, t in self._acquired.items() if t > cutoff}

    def _acquire(self, entry: SpdEntry, flow: tuple[int, ...]) -> None:
        """Tell the agent traffic wants an SA; at most once per entry per interval."""
        self.stats["no_sa"] += 1
        key = (entry.name, entry.reqid)
        now = time.monotonic()
        if now - self._acquired.get(key, -1e9) < self.opts.acquire_interval:
            return
        self._acquired[key] = now
        self.stats["acquires"] += 1
        v, src, dst, proto, sp, dp = flow
        mk = ipaddress.IPv4Address if v == 4 else ipaddress.IPv6Address
        self.emit("acquire", spd=entry.name, reqid=entry.reqid, src=str(mk(src)),
                  dst=str(mk(dst)), protocol=proto, sport=sp, dport=dp)

    def snapshot(self) -> dict[str, Any]:
        sas = []
        for sa in self.by_name.values():
            st = sa.state
            c = st.counters
            sas.append({**self._sa_event_fields(sa), "bytes": c.bytes, "packets": c.packets,
                        "replay": c.replay, "out_of_window": c.out_of_window,
                        "integrity_failed": c.integrity_failed,
                        "decrypt_failed": c.decrypt_failed, "malformed": c.malformed,
                        "wrong_next_header": c.wrong_next_header,
                        "policy_violation": c.policy_violation, "dummy": c.dummy,
                        "suspended": sa.suspended,
                        "seq": st.seq, "replay_top": st.replay.top,
                        "age": time.monotonic() - st.added})
        glob = dict(self.stats)
        glob["esp_tx"] += self._tx_sent
        glob["esp_tx_errors"] += self._tx_errors
        return {"global": glob, "sas": sas,
                "spd": sorted(self.spd.entries)}

    # -- fast path ------------------------------------------------------------------------

    def _flush_tx(self) -> None:
        """Hand the queued outbound IPv4 ESP packets to the sender thread (or send them here
        when there is none)."""
        if not self._txq:
            return
        batch = (self._txq, self._txa)
        self._txq, self._txa = [], []
        if self._txthread is not None:
            self._txqueue.put(batch)  # (blocks when the sender is 64 batches behind)
        else:
            self._send_batch(*batch)

    def _tx_loop(self) -> None:
        while True:
            item = self._txqueue.get()
            if item is None:
                return
            self._send_batch(*item)

    def _send_batch(self, q: list[bytes], a: list[Any]) -> None:
        """One sendmmsg per batch; a packet the kernel refuses is counted and skipped. (A
        one-packet batch whose address is a (socket, cmsg, destination) is a big ESP packet.)"""
        if len(a) == 1 and isinstance(a[0], tuple):
            sock, cmsg, dst = a[0]
            self._send_one(sock, q[0], cmsg, dst)
            return
        assert self.tx4 is not None
        while q:
            try:
                n = self.tx4.send(q, a)
            except OSError as e:
                self._tx_errors += 1
                log.debug("ESP send failed: %s", e)
                n = 1
            else:
                self._tx_sent += n
                if n == 0:
                    n = 1
                    self._tx_errors += 1
            del q[:n]
            del a[:n]

    def _stop_tx(self) -> None:
        if self._txthread is not None:
            self._txqueue.put(None)
            self._txthread.join(5)
            self._txthread = None

    def _drain_tun(self) -> None:
        """Outbound: packets the kernel routed into the TUN (super-packets cut to MSS)."""
        try:
            self._drain_tun_batch()
        finally:
            self._flush_tx()

    def _drain_tun_batch(self) -> None:
        fd = self.tun_fd
        offload = self.opts.offload
        big = self._big
        out = self._outbound
        for _ in range(self.opts.batch):
            try:
                frame = os.read(fd, 65536 + gso.VNET_LEN)
            except BlockingIOError:
                return
            if not offload:
                out(frame)
                continue
            if frame[1] == gso.GSO_NONE:  # one packet (the common case for UDP)
                pkt = frame[gso.VNET_LEN:]
                if frame[0] & gso.F_NEEDS_CSUM:
                    _, _, _, _, cstart, coff = gso.VNET_HDR.unpack_from(frame)
                    pkt = gso.complete_csum(pkt, cstart, coff)
                out(pkt)
                continue
            if big:
                try:
                    parts = gso.segment_big(frame, BIG_LIMIT)
                except (ValueError, IndexError):
                    self.stats["malformed"] += 1
                    continue
                for pkt, nseg, mss in parts:
                    out(pkt, nseg, mss)
                continue
            try:
                pkts = gso.segment(frame)
            except (ValueError, IndexError):
                self.stats["malformed"] += 1
                continue
            for pkt in pkts:
                out(pkt)

    def _outbound(self, pkt: bytes, nseg: int = 1, mss: int = 0) -> None:
        """One IP packet from the TUN; with big ESP possibly a whole TCP super-packet that
        stands for `nseg` segments of `mss` bytes."""
        stats = self.stats
        flow = flow_of(pkt)
        if flow is None:
            stats["tun_rx"] += 1
            stats["malformed"] += 1
            return
        entry = self.spd.outbound(flow)
        big = False
        sa = None
        if entry is not None and entry.action is Action.PROTECT:
            lst = self.outbound.get(entry.reqid)
            if lst:
                sa = lst[-1]
                big = nseg > 1 and sa.v4 and (sa.udp is None or sa.udp.sport in self._udp)
        if nseg > 1 and not big:
            # it cannot travel whole: cut it into MSS segments, each handled on its own
            for seg in gso.segment(gso.gso_header(pkt, mss) + pkt):
                self._outbound(seg)
            return
        stats["tun_rx"] += nseg
        if entry is None:
            stats["no_policy"] += 1
            return
        action = entry.action
        if action is Action.PROTECT:
            if sa is None:
                self._acquire(entry, flow)
                return
            if sa.suspended:
                stats["sending_suspended"] += 1
                return
            try:
                if sa.fast is not None and not big and self.opts.fast_path:
                    esp = seal_gcm_tunnel(sa.state, sa.fast, pkt, 4 if pkt[0] >> 4 == 4 else 41)
                else:
                    esp = encapsulate(sa.state, pkt, count=nseg)
                if big:
                    self._send_big(sa, esp)
                    return
                wire = sa.wire(esp)
            except SequenceOverflow:
                stats["seq_overflow"] += 1
                self._unlink(sa)
                self.emit("expire", hard=True, trigger="seq-overflow",
                          **self._sa_event_fields(sa))
                return
            except EspError as e:
                stats[e.counter if e.counter in stats else "malformed"] += 1
                return
            if sa.v4 and self.tx4 is not None:
                self._txq.append(wire)  # (sent by _flush_tx once the drain is done)
                self._txa.append(sa.sockaddr)
                if len(self._txq) >= self.opts.batch:
                    self._flush_tx()
            else:
                try:
                    if sa.v4 or self.raw6 is None:
                        self.raw4.sendto(wire, sa.dst_addr)
                    else:
                        self.raw6.sendto(wire, sa.dst_addr)
                    stats["esp_tx"] += 1
                except OSError as e:
                    stats["esp_tx_errors"] += 1
                    log.debug("ESP send failed: %s", e)
            c = sa.state.counters
            if c.bytes >= sa.limit_bytes or c.packets >= sa.limit_packets:
                self._check_lifetime(sa)
        elif action is Action.BYPASS:
            self._reinject(pkt, flow[0])
        else:
            stats["discarded"] += 1

    def _send_big(self, sa: _Sa, esp: bytes) -> None:
        """One ESP packet larger than the link MTU: the kernel adds the outer IPv4 (and UDP)
        header and fragments it (RFC 4303 3.3.4: the receiver reassembles before ESP).
        With the sender thread it goes through the same queue as the small ones, so that
        packets of an SA leave in sequence-number order (the peer's window is small)."""
        if sa.udp is None:
            sock, dst = self.esp4, sa.dst_addr
        else:
            sock, dst = self._udp[sa.udp.sport], sa.udp_dst
        if self._txthread is not None:
            self._flush_tx()
            self._txqueue.put(([esp], [(sock, sa.cmsg, dst)]))
        else:
            self._send_one(sock, esp, sa.cmsg, dst)
        c = sa.state.counters
        if c.bytes >= sa.limit_bytes or c.packets >= sa.limit_packets:
            self._check_lifetime(sa)

    def _send_one(self, sock: socket.socket, esp: bytes, cmsg: list[tuple[int, int, bytes]],
                  dst: tuple[str, int]) -> None:
        try:
            sock.sendmsg([esp], cmsg, 0, dst)
            self._tx_sent += 1
        except OSError as e:
            self._tx_errors += 1
            log.debug("big ESP send failed: %s", e)

    def _reinject(self, pkt: bytes, version: int) -> None:
        """Bypass for a packet already in the TUN: resend it marked, so it skips our table."""
        sock = self.raw4 if version == 4 else self.raw6
        dst = pkt[16:20] if version == 4 else pkt[24:40]
        try:
            if sock is None:
                raise OSError(errno.EAFNOSUPPORT, "no IPv6 raw socket")
            fam = socket.AF_INET if version == 4 else socket.AF_INET6
            sock.sendto(pkt, (socket.inet_ntop(fam, dst), 0))
            self.stats["bypassed"] += 1
        except OSError as e:
            self.stats["tun_tx_errors"] += 1
            log.debug("bypass re-injection failed: %s", e)

    def _drain_esp4(self) -> None:
        """Inbound ESP over IPv4 (raw sockets deliver the IP header too)."""
        if self.mm4 is not None:
            pkts = self.mm4.recv()
        else:
            pkts = []
            for _ in range(self.opts.batch):
                try:
                    pkts.append(self.esp4.recv(65536))
                except BlockingIOError:
                    break
        for pkt in pkts:
            self.stats["esp_rx"] += 1
            if len(pkt) < 20:
                self.stats["malformed"] += 1
                continue
            ihl = (pkt[0] & 0x0F) << 2
            if pkt[6] & 0x3F or pkt[7]:  # fragments are reassembled by the kernel first
                self.stats["malformed"] += 1
                continue
            self._inbound(pkt[ihl:], pkt[12:16], pkt[16:20])
        self._write_tun()

    def _write_tun(self) -> None:
        """Write what a receive batch decrypted (coalesced into super-packets if offloading)."""
        frames = self._gro.take() if self._gro is not None else self._to_tun
        self._to_tun = []
        fd = self.tun_fd
        for f in frames:
            try:
                os.write(fd, f)
            except OSError as e:
                self.stats["tun_tx_errors"] += 1
                log.debug("TUN write failed: %s", e)

    def _drain_esp6(self) -> None:
        assert self.esp6 is not None
        for _ in range(self.opts.batch):
            try:
                data, addr = self.esp6.recvfrom(65536)
            except BlockingIOError:
                break
            self.stats["esp_rx"] += 1
            self._inbound(data, socket.inet_pton(socket.AF_INET6, addr[0].split("%")[0]),
                          None)
        self._write_tun()

    def _drain_udp(self, sock: socket.socket) -> None:
        for _ in range(self.opts.batch):
            try:
                data, addr = sock.recvfrom(65536)
            except BlockingIOError:
                break
            try:
                esp = parse_udp_encap(data)
            except EspError:
                self.stats["malformed"] += 1
                continue
            if esp is None:
                self.stats["udp_non_esp"] += 1
                continue
            self.stats["esp_rx"] += 1
            self._inbound(esp, socket.inet_aton(addr[0]), None)
        self._write_tun()

    def _inbound(self, esp: bytes, src: bytes, dst: bytes | None) -> None:
        stats = self.stats
        if len(esp) < 8:
            stats["malformed"] += 1
            return
        sa = self.inbound.get(int.from_bytes(esp[:4], "big"))
        if sa is None:
            stats["unknown_spi"] += 1
            return
        st = sa.state
        try:
            if sa.fast is not None and self.opts.fast_path:
                inner = open_gcm_tunnel(st, sa.fast, esp)
            elif st.cfg.mode.value == "tunnel":
                inner = decapsulate(st, esp)
            else:
                inner = decapsulate(st, esp, ipaddress.ip_address(src),
                                    ipaddress.ip_address(dst) if dst else None)
        except EspError as e:
            stats[e.counter] += 1
            return
        flow = flow_of(inner)
        entry = self.spd.inbound(flow) if flow is not None else None
        if entry is None or entry.action is not Action.PROTECT or \
                entry.reqid != st.cfg.reqid:
            stats["policy_violation"] += 1  # decrypted fine, but not what this SA may carry
            c = st.counters  # a drop: not a packet received on the SA
            c.policy_violation += 1
            c.packets -= 1
            hl = 0 if st.cfg.mode.value == "tunnel" else (20 if inner[0] >> 4 == 4 else 40)
            c.bytes -= len(inner) - hl
            return
        if len(inner) > self.opts.mtu:
            # a whole super-packet sent as one (fragmented) ESP packet: back to the kernel as
            # GSO, counted as the segments it will become
            frame = gso.to_tun(inner, self.opts.mtu)
            nseg = 1
            if frame[1] != gso.GSO_NONE:
                _, _, hl, mss, _, _ = gso.VNET_HDR.unpack_from(frame)
                nseg = -(-(len(inner) - hl) // mss)
                st.counters.packets += nseg - 1
            stats["tun_tx"] += nseg
            if self._gro is not None:
                self._gro.flush()
                self._gro.out.append(frame)
            elif nseg > 1:  # no offload on our TUN: cut it here
                self._to_tun.extend(gso.segment(frame))
            else:
                self._to_tun.append(inner)
        else:
            stats["tun_tx"] += 1
            if self._gro is not None:
                self._gro.add(inner)
            else:
                self._to_tun.append(inner)
        c = st.counters
        if c.bytes >= sa.limit_bytes or c.packets >= sa.limit_packets:
            self._check_lifetime(sa)

    # -- control channel ------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            s, _ = self.listener.accept()
        except BlockingIOError:
            return
        s.setblocking(False)
        self._conns[s.fileno()] = _Conn(s)
        self.ep.register(s.fileno(), select.EPOLLIN)

    def _drop(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        with contextlib.suppress(OSError, ValueError):
            self.ep.unregister(fd)
        self._conns.pop(fd, None)
        c.sock.close()

    def _send(self, c: _Conn, msg: dict[str, Any]) -> None:
        data = json.dumps(msg, separators=(",", ":")).encode()
        c.wbuf += _LEN.pack(len(data)) + data
        self._flush(c)

    def _flush(self, c: _Conn) -> None:
        try:
            while c.wbuf:
                n = c.sock.send(c.wbuf)
                del c.wbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(c)
            return
        with contextlib.suppress(OSError, ValueError):
            self.ep.modify(c.sock.fileno(),
                           select.EPOLLIN | (select.EPOLLOUT if c.wbuf else 0))

    def _readable(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        c.rbuf += data
        while len(c.rbuf) >= 4:
            (n,) = _LEN.unpack_from(c.rbuf)
            if n > MAX_MSG:
                log.warning("control message of %d bytes: closing connection", n)
                self._drop(c)
                return
            if len(c.rbuf) < 4 + n:
                break
            body = bytes(c.rbuf[4:4 + n])
            del c.rbuf[:4 + n]
            self._handle(c, body)

    def _handle(self, c: _Conn, body: bytes) -> None:
        rid = None
        try:
            msg = json.loads(body)
            rid = msg.get("id")
            op = msg["op"]
            handler: Callable[[dict[str, Any]], Any] | None = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise ValueError(f"unknown op {op!r}")
            result = handler(msg)
            self._send(c, {"type": "reply", "id": rid, "ok": True, "result": result})
        except (ModelError, ValueError, KeyError, TypeError) as e:
            log.warning("control request failed: %s", e)
            self._send(c, {"type": "reply", "id": rid, "ok": False, "error": str(e)})

    def _op_ping(self, msg: dict[str, Any]) -> Any:
        return {"pid": os.getpid(), "tun": self.opts.tun}

    def _op_replace(self, msg: dict[str, Any]) -> Any:
        sas = [SaConfig.from_dict(d) for d in msg.get("sas", [])]
        spd = [SpdEntry.from_dict(d) for d in msg.get("spd", [])]
        self._check_unique(sas)
        restored = self.replace(sas, spd, frozenset(msg.get("suspend", ())))
        return {"sas": len(self.by_name), "spd": len(self.spd.entries), "restored": restored,
                "suspended": sorted(n for n, sa in self.by_name.items() if sa.suspended)}

    def _check_unique(self, sas: list[SaConfig]) -> None:
        names = [c.name for c in sas]
        if len(set(names)) != len(names):
            raise ModelError("duplicate SA names")
        spis = [c.spi for c in sas if c.direction is Direction.INBOUND]
        if len(set(spis)) != len(spis):
            raise ModelError("duplicate inbound SPIs")

    def _op_add_sa(self, msg: dict[str, Any]) -> Any:
        cfg = SaConfig.from_dict(msg["sa"])
        if cfg.direction is Direction.INBOUND:
            other = self.inbound.get(cfg.spi)
            if other is not None and other.state.cfg.name != cfg.name:
                raise ModelError(f"inbound SPI {cfg.spi:#x} already used by "
                                 f"{other.state.cfg.name}")
        self._install_sa(cfg)
        if self.seqs is not None:
            self.seqs.sync()
        return None

    def _op_del_sa(self, msg: dict[str, Any]) -> Any:
        return self.remove_sa(str(msg["name"]))

    def _op_add_spd(self, msg: dict[str, Any]) -> Any:
        self.spd.add(SpdEntry.from_dict(msg["entry"]))
        self._sync_routes()
        return None

    def _op_del_spd(self, msg: dict[str, Any]) -> Any:
        found = self.spd.remove(str(msg["name"]))
        self._sync_routes()
        return found

    def _op_stats(self, msg: dict[str, Any]) -> Any:
        return self.snapshot()

    def _op_shutdown(self, msg: dict[str, Any]) -> Any:
        self._running = False
        return None

    # -- loop -----------------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        tun = self.tun_fd
        esp4 = self.esp4.fileno()
        esp6 = self.esp6.fileno() if self.esp6 is not None else -1
        lst = self.listener.fileno()
        next_tick = time.monotonic() + self.opts.tick
        while self._running:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ready = self.ep.poll(timeout)
            except InterruptedError:
                continue
            for fd, ev in ready:
                if fd == tun:
                    self._drain_tun()
                elif fd == esp4:
                    self._drain_esp4()
                elif fd == esp6:
                    self._drain_esp6()
                elif fd == lst:
                    self._accept()
                else:
                    conn = self._conns.get(fd)
                    if conn is not None:
                        if ev & select.EPOLLOUT:
                            self._flush(conn)
                        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                            self._readable(conn)
                        continue
                    for s in self._udp.values():
                        if s.fileno() == fd:
                            self._drain_udp(s)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + self.opts.tick
                self._tick()
        for c in list(self._conns.values()):
            self._flush(c)


def _bufsize(sock: socket.socket, opt: int, force: int, size: int) -> None:
    """Socket buffer of `size` bytes: past net.core.*mem_max when we may (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="userspace ESP data path (run inside the NSF netns)")
    p.add_argument("--control", required=True, help="Unix socket path for the agent")
    p.add_argument("--tun", default="i2u0")
    p.add_argument("--mtu", type=int, default=1400)
    p.add_argument("--table", type=int, default=4303)
    p.add_argument("--rule-priority", type=int, default=4303)
    p.add_argument("--mark", type=lambda s: int(s, 0), default=0x4303)
    p.add_argument("--no-routes", action="store_true", help="the agent installs routes")
    p.add_argument("--acquire-interval", type=float, default=1.0)
    p.add_argument("--counters-interval", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-offload", action="store_true",
                   help="no IFF_VNET_HDR/TSO on the TUN: one packet per read and write")
    p.add_argument("--big-esp", action=argparse.BooleanOptionalAction, default=True,
                   help="send each TCP super-packet from the TUN whole, as one ESP packet that "
                        "the kernel fragments (outer IPv4 only; needs offload)")
    p.add_argument("--nat-keepalive", type=float, default=20.0,
                   help="seconds between RFC 3948 NAT-keepalives on outbound ESP-in-UDP SAs "
                        "(0: never)")
    p.add_argument("--seq-store", default=None,
                   help="file of persisted sequence-number marks: after a crash, SAs installed "
                        "again resume above them (without it sequence numbers are not crash-safe)")
    p.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=True,
                   help="fused AES-GCM send and sendmmsg batching (--no-fast-path: the generic "
                        "path, to compare)")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    opts = Options(control=a.control, tun=a.tun, mtu=a.mtu, table=a.table,
                   rule_priority=a.rule_priority, mark=a.mark, manage_routes=not a.no_routes,
                   acquire_interval=a.acquire_interval, counters_interval=a.counters_interval,
                   batch=a.batch, offload=not a.no_offload, big_esp=a.big_esp,
                   nat_keepalive=a.nat_keepalive, seq_store=a.seq_store,
                   fast_path=a.fast_path)
    dp = Datapath(opts)
    dp.open()
    signal.signal(signal.SIGTERM, lambda *_: dp.stop())
    signal.signal(signal.SIGINT, lambda *_: dp.stop())
    try:
        dp.run()
    finally:
        dp.close()
        log.info("data path stopped: %s", json.dumps(dp.snapshot()["global"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
