"""Packet logic of the SFC data path: classifier, SFF and proxy, without sockets.

The data path process (`datapath.py`) feeds received packets in and flushes what the engine
queued (`out_gre`, `out_ip`, `out_frames`, `events`) with batched system calls after each
batch. Keeping sockets out makes every rule testable with plain bytes, and keeps one place
that decides what happens to a packet (the fast path must match these semantics).

Per RFC 8300: SFFs decrement the NSH TTL and drop at 0; service functions (here: the proxy
on their behalf) decrement the SI; SI 0 or a `terminate` entry ends the path here.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import logging
import math
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from . import nsh
from .model import ClassifierRule, NextHop, ProxyEntry, SfcConfig

log = logging.getLogger(__name__)

Flow = tuple[bytes, bytes, int, int, int]
ETH_IPV4 = b"\x08\x00"
ETH_IPV6 = b"\x86\xdd"
FLOW_STATE_MAX = 65536
HOLD_TOTAL_MAX = 4096
HOLD_BYTES_MAX = 16 << 20   # held packets may be reassembled 64 KB ones: bound the bytes too
EVENT_INTERVAL = 1.0   # one ttl-expired / loop event per (SPI, SI) per second
MISS_EVENTS_PER_S = 200.0   # table-miss notifications in all, per second (token bucket)


def flow_of(p: bytes | bytearray | memoryview, off: int = 0) -> Flow | None:
    """Inner 5-tuple (addresses as bytes); ports 0 for non-port protocols and fragments."""
    if len(p) - off < 20:
        return None
    v = p[off] >> 4
    if v == 4:
        ihl = (p[off] & 0xF) * 4
        proto = p[off + 9]
        src, dst = bytes(p[off + 12:off + 16]), bytes(p[off + 16:off + 20])
        frag = ((p[off + 6] & 0x1F) << 8) | p[off + 7]
        l4 = off + ihl
    elif v == 6 and len(p) - off >= 40:
        proto = p[off + 6]
        src, dst = bytes(p[off + 8:off + 24]), bytes(p[off + 24:off + 40])
        frag, l4 = 0, off + 40
    else:
        return None
    if proto in (6, 17, 132) and not frag and len(p) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", p, l4)
        return src, dst, proto, sport, dport
    return src, dst, proto, 0, 0


_NOPORTS = bytes(4)


def flow_key(p: bytes | bytearray | memoryview) -> bytes | None:
    """The inner 5-tuple as one bytes key (addresses, protocol, ports or zeros): what the
    proxy's per-flow state is keyed by — cheaper than `flow_of` on every SF pass."""
    if len(p) < 20:
        return None
    v = p[0] >> 4
    if v == 4:
        proto = p[9]
        l4 = (p[0] & 0xF) * 4
        ports = (bytes(p[l4:l4 + 4]) if proto in (6, 17, 132) and not (p[6] & 0x1F or p[7])
                 and len(p) >= l4 + 4 else _NOPORTS)
        return bytes(p[12:20]) + bytes((proto,)) + ports
    if v == 6 and len(p) >= 44:
        proto = p[6]
        ports = bytes(p[40:44]) if proto in (6, 17, 132) else _NOPORTS
        return bytes(p[8:40]) + bytes((proto,)) + ports
    return None


def key_of(src: bytes, dst: bytes, proto: int, sport: int, dport: int) -> bytes:
    ports = struct.pack("!HH", sport, dport) if proto in (6, 17, 132) else _NOPORTS
    return src + dst + bytes((proto,)) + ports


def _clean_flow(fl: object) -> dict[str, Any]:
    """The flow of an SF's result with only well-formed fields (the SF is not trusted to
    produce valid YANG values)."""
    out: dict[str, Any] = {}
    if not isinstance(fl, dict):
        return out
    for k in ("src", "dst"):
        with contextlib.suppress(KeyError, ValueError):
            out[k] = str(ipaddress.ip_address(str(fl[k])))
    for k, hi in (("proto", 255), ("sport", 65535), ("dport", 65535)):
        v = fl.get(k)
        if isinstance(v, int) and 0 <= v <= hi:
            out[k] = v
    return out


