"""The userspace SFC data path: a process of its own in the NSF's network namespace.

Like the userspace ESP path it runs outside the agent's NETCONF event loop (packet work is
CPU-bound Python) and is fed over a Unix stream socket with length-prefixed JSON (the same
framing as `nsf_agent.userspace.client`, whose `DatapathClient` talks to it). One thread:
control messages are handled between packet batches, so a table replace is atomic with
respect to traffic.

Sockets: raw IP protocol 47 (GRE) sockets bound to the locator, read with recvmmsg and
written with sendmmsg; a header-including raw socket delivers inner packets (end of path)
and re-injects packets no classifier rule took; AF_PACKET sockets on classifier ingress
interfaces and on the proxies' SF-facing veths; a Unix datagram socket per proxy for the
SF's inspection results. Intercepted interfaces get IPv4 forwarding (and, on the SF return
side, IPv6) turned off so that the kernel does not forward what we already took.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import ipaddress
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from nsf_agent.userspace import mmsg

from .engine import ETH_IPV4, Engine, Proxy
from .hotpath import HotLoop
from .model import ModelError, SfcConfig
from .sysnet import (
    _bufsize,
    _read_sysctl,
    _route_hop,
    _sockaddr,
    _write_sysctl,
    interfaces,
    local_addresses,
)

log = logging.getLogger("nsf_agent.sfc.datapath")

_LEN = struct.Struct("!I")
IPPROTO_GRE = 47
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
BATCH = 64
MAX_MSG = 16 * 1024 * 1024
NFT_TABLE = "i2nsf_sfc"
ETH_IPV6_B = b"\x86\xdd"


@dataclass
class _Link:
    """An intercepted interface: its AF_PACKET socket and what we changed on it."""

    name: str
    sock: socket.socket
    mac: bytes
    role: str                       # "ingress" | "to-sf" | "from-sf"
    saved: dict[str, str] = field(default_factory=dict)
    batch: mmsg.RecvBatch | None = None
    send: mmsg.SendBatch | None = None
    addr: Any = None                # sockaddr_ll of the interface (sendmmsg destination)

    def restore(self) -> None:
        for k, v in self.saved.items():
            with contextlib.suppress(OSError):
                _write_sysctl(k, v)
        self.sock.close()


@dataclass
class _Conn:
    sock: socket.socket
    rbuf: bytearray = field(default_factory=bytearray)
    events: bool = False      # a subscriber: gets every event, sends no requests


class Datapath:
    def __init__(self, control: str) -> None:
        self.control = control
        self.engine = Engine()
        self.cfg = SfcConfig()
        self.links: dict[tuple[str, str], _Link] = {}
        self.results: dict[str, socket.socket] = {}   # proxy name → result socket
        self.conns: list[_Conn] = []
        self.gre4: socket.socket | None = None
        self.gre6: socket.socket | None = None
        self.gre_bound: str | None = None
        self._names: dict[str, ctypes.Array[ctypes.c_char]] = {}
        self._running = True
        self._dirty = True
        # Packets we take from an interface must not also be forwarded by the kernel: an
        # nftables forward-hook drop for those interfaces (both families, forwarding stays
        # on so that a tc-BPF FIB lookup on them works), or, without nft, IPv4 forwarding
        # off on them (then the classifier takes IPv4 only)
        self.nft = shutil.which("nft")
        self.nft_ifs: frozenset[str] = frozenset()
        self.started = time.monotonic()

    # ---- setup -------------------------------------------------------------------------

    def open(self) -> None:
        self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        _bufsize(self.raw4, socket.SO_SNDBUF, SO_SNDBUFFORCE, 8 << 20)
        self.sb_raw4 = mmsg.SendBatch(self.raw4.fileno(), BATCH)
        self.raw6: socket.socket | None = None
        with contextlib.suppress(OSError):
            self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._use_gre(self._open_gre(None), None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.control)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.control)
        os.chmod(self.control, 0o600)
        self.listener.listen(4)
        self.listener.setblocking(False)

    def _gre_socket(self, family: int, bind: str | None) -> socket.socket:
        s = socket.socket(family, socket.SOCK_RAW, IPPROTO_GRE)
        _bufsize(s, socket.SO_RCVBUF, SO_RCVBUFFORCE, 16 << 20)
        _bufsize(s, socket.SO_SNDBUF, SO_SNDBUFFORCE, 8 << 20)
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        if bind:
            s.bind((bind, 0))
        s.setblocking(False)
        return s

    def _open_gre(self, locator: str | None) -> tuple[socket.socket, socket.socket | None]:
        """GRE sockets, the one of the locator's family bound to it."""
        v = ipaddress.ip_address(locator).version if locator else 0
        g4 = self._gre_socket(socket.AF_INET, locator if v == 4 else None)
        g6 = None
        try:
            g6 = self._gre_socket(socket.AF_INET6, locator if v == 6 else None)
        except OSError:
            if v == 6:
                g4.close()
                raise
        return g4, g6

    def _use_gre(self, socks: tuple[socket.socket, socket.socket | None],
                 locator: str | None) -> None:
        for old in (self.gre4, self.gre6):
            if old is not None:
                old.close()
        self.gre4, self.gre6 = socks
        self.gre_bound = locator
        self.hot = HotLoop(self.gre4.fileno(), BATCH)
        self.hot.load(self.engine, _sockaddr)
        self.sb4 = mmsg.SendBatch(self.gre4.fileno(), BATCH)
        self._dirty = True

    def close(self) -> None:
        for link in self.links.values():
            link.restore()
        if self.nft is not None and self.nft_ifs:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._nft(frozenset())
        for path, s in list(self.results.items()):
            s.close()
            del path
        for c in self.conns:
            c.sock.close()
        with contextlib.suppress(OSError):
            self.listener.close()
            os.unlink(self.control)

    # ---- configuration -----------------------------------------------------------------

    def check(self, cfg: SfcConfig) -> None:
        """Everything `replace` would refuse, without changing anything."""
        cfg.check()
        named = cfg.interfaces()
        if self.nft is None:
            for r in cfg.rules:
                if any(p and ":" in p for p in (r.match.src, r.match.dst)):
                    raise ModelError(f"classifier rule {r.name!r}: IPv6 prefixes need nftables "
                                     "(nft) on the NSF to intercept IPv6", f"classifier/rule"
                                     f"[name='{r.name}']/match")
        ifs = interfaces() if named else {}
        for ifname, path in named.items():
            if '"' in ifname or "\\" in ifname:
                raise ModelError(f"interface name {ifname!r} cannot be used", path)
            if ifname not in ifs:
                raise ModelError(f"interface {ifname!r} does not exist in the NSF's namespace",
                                 path)
        if cfg.locator and cfg.locator not in local_addresses():
            raise ModelError(f"locator {cfg.locator} is not an address of this NSF",
                             "forwarder/locator")

    def replace(self, cfg: SfcConfig) -> None:
        """Switch to `cfg` all or nothing: new sockets and interface settings first; if
        any fails, what was opened is closed and the running tables stay as they were."""
        self.check(cfg)
        want: dict[tuple[str, str], str] = {}
        for r in cfg.rules:
            if r.match.ingress:
                want[(r.match.ingress, "ingress")] = r.match.ingress
                if self.nft is not None:   # IPv6: a socket of its own (see _open_link)
                    want[(r.match.ingress, "ingress6")] = r.match.ingress
        for p in cfg.proxies:
            want[(p.to_sf, "to-sf")] = p.to_sf
            want[(p.from_sf, "from-sf")] = p.from_sf
        ifs = interfaces() if want else {}
        new_links: dict[tuple[str, str], _Link] = {}
        new_results: dict[str, socket.socket] = {}
        gre: tuple[socket.socket, socket.socket | None] | None = None
        try:
            for key, ifname in want.items():
                if key in self.links:
                    continue
                new_links[key] = self._open_link(ifname, key[1], ifs[ifname])
            for p in cfg.proxies:
                old = self.cfg_proxy(p.name)
                if old is not None and old.result_socket == p.result_socket \
                        and p.name in self.results:
                    continue
                if p.result_socket:
                    new_results[p.name] = self._open_result(p.result_socket)
            if cfg.locator != self.gre_bound:
                gre = self._open_gre(cfg.locator)
            block = frozenset(n for (n, role) in want if role != "to-sf")
            if self.nft is not None and block != self.nft_ifs:
                self._nft(block)     # last: a failure leaves the old table in place
        except Exception:
            for link in new_links.values():
                link.restore()
            for s in new_results.values():
                s.close()
            if gre is not None:
                for g in gre:
                    if g is not None:
                        g.close()
            raise
        # commit point: nothing below fails for reasons of the new configuration
        if self.nft is not None:
            self.nft_ifs = block
        for key in [k for k in self.links if k not in want]:
            self.links.pop(key).restore()
        self.links.update(new_links)
        for name in [n for n in self.results if n not in {p.name for p in cfg.proxies}
                     or n in new_results]:
            self._close_result(name)
        self.results.update(new_results)
        if gre is not None:
            self._use_gre(gre, cfg.locator)
        macs = {k[0]: link.mac for k, link in self.links.items()}
        self.engine.load(cfg, local_addresses(), macs)
        self.hot.load(self.engine, _sockaddr)
        self.cfg = cfg
        self._dirty = True
        self._flush()

    def cfg_proxy(self, name: str) -> Any:
        for p in self.cfg.proxies:
            if p.name == name:
                return p
        return None

    def _open_link(self, ifname: str, role: str, mac: bytes) -> _Link:
        # Ingress sockets are protocol-specific (ETH_P_IP / ETH_P_IPV6): the kernel gives
        # them packets after tc ingress, so a packet the tc-BPF fast path took is not seen
        # here too (ETH_P_ALL taps see everything, before tc)
        proto = {"ingress": ETH_P_IP, "ingress6": ETH_P_IPV6}.get(role, ETH_P_ALL)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        link = _Link(ifname, s, mac, role)
        try:
            with contextlib.suppress(OSError):
                s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            _bufsize(s, socket.SO_RCVBUF, SO_RCVBUFFORCE, 8 << 20)
            s.bind((ifname, proto))
            s.setblocking(False)
            if role != "to-sf":
                link.batch = mmsg.RecvBatch(s.fileno(), BATCH, 65536)
            else:
                link.send = mmsg.SendBatch(s.fileno(), BATCH)
                raw = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL),
                                  socket.if_nametoindex(ifname), 1, 0, 6, mac + bytes(2))
                link.addr = ctypes.create_string_buffer(raw, len(raw))
            keys = [f"net.ipv4.conf.{ifname}.forwarding"] if self.nft is None else []
            if role == "ingress6":
                keys = []
            elif role != "ingress":
                keys.append(f"net.ipv6.conf.{ifname}.disable_ipv6")
            for k in keys:
                old = _read_sysctl(k)
                if old is None:
                    continue
                new = "0" if k.endswith("forwarding") else "1"
                if old != new:
                    _write_sysctl(k, new)
                    link.saved[k] = old
        except Exception:
            link.restore()
            raise
        return link

    def _nft(self, ifnames: frozenset[str]) -> None:
        """Replace our nftables table in one transaction: forwarded packets that arrived on
        `ifnames` are dropped (we took them already); no names → no table."""
        script = f"add table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        if ifnames:
            names = ", ".join(f'"{n}"' for n in sorted(ifnames))
            script += (f"table inet {NFT_TABLE} {{\n chain forward {{\n"
                       "  type filter hook forward priority -300; policy accept;\n"
                       f"  iifname {{ {names} }} counter drop\n }}\n}}\n")
        assert self.nft is not None
        r = subprocess.run([self.nft, "-f", "-"], input=script, text=True, capture_output=True,
                           timeout=10)
        if r.returncode != 0:
            raise OSError(f"nft refused the interception table: {r.stderr.strip()}")

    def _open_result(self, path: str) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            s.bind(path)
            os.chmod(path, 0o660)
            s.setblocking(False)
        except Exception:
            s.close()
            raise
        return s

    def _close_result(self, name: str) -> None:
        s = self.results.pop(name, None)
        if s is not None:
            path = s.getsockname()
            s.close()
            with contextlib.suppress(OSError, TypeError):
                os.unlink(path)

    # ---- packet I/O --------------------------------------------------------------------

    def _on_gre(self) -> None:
        for _ in range(8):
            got = self.hot.run(self.engine)
            self._flush()
            if got < BATCH:
                return

    def _on_gre6(self) -> None:
        assert self.gre6 is not None
        for _ in range(BATCH):
            try:
                raw = self.gre6.recv(65536)
            except BlockingIOError:
                break
            self.engine.receive_gre(bytearray(raw), 0)   # IPv6 raw sockets omit the header
        self._flush()

    def _on_link(self, link: _Link) -> None:
        eng = self.engine
        assert link.batch is not None
        frames = link.batch.recv()
        if link.role in ("ingress", "ingress6"):
            local = eng.local
            for fr in frames:
                if fr[:6] != link.mac or len(fr) < 34:
                    continue
                et = fr[12:14]
                ip = fr[14:]
                if et == ETH_IPV4:
                    if socket.inet_ntoa(ip[16:20]) in local:
                        continue   # for this host: the kernel delivers it
                elif et == ETH_IPV6_B and len(ip) >= 40:
                    d = ip[24:40]
                    if d[0] == 0xFF or (d[0] == 0xFE and d[1] & 0xC0 == 0x80) or \
                            socket.inet_ntop(socket.AF_INET6, d) in local:
                        continue   # multicast, link-local or ours: not forwarded traffic
                else:
                    continue
                if not eng.classify(ip, link.name):
                    fwd = _route_hop(ip)    # not ours to steer: routed as the kernel would
                    if fwd is None:
                        eng.drops["ttl-expired-unclassified"] += 1
                    else:
                        eng.out_ip.append(fwd)
        else:
            px = self._proxy_from(link.name)
            if px is not None:
                for fr in frames:
                    if fr[:6] == link.mac:
                        eng.from_sf(px, fr)
        self._flush()

    def _proxy_from(self, ifname: str) -> Proxy | None:
        for px in self.engine.proxy_by_name.values():
            if px.entry.from_sf == ifname:
                return px
        return None

    def _on_result(self, name: str, s: socket.socket) -> None:
        px = self.engine.proxy_by_name.get(name)
        for _ in range(64):
            try:
                data = s.recv(65536)
            except BlockingIOError:
                break
            if px is None:
                continue
            try:
                msg = json.loads(data)
                if not isinstance(msg, dict):
                    raise ValueError("not an object")
                self.engine.inspection_result(px, msg)
            except (ValueError, TypeError) as exc:
                self.engine.drops["bad-result"] += 1
                log.warning("proxy %s: unusable inspection result (%s)", name, exc)
        self._flush()

    def _name(self, addr: str) -> ctypes.Array[ctypes.c_char]:
        n = self._names.get(addr)
        if n is None:
            if len(self._names) > 4096:
                self._names.clear()
            n = self._names[addr] = _sockaddr(addr)
        return n

    def _flush(self) -> None:
        eng = self.engine
        if eng.out_gre:
            out4 = [(p, a) for p, a in eng.out_gre if ":" not in a]
            out6 = [(p, a) for p, a in eng.out_gre if ":" in a]
            eng.out_gre = []
            if out4:
                try:
                    sent = self.sb4.send([p for p, _ in out4], [self._name(a) for _, a in out4])
                except OSError as exc:
                    sent = 0
                    log.debug("GRE send: %s", exc)
                if sent < len(out4):
                    eng.drops["send-error"] += len(out4) - sent
            for p, a in out6:
                try:
                    assert self.gre6 is not None
                    self.gre6.sendto(p, (a, 0))
                except (OSError, AssertionError):
                    eng.drops["send-error"] += 1
        if eng.out_ip:
            out, eng.out_ip = eng.out_ip, []
            v4 = [p for p in out if p[0] >> 4 == 4]
            if v4:
                try:
                    sent = self.sb_raw4.send(v4, [self._name(socket.inet_ntoa(p[16:20]))
                                                  for p in v4])
                except OSError:
                    sent = 0
                if sent < len(v4):
                    eng.drops["send-error"] += len(v4) - sent
            for p in out if len(v4) < len(out) else ():
                if p[0] >> 4 == 4:
                    continue
                try:
                    if self.raw6 is None:
                        raise OSError("no IPv6")
                    self.raw6.sendto(p, (socket.inet_ntop(socket.AF_INET6, p[24:40]), 0))
                except OSError:
                    eng.drops["send-error"] += 1
        if eng.out_frames:
            frames, eng.out_frames = eng.out_frames, type(eng.out_frames)(list)
            for ifname, lst in frames.items():
                link = self.links.get((ifname, "to-sf"))
                if link is None:
                    eng.drops["send-error"] += len(lst)
                    continue
                assert link.send is not None
                try:
                    sent = link.send.send(lst, [link.addr] * len(lst))
                except OSError:
                    sent = 0
                if sent < len(lst):
                    eng.drops["send-error"] += len(lst) - sent
        if eng.events:
            evs, eng.events = eng.events, []
            for ev in evs:
                self._broadcast({"type": "event", **ev})

    # ---- control channel ---------------------------------------------------------------

    def _broadcast(self, msg: dict[str, Any]) -> None:
        data = json.dumps(msg, separators=(",", ":")).encode()
        frame = _LEN.pack(len(data)) + data
        for c in [c for c in self.conns if c.events]:
            try:
                c.sock.setblocking(True)
                c.sock.sendall(frame)
                c.sock.setblocking(False)
            except OSError:
                self._drop_conn(c)

    def _drop_conn(self, c: _Conn) -> None:
        with contextlib.suppress(ValueError):
            self.conns.remove(c)
        c.sock.close()
        self._dirty = True

    def _on_conn(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn(c)
            return
        c.rbuf += data
        while len(c.rbuf) >= 4:
            (n,) = _LEN.unpack_from(c.rbuf)
            if n > MAX_MSG:
                self._drop_conn(c)
                return
            if len(c.rbuf) < 4 + n:
                break
            body = bytes(c.rbuf[4:4 + n])
            del c.rbuf[:4 + n]
            req = json.loads(body)
            if req.get("op") == "subscribe":
                c.events = True
            reply = self._handle(req)
            out = json.dumps(reply, separators=(",", ":")).encode()
            try:
                c.sock.setblocking(True)
                c.sock.sendall(_LEN.pack(len(out)) + out)
                c.sock.setblocking(False)
            except OSError:
                self._drop_conn(c)
                return

    def _handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        rid = msg.get("id")
        op = msg.get("op")
        try:
            if op == "ping":
                result: Any = {"pid": os.getpid()}
            elif op == "check":
                self.check(SfcConfig.from_dict(msg["config"]))
                result = True
            elif op == "replace":
                self.replace(SfcConfig.from_dict(msg["config"]))
                result = True
            elif op == "stats":
                result = self.engine.stats()
                result["uptime"] = time.monotonic() - self.started
            elif op == "subscribe":
                result = True
            elif op == "shutdown":
                self._running = False
                result = True
            else:
                raise ValueError(f"unknown op {op!r}")
            return {"id": rid, "ok": True, "result": result}
        except ModelError as exc:
            return {"id": rid, "ok": False, "error": str(exc), "path": exc.path}
        except Exception as exc:
            log.warning("request %s refused: %s", op, exc)
            return {"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"}

    # ---- main loop ---------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        poller = select.poll()
        registered: dict[int, Any] = {}

        def sync() -> None:
            want: dict[int, Any] = {self.listener.fileno(): ("listen", None)}
            if self.gre4 is not None:
                want[self.gre4.fileno()] = ("gre", None)
            if self.gre6 is not None:
                want[self.gre6.fileno()] = ("gre6", None)
            for link in self.links.values():
                if link.batch is not None:
                    want[link.sock.fileno()] = ("link", link)
            for name, s in self.results.items():
                want[s.fileno()] = ("result", (name, s))
            for c in self.conns:
                want[c.sock.fileno()] = ("conn", c)
            for fd in [fd for fd in registered if fd not in want]:
                poller.unregister(fd)
                del registered[fd]
            for fd, what in want.items():
                if fd not in registered:
                    poller.register(fd, select.POLLIN)
                registered[fd] = what

        while self._running:
            if self._dirty:
                sync()
                self._dirty = False
            timeout = 50 if self.engine.held else 250
            try:
                ready = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ev in ready:
                what = registered.get(fd)
                if what is None:
                    continue
                kind, obj = what
                try:
                    if kind == "gre":
                        self._on_gre()
                    elif kind == "gre6":
                        self._on_gre6()
                    elif kind == "link":
                        self._on_link(obj)
                    elif kind == "result":
                        self._on_result(*obj)
                    elif kind == "conn":
                        self._on_conn(obj)
                    elif kind == "listen":
                        conn, _ = self.listener.accept()
                        conn.setblocking(False)
                        self.conns.append(_Conn(conn))
                        self._dirty = True
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EINTR):
                        log.exception("data path: %s failed", kind)
                except Exception:
                    # one bad message or packet must not stop forwarding for everyone
                    log.exception("data path: %s handling failed", kind)
                    if kind == "conn":
                        self._drop_conn(obj)
            if self.engine.held:
                self.engine.expire(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="userspace SFC data path (classifier/SFF/proxy)")
    ap.add_argument("--control", required=True, help="Unix socket the agent connects to")
    ap.add_argument("--log-level", default="info")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level.upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    dp = Datapath(a.control)
    dp.open()
    signal.signal(signal.SIGTERM, lambda *_: dp.stop())
    signal.signal(signal.SIGINT, lambda *_: dp.stop())
    try:
        dp.run()
    finally:
        dp.close()
        log.info("SFC data path stopped: %s", json.dumps(dp.engine.stats()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
