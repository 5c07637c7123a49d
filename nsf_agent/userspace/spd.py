"""SPD lookup on raw packets: selectors compiled to integers, results cached per flow.

The data path looks up every packet, so matching works on integer addresses and a
flow-tuple cache (cleared on every SPD change) keeps the common case to one dict lookup.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from .model import Action, Direction, SpdEntry

_PORT_PROTOS = frozenset({6, 17, 132, 136})  # TCP, UDP, SCTP, UDP-Lite
_CACHE_MAX = 65536

Flow = tuple[int, int, int, int, int, int]  # version, src, dst, proto, sport, dport


def flow_of(packet: bytes) -> Flow | None:
    """The selector-relevant fields of an IP packet, or None if it is not parseable.

    Non-first fragments carry no ports; they get port 0 (RFC 4301 5.2 leaves their handling
    to stateful fragment checking, which we do not do).
    """
    n = len(packet)
    if n < 20:
        return None
    v = packet[0] >> 4
    if v == 4:
        ihl = (packet[0] & 0x0F) << 2
        if ihl < 20 or n < ihl:
            return None
        proto = packet[9]
        src = int.from_bytes(packet[12:16], "big")
        dst = int.from_bytes(packet[16:20], "big")
        frag = (packet[6] << 8 | packet[7]) & 0x1FFF
        if proto in _PORT_PROTOS and not frag and n >= ihl + 4:
            sp, dp = struct.unpack_from("!HH", packet, ihl)
            return 4, src, dst, proto, sp, dp
        if proto == 1 and n >= ihl + 2:  # ICMP type/code in the port fields (RFC 4301 4.4.1)
            return 4, src, dst, proto, packet[ihl], packet[ihl + 1]
        return 4, src, dst, proto, 0, 0
    if v == 6:
        if n < 40:
            return None
        proto = packet[6]
        src = int.from_bytes(packet[8:24], "big")
        dst = int.from_bytes(packet[24:40], "big")
        if proto in _PORT_PROTOS and n >= 44:
            sp, dp = struct.unpack_from("!HH", packet, 40)
            return 6, src, dst, proto, sp, dp
        if proto == 58 and n >= 42:
            return 6, src, dst, proto, packet[40], packet[41]
        return 6, src, dst, proto, 0, 0
    return None


class _Compiled:
    __slots__ = ("entry", "lmask", "lnet", "lports", "proto", "rmask", "rnet", "rports",
                 "version")

    def __init__(self, e: SpdEntry) -> None:
        s = e.selector
        self.entry = e
        self.version = s.local_prefix.version
        self.lnet = int(s.local_prefix.network_address)
        self.lmask = int(s.local_prefix.netmask)
        self.rnet = int(s.remote_prefix.network_address)
        self.rmask = int(s.remote_prefix.netmask)
        self.proto = s.protocol
        self.lports = None if s.local_ports.is_any else (s.local_ports.start, s.local_ports.end)
        self.rports = None if s.remote_ports.is_any else (s.remote_ports.start,
                                                          s.remote_ports.end)

    def match(self, version: int, local: int, remote: int, proto: int, lport: int,
              rport: int) -> bool:
        if version != self.version or (local & self.lmask) != self.lnet or \
                (remote & self.rmask) != self.rnet:
            return False
        if self.proto is not None and self.proto != proto:
            return False
        if self.lports is not None and not self.lports[0] <= lport <= self.lports[1]:
            return False
        return self.rports is None or self.rports[0] <= rport <= self.rports[1]


class Spd:
    """Ordered SPD for both directions with a per-flow decision cache."""

    def __init__(self, entries: Iterable[SpdEntry] = ()) -> None:
        self.entries: dict[str, SpdEntry] = {}
        self._out: list[_Compiled] = []
        self._in: list[_Compiled] = []
        self._cache_out: dict[Flow, SpdEntry | None] = {}
        self._cache_in: dict[Flow, SpdEntry | None] = {}
        self.replace(entries)

    def replace(self, entries: Iterable[SpdEntry]) -> None:
        self.entries = {e.name: e for e in entries}
        self._rebuild()

    def add(self, entry: SpdEntry) -> None:
        self.entries[entry.name] = entry
        self._rebuild()

    def remove(self, name: str) -> bool:
        found = self.entries.pop(name, None) is not None
        self._rebuild()
        return found

    def _rebuild(self) -> None:
        ordered = sorted(self.entries.values(), key=lambda e: (e.priority, e.name))
        self._out = [_Compiled(e) for e in ordered if e.direction is Direction.OUTBOUND]
        self._in = [_Compiled(e) for e in ordered if e.direction is Direction.INBOUND]
        self._cache_out = {}
        self._cache_in = {}

    def outbound(self, flow: Flow) -> SpdEntry | None:
        """First outbound entry for a packet we send (local = source)."""
        try:
            return self._cache_out[flow]
        except KeyError:
            pass
        v, src, dst, proto, sp, dp = flow
        hit = next((c.entry for c in self._out if c.match(v, src, dst, proto, sp, dp)), None)
        if len(self._cache_out) >= _CACHE_MAX:
            self._cache_out.clear()
        self._cache_out[flow] = hit
        return hit

    def inbound(self, flow: Flow) -> SpdEntry | None:
        """First inbound entry for a packet we received (local = destination)."""
        try:
            return self._cache_in[flow]
        except KeyError:
            pass
        v, src, dst, proto, sp, dp = flow
        hit = next((c.entry for c in self._in if c.match(v, dst, src, proto, dp, sp)), None)
        if len(self._cache_in) >= _CACHE_MAX:
            self._cache_in.clear()
        self._cache_in[flow] = hit
        return hit

    def routed_prefixes(self) -> tuple[set[str], set[str]]:
        """(prefixes to route into the TUN, prefixes to `throw` back to the main table).

        Protect and discard entries pull their remote prefix into the TUN. A bypass entry
        without protocol/port restriction gets a throw route, unless an earlier protect or
        discard entry overlaps it (the kernel's longest match would then contradict the SPD
        order); such packets still reach the TUN and are re-injected with the bypass mark.
        """
        into: set[str] = set()
        throw: set[str] = set()
        earlier: list[SpdEntry] = []
        for c in self._out:
            e = c.entry
            s = e.selector
            if e.action in (Action.PROTECT, Action.DISCARD):
                into.add(str(s.remote_prefix))
                earlier.append(e)
            elif s.protocol is None and s.local_ports.is_any and s.remote_ports.is_any and \
                    not any(x.selector.remote_prefix.overlaps(s.remote_prefix)
                            for x in earlier):  # type: ignore[arg-type]
                throw.add(str(s.remote_prefix))
        return into, throw - into

    def route_sources(self) -> dict[str, str]:
        """Source address for each prefix routed into the TUN, where the SPD implies one:
        when every outbound protect entry for the prefix protects a single local address
        (host-to-host, transport mode), this NSF's own traffic to it must leave from that
        address, or the SA would carry packets its peer's selector refuses (issue 24.3)."""
        srcs: dict[str, set[str]] = {}
        for c in self._out:
            e = c.entry
            if e.action is not Action.PROTECT:
                continue
            lp = e.selector.local_prefix
            host = str(lp.network_address) if lp.num_addresses == 1 else ""
            srcs.setdefault(str(e.selector.remote_prefix), set()).add(host)
        return {p: next(iter(h)) for p, h in srcs.items() if len(h) == 1 and "" not in h}