def _net(prefix: str | None) -> tuple[int, int, int] | None:
    if not prefix:
        return None
    n = ipaddress.ip_network(prefix, strict=False)
    return n.version, int(n.network_address), int(n.netmask)


@dataclass(slots=True)
class _Rule:
    rule: ClassifierRule
    src: tuple[int, int, int] | None
    dst: tuple[int, int, int] | None
    packets: int = 0
    bytes: int = 0

    def matches(self, flow: Flow, dscp: int, ingress: str | None) -> bool:
        m = self.rule.match
        if m.ingress is not None and m.ingress != ingress:
            return False
        if m.protocol is not None and m.protocol != flow[2]:
            return False
        for net, addr in ((self.src, flow[0]), (self.dst, flow[1])):
            if net is not None:
                ver = 4 if len(addr) == 4 else 6
                if ver != net[0] or int.from_bytes(addr, "big") & net[2] != net[1]:
                    return False
        if m.dscp is not None and m.dscp != dscp:
            return False
        return flow[3] in m.sport and flow[4] in m.dport


_M64 = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finalizer: independent-looking 64-bit values from related inputs."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


@dataclass(slots=True)
class _Entry:
    hops: tuple[NextHop, ...]
    cumulative: list[int]
    terminate: bool
    packets: int = 0
    bytes: int = 0
    hop_packets: list[int] = field(default_factory=list)
    salts: list[int] = field(default_factory=list)

    def pick(self, inner: bytes | bytearray, off: int) -> int:
        """Weighted rendezvous (highest random weight) hashing of the inner 5-tuple: a flow
        stays on one next hop, shares follow the weights, and adding or removing a next hop
        moves only the flows that must move (to or from that hop)."""
        if len(self.hops) == 1:
            return 0
        f = flow_of(inner, off)
        if f is None:
            return 0
        key = f[0] + f[1] + struct.pack("!BHH", f[2], f[3], f[4])
        k = (zlib.crc32(key) << 32) | zlib.crc32(key[::-1])
        best, bi = -1.0, 0
        for i, (salt, h) in enumerate(zip(self.salts, self.hops, strict=True)):
            u = ((_mix(k ^ salt) >> 11) + 1) / 9007199254740993.0   # (0, 1)
            score = -h.weight / math.log(u)
            if score > best:
                best, bi = score, i
        return bi


@dataclass(slots=True)
class _FlowState:
    ttl: int
    md_type: int
    meta: bytes           # MD1 context or MD2 TLV bytes as received
    tag: nsh.Tlv | None = None
    spi: int = 0          # the path position the flow was handed to the SF at (an SF
    si: int = 0           # instance may serve several proxy entries, i.e. paths)


@dataclass(slots=True)
class Proxy:
    entry: ProxyEntry
    sf_mac: bytes
    our_mac: bytes = b"\0" * 6       # set by the data path (MAC of to_sf)
    flows: collections.OrderedDict[bytes, _FlowState] = field(
        default_factory=collections.OrderedDict)
    tags: dict[bytes, nsh.Tlv] = field(default_factory=dict)
    to_sf: int = 0
    from_sf: int = 0
    results: int = 0
    salt: int = 0


class Engine:
    """One agent's SFC tables and counters; single-threaded like its data path."""

    def __init__(self) -> None:
        self.cfg = SfcConfig()
        self.sff_id = 0
        self.local: set[str] = set()     # our addresses (locator, local proxies)
        self.rules: list[_Rule] = []
        self.reclass: dict[str, list[Any]] = {}
        self.steer: dict[str, list[Any]] = {}
        self.table: dict[tuple[int, int], _Entry] = {}
        # (SPI, SI) → the local function instances serving it (several: flows spread by
        # weighted rendezvous hashing, like next hops)
        self.proxies: dict[tuple[int, int], list[Proxy]] = {}
        self.proxy_by_name: dict[str, Proxy] = {}
        self.hold: dict[tuple[int, int], collections.deque[tuple[float, bytearray, int]]] = {}
        self.held = 0
        self.held_bytes = 0
        self.counters: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self._last_event: dict[tuple[str, int, int], float] = {}
        self._miss_tokens = MISS_EVENTS_PER_S
        self._miss_t = time.monotonic()
        # outputs, flushed by the data path after each batch
        self.out_gre: list[tuple[bytes, str]] = []        # (GRE payload, locator)
        self.out_ip: list[bytes] = []                     # inner packets to deliver
        self.out_frames: dict[str, list[bytes]] = collections.defaultdict(list)
        self.events: list[dict[str, Any]] = []

    # ---- configuration -------------------------------------------------------------------

    def load(self, cfg: SfcConfig, local_addrs: set[str], macs: dict[str, bytes]) -> None:
        """Switch to `cfg` (already checked); counters of unchanged entries survive, held
        packets whose entry arrived are released at once."""
        old_rules = {r.rule.name: r for r in self.rules}
        self.rules = []
        for r in sorted(cfg.rules, key=lambda r: (r.order, r.name)):
            nr = _Rule(r, _net(r.match.src), _net(r.match.dst))
            if r.name in old_rules and old_rules[r.name].rule == r:
                nr.packets, nr.bytes = old_rules[r.name].packets, old_rules[r.name].bytes
            self.rules.append(nr)
        old_rc, old_st = self.reclass, self.steer
        self.reclass, self.steer = {}, {}
        for new, old, rules in ((self.reclass, old_rc, cfg.reclassify),
                                (self.steer, old_st, cfg.steering)):
            for rc in rules:
                prev = old.get(rc.result)
                new[rc.result] = [rc, *(prev[1:] if prev and prev[0] == rc else (0, 0))]
        old_tab = self.table
        self.table = {}
        for e in cfg.table:
            cum, total = [], 0
            for h in e.next_hops:
                total += h.weight
                cum.append(total)
            term = any(h.kind == "terminate" for h in e.next_hops)
            ne = _Entry(e.next_hops, cum, term, hop_packets=[0] * len(e.next_hops),
                        salts=[_mix(zlib.crc32(str(h.locator).encode())) for h in e.next_hops])
            prev = old_tab.get((e.spi, e.si))
            if prev is not None and prev.hops == ne.hops:
                ne.packets, ne.bytes, ne.hop_packets = prev.packets, prev.bytes, prev.hop_packets
            self.table[(e.spi, e.si)] = ne
        old_px = self.proxy_by_name
        self.proxies, self.proxy_by_name = {}, {}
        shared: dict[str, tuple[Any, Any]] = {}
        for p in cfg.proxies:
            prev = old_px.get(p.name)
            salt = _mix(zlib.crc32(p.name.encode()))
            px = prev if prev is not None and prev.entry == p else Proxy(
                p, bytes.fromhex(p.sf_mac.replace(":", "")))
            px.our_mac = macs.get(p.to_sf, px.our_mac)
            px.salt = salt
            # entries in front of one SF instance (same veths) share its flow state: what
            # comes back is matched to the path it was handed over on
            got = shared.setdefault(p.from_sf, (px.flows, px.tags))
            px.flows, px.tags = got
            self.proxies.setdefault((p.spi, p.si), []).append(px)
            self.proxy_by_name[p.name] = px
        self.cfg = cfg
        self.sff_id = cfg.sff_id
        self.local = set(local_addrs)
        if cfg.locator:
            self.local.add(str(ipaddress.ip_address(cfg.locator)))
        for key in [k for k in self.hold if k in self.table or k in self.proxies]:
            q = self.hold.pop(key)
            self.held -= len(q)
            self.held_bytes -= sum(len(b) for _t, b, _o in q)
            for _t, buf, off in q:
                self.counters["released"] += 1
                self.sff(buf, off)

    # ---- classifier ----------------------------------------------------------------------

    def classify(self, pkt: bytes | bytearray, ingress: str | None) -> bool:
        """An IP packet that arrived on `ingress`; True when a rule took it (NSH pushed)."""
        f = flow_of(pkt)
        if f is None:
            return False
        dscp = (pkt[1] >> 2) if pkt[0] >> 4 == 4 else ((pkt[0] & 0xF) << 2 | pkt[1] >> 6)
        for r in self.rules:
            if r.matches(f, dscp, ingress):
                r.packets += 1
                r.bytes += len(pkt)
                rule = r.rule
                self._push(pkt, rule.spi, rule.si, rule.ttl, rule.md_type, rule.first_hop)
                return True
        self.counters["unmatched"] += 1
        return False

    def _push(self, inner: bytes | bytearray, spi: int, si: int, ttl: int, md: int,
              first_hop: str, tlvs: list[nsh.Tlv] | None = None) -> None:
        h = nsh.Nsh(spi=spi, si=si, ttl=ttl, next_proto=nsh.next_proto_of(inner), md_type=md)
        if md == 2:
            h.tlvs = [*(tlvs or []), nsh.trace_tlv([])]
        payload = nsh.GRE_NSH + h.encode() + inner
        if first_hop in self.local:
            self.sff(bytearray(payload), 4)
        else:
            self.out_gre.append((payload, first_hop))

    # ---- SFF -----------------------------------------------------------------------------

    def receive_gre(self, pkt: bytearray, off: int) -> None:
        """A GRE packet (`off` = start of the GRE header) received on our locator."""
        self.counters["received"] += 1
        try:
            proto, noff = nsh.gre_decode(pkt, off)
        except nsh.NshError as exc:
            self.drops[exc.reason] += 1
            return
        if proto != nsh.GRE_PROTO_NSH:
            self.drops["not-nsh"] += 1
            return
        if noff - off != 4:   # re-base so that outputs always carry our 4-byte GRE header
            pkt = bytearray(nsh.GRE_NSH) + pkt[noff:]
            noff = 4
        elif off:
            pkt = pkt[off:]
            noff = 4
        self.sff(pkt, noff)

    def sff(self, pkt: bytearray, off: int) -> None:
        """Forward the GRE/NSH packet `pkt` (`off` = start of the NSH, GRE before it)."""
        try:
            spi, si, ttl, hlen, md = nsh.peek(pkt, off)
        except nsh.NshError as exc:
            self.drops[exc.reason] += 1
            return
        if md == nsh.MdType.MD2:
            got = self._md2(pkt, off, spi, si)
            if got is None:
                return
            pkt, hlen = got
        if si == 0:
            self._deliver(pkt, off + hlen, pkt[off + 3])
            return
        e = self.table.get((spi, si))
        if e is None:
            px = self._local_proxy(spi, si, pkt, off + hlen)
            if px is not None:
                self._to_sf(px, pkt, off, hlen, ttl)
                return
            self._miss(spi, si, pkt, off)
            return
        e.packets += 1
        e.bytes += len(pkt) - off - hlen
        if e.terminate:
            e.hop_packets[0] += 1
            self._deliver(pkt, off + hlen, pkt[off + 3])
            return
        if ttl <= 1:
            self.drops["ttl-expired"] += 1
            self._event("sff-ttl-expired", spi, si)
            return
        i = e.pick(pkt, off + hlen)
        e.hop_packets[i] += 1
        hop = e.hops[i]
        nsh.set_ttl_si(pkt, off, ttl - 1, si)
        if hop.locator in self.local:
            px = self._local_proxy(spi, si, pkt, off + hlen)
            if px is None:
                self.drops["no-local-proxy"] += 1
                return
            self._to_sf(px, pkt, off, hlen, ttl - 1)
            return
        self.counters["forwarded"] += 1
        self.out_gre.append((bytes(pkt), hop.locator))  # type: ignore[arg-type]

    def _md2(self, pkt: bytearray, off: int, spi: int, si: int,
             ) -> tuple[bytearray, int] | None:
        """MD type 2 processing: re-classification requests and the RSP trace."""
        h, poff = nsh.decode(pkt, off)
        for typ, table, done, unknown in (
                (nsh.TLV_RECLASSIFY, self.reclass, "reclassified", "reclassify-unknown"),
                (nsh.TLV_NEXT_FUNCTION, self.steer, "steered", "next-function-unknown")):
            req = h.tlv(nsh.MD_CLASS_I2NSF, typ)
            if req is None:
                continue
            rc = table.get(req.value.decode(errors="replace"))
            if rc is not None:
                rule = rc[0]
                rc[1] += 1
                rc[2] += len(pkt) - poff
                self.counters[done] += 1
                self._push(pkt[poff:], rule.spi, rule.si, nsh.DEFAULT_TTL, 2, rule.first_hop)
                return None
            self.counters[unknown] += 1
        trace = h.tlv(nsh.MD_CLASS_I2NSF, nsh.TLV_RSP_TRACE)
        if trace is None or not self.sff_id:
            return pkt, poff - off
        visits = nsh.trace_entries(trace)
        if (self.sff_id, si) in visits:
            self.drops["loop"] += 1
            self._event("sff-loop-detected", spi, si,
                        trace=[f"{n}/{s}" for n, s in visits] + [f"{self.sff_id}/{si}"])
            return None
        h.tlvs = [*h.without(nsh.MD_CLASS_I2NSF, nsh.TLV_RSP_TRACE),
                  nsh.trace_tlv([*visits, (self.sff_id, si)])]
        try:
            hdr = h.encode()
        except ValueError:
            self.drops["metadata-full"] += 1
            return None
        return bytearray(pkt[:off]) + hdr + pkt[poff:], len(hdr)

    def _deliver(self, pkt: bytearray, inner_off: int, next_proto: int) -> None:
        if next_proto not in (nsh.NextProto.IPV4, nsh.NextProto.IPV6):
            self.drops["unsupported-next-protocol"] += 1
            return
        self.counters["delivered"] += 1
        self.out_ip.append(bytes(pkt[inner_off:]))

    def _miss(self, spi: int, si: int, pkt: bytearray, off: int) -> None:
        key = (spi, si)
        q = self.hold.get(key)
        if q is None:
            self.counters["table-misses"] += 1
            self._miss_event(spi, si)
            if self.cfg.hold_packets == 0:
                self.drops["table-miss"] += 1
                return
            q = self.hold[key] = collections.deque()
        if (len(q) >= self.cfg.hold_packets or self.held >= HOLD_TOTAL_MAX
                or self.held_bytes + len(pkt) > HOLD_BYTES_MAX):
            self.drops["table-miss"] += 1
            return
        q.append((time.monotonic(), pkt, off))
        self.held += 1
        self.held_bytes += len(pkt)

    def _miss_event(self, spi: int, si: int) -> None:
        """Ask the controller — once per (SPI, SI) per hold episode, and at most
        MISS_EVENTS_PER_S in all (random SPIs must not become a notification flood)."""
        now = time.monotonic()
        if self.cfg.hold_packets == 0:   # no episode to mark: one per (SPI, SI) per second
            k = ("sff-table-miss", spi, si)
            if now - self._last_event.get(k, -EVENT_INTERVAL) < EVENT_INTERVAL:
                return
            self._last_event[k] = now
        self._miss_tokens = min(MISS_EVENTS_PER_S, self._miss_tokens
                                + (now - self._miss_t) * MISS_EVENTS_PER_S)
        self._miss_t = now
        if self._miss_tokens < 1:
            self.counters["table-miss-notifications-suppressed"] += 1
            return
        self._miss_tokens -= 1
        self.events.append({"event": "sff-table-miss", "sff-id": self.sff_id,
                            "spi": spi, "si": si})

    def expire(self, now: float) -> None:
        """Drop held packets older than hold-time (their entry did not come)."""
        limit = self.cfg.hold_ms / 1000.0
        for key in list(self.hold):
            q = self.hold[key]
            while q and now - q[0][0] >= limit:
                self.held_bytes -= len(q.popleft()[1])
                self.held -= 1
                self.drops["table-miss"] += 1
            if not q:
                del self.hold[key]   # the next packet asks the controller again

    def _event(self, kind: str, spi: int, si: int, **extra: Any) -> None:
        now = time.monotonic()
        k = (kind, spi, si)
        if now - self._last_event.get(k, -EVENT_INTERVAL) < EVENT_INTERVAL:
            return
        self._last_event[k] = now
        if len(self._last_event) > 4096:
            self._last_event.clear()
        self.events.append({"event": kind, "sff-id": self.sff_id, "spi": spi, "si": si,
                            **extra})

    # ---- proxy ---------------------------------------------------------------------------

    def _local_proxy(self, spi: int, si: int, pkt: bytes | bytearray, ioff: int = 0,
                     key: bytes | None = None) -> Proxy | None:
        """The local instance for (SPI, SI): the only one, or by weighted rendezvous hashing
        of the flow (a flow stays on one instance; adding one moves only what it takes)."""
        group = self.proxies.get((spi, si))
        if not group:
            return None
        if len(group) == 1:
            return group[0]
        if key is None:
            key = flow_key(memoryview(pkt)[ioff:]) or b""
        k = (zlib.crc32(key) << 32) | zlib.crc32(key[::-1])
        best, choice = -1.0, group[0]
        for px in group:
            u = ((_mix(k ^ px.salt) >> 11) + 1) / 9007199254740993.0
            score = -px.entry.weight / math.log(u)
            if score > best:
                best, choice = score, px
        return choice

    def _to_sf(self, px: Proxy, pkt: bytearray, off: int, hlen: int, ttl: int) -> None:
        """Strip the NSH, remember it for the flow and hand the inner packet to the SF."""
        np_ = pkt[off + 3]
        if np_ == nsh.NextProto.IPV4:
            etype = ETH_IPV4
        elif np_ == nsh.NextProto.IPV6:
            etype = ETH_IPV6
        else:
            self.drops["unsupported-next-protocol"] += 1
            return
        spi = (pkt[off + 4] << 16) | (pkt[off + 5] << 8) | pkt[off + 6]
        self._hand_over(px, pkt[off + hlen:], etype, ttl, pkt[off + 2] & 0xF,
                        bytes(pkt[off + 8:off + hlen]), spi, pkt[off + 7], None)

    def _hand_over(self, px: Proxy, inner: bytes | bytearray, etype: bytes, ttl: int, md: int,
                   meta: bytes, spi: int, si: int, f: bytes | None) -> None:
        """Remember the flow's NSH (TTL, metadata, path position) and send the inner
        packet to the SF as an Ethernet frame."""
        if f is None:
            f = flow_key(inner)
        if f is not None:
            st = px.flows.get(f)
            if st is None:
                if len(px.flows) >= FLOW_STATE_MAX:
                    px.flows.popitem(last=False)
                px.flows[f] = _FlowState(ttl, md, meta, px.tags.get(f), spi, si)
            else:
                st.ttl, st.md_type, st.meta, st.spi, st.si = ttl, md, meta, spi, si
        px.to_sf += 1
        self.out_frames[px.entry.to_sf].append(px.sf_mac + px.our_mac + etype + bytes(inner))

    def from_sf(self, px: Proxy, frame: bytes) -> None:
        """A frame the SF returned: restore the NSH with SI - 1 and forward it."""
        et = frame[12:14]
        if et not in (ETH_IPV4, ETH_IPV6):
            return
        inner = frame[14:]
        f = flow_key(inner)
        st = px.flows.get(f) if f is not None else None
        if st is not None and (st.spi, st.si) != (px.entry.spi, px.entry.si):
            # the instance also serves another path: the entry of that path, same veths
            px = next((q for q in self.proxies.get((st.spi, st.si), ())
                       if q.entry.from_sf == px.entry.from_sf), px)
        px.from_sf += 1
        e = px.entry
        si = e.si - 1
        ttl = st.ttl if st is not None else nsh.DEFAULT_TTL
        tag = (st.tag if st is not None else None) or (px.tags.get(f) if f else None)
        np_ = nsh.NextProto.IPV4 if et == ETH_IPV4 else nsh.NextProto.IPV6
        if tag is None and (st is None or st.md_type == nsh.MdType.MD1):
            meta = st.meta if st is not None else bytes(16)
            # next function on this node too (the usual chain through local proxies): the
            # SFF step done here without building the header only to parse it again —
            # same counters, same TTL rule as sff() (TTL 1 takes the general path: drop)
            nxt = self._local_proxy(e.spi, si, inner, 0, f) if si else None
            if nxt is not None and ttl > 1:
                ent = self.table.get((e.spi, si))
                if (ent is not None and len(ent.hops) == 1 and not ent.terminate
                        and ent.hops[0].locator in self.local):
                    ent.packets += 1
                    ent.bytes += len(inner)
                    ent.hop_packets[0] += 1
                    self._hand_over(nxt, inner, et, ttl - 1, 1, meta, e.spi, si, f)
                    return
            hdr = struct.pack("!BBBBI", ttl >> 2, ((ttl & 3) << 6) | 6, 1, np_,
                              (e.spi << 8) | si) + meta
        else:
            tlvs = []
            if st is not None and st.md_type == nsh.MdType.MD2:
                try:
                    old, _ = nsh.decode(struct.pack("!BBBBI", 0, (8 + len(st.meta)) // 4, 2, np_,
                                                    0) + st.meta)
                    tlvs = old.tlvs
                except nsh.NshError:
                    tlvs = []
            if tag is not None:
                tlvs = [t for t in tlvs if not (t.cls == tag.cls and t.type == tag.type)]
                tlvs.insert(0, tag)
            hdr = nsh.Nsh(spi=e.spi, si=si, ttl=ttl, next_proto=np_, md_type=2,
                          tlvs=tlvs).encode()
        pkt = bytearray(nsh.GRE_NSH) + hdr + inner
        if si == 0:
            self._deliver(pkt, 4 + len(hdr), np_)
            return
        self.sff(pkt, 4)

    def inspection_result(self, px: Proxy, msg: dict[str, Any]) -> None:
        """A result datagram from the SF: tag the flow's next packets if it asks for an
        action, and report it to the controller either way."""
        px.results += 1
        fl = _clean_flow(msg.get("flow"))
        action = msg.get("action") or None
        if isinstance(action, dict):
            action = {k: str(v)[:nsh.MAX_TLV_VALUE] for k, v in action.items()
                      if k in ("reclassify", "next-function")} or None
        else:
            action = None
        verdict = msg.get("verdict")
        try:
            sid = max(0, min(int(msg.get("sid") or 0), 2**32 - 1))
        except (TypeError, ValueError):
            sid = 0
        ev: dict[str, Any] = {"event": "inspection-result", "proxy": px.entry.name,
                              "instance": str(msg.get("instance", ""))[:255],
                              "sf-type": str(msg.get("type", ""))[:255], "sid": sid,
                              "msg": str(msg.get("msg", ""))[:1024], "flow": fl,
                              "verdict": verdict if verdict in ("alert", "drop", "pass")
                              else None, "action": action}
        self.events.append(ev)
        if not isinstance(action, dict):
            return
        if "reclassify" in action:
            tag = nsh.reclassify_tlv(str(action["reclassify"]))
        elif "next-function" in action:
            tag = nsh.next_function_tlv(str(action["next-function"]))
        else:
            return
        try:
            key = key_of(ipaddress.ip_address(fl["src"]).packed,
                         ipaddress.ip_address(fl["dst"]).packed, int(fl["proto"]),
                         int(fl.get("sport") or 0), int(fl.get("dport") or 0))
        except (KeyError, ValueError, TypeError):
            return
        if len(px.tags) >= FLOW_STATE_MAX:
            px.tags.pop(next(iter(px.tags)))
        px.tags[key] = tag
        st = px.flows.get(key)
        if st is not None:
            st.tag = tag

    # ---- state ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "drops": dict(self.drops),
            "held": self.held,
            "rules": {r.rule.name: [r.packets, r.bytes] for r in self.rules},
            "reclassify": {k: [v[1], v[2]] for k, v in self.reclass.items()},
            "steering": {k: [v[1], v[2]] for k, v in self.steer.items()},
            "entries": [[spi, si, e.packets, e.bytes, e.hop_packets]
                        for (spi, si), e in self.table.items()],
            "proxies": {n: {"to-sf": p.to_sf, "from-sf": p.from_sf, "results": p.results,
                            "flows": len(p.flows)} for n, p in self.proxy_by_name.items()},
        }
