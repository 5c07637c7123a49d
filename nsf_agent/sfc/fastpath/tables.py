"""Turn one applied SFC table generation (`nsf_agent.sfc.model.SfcConfig`, the same object
the userspace path gets) into the fast path's map entries (pure code).

What the kernel program can do exactly as the userspace path does goes in; the rest is
left to the userspace path and reported (`Compiled.left`):
- classifier rules are taken in order (order, then name) and the list is cut at the
  first rule the program cannot carry out (MD type 2, IPv6 first hop, ...), so a packet
  whose first matching rule is not in the fast path never matches a later one there;
  rules with IPv6 prefixes are skipped (they never match an IPv4 packet);
- like the userspace classifier, the program classifies only on the interfaces some rule
  names as its ingress interface, only unicast frames to us, and not packets to one of
  this node's addresses;
- SFF entries with GRE next hops over IPv4 (one, or up to 8 of equal weight, picked by the
  userspace path's rendezvous hash, which for equal weights needs no floating point), or
  "terminate", go in; groups of unequal weights stay in userspace.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nsf_agent.sfc.model import SfcConfig

MAX_RULES = 256
RULE_WORDS = MAX_RULES // 64
MAX_SFF = 8192
MAX_COUNTERS = 32768  # > 2 generations of MAX_RULES + MAX_SFF (indices are quarantined)

KIND_FORWARD = 1
KIND_TERMINATE = 2
FORWARD_KINDS = ("sff", "sf", "proxy")

ANY4 = ipaddress.IPv4Network("0.0.0.0/0")

# C struct layouts (fastpath.bpf.c), little-endian host, network-order fields as bytes.
SLOT_CFG = struct.Struct("<I4s")  # gen, local
RULE_BITS = struct.Struct(f"<{RULE_WORDS}Q")
RULE = struct.Struct("<I I 4s 4s HHHH BBBB B3x")
IF_KEY = struct.Struct("<II")
ADDR_KEY = struct.Struct("<I4s")
SFF_KEY = struct.Struct("<I4s")
MAX_HOPS = 8
SFF_VAL = struct.Struct("<IIII" + "4s" * MAX_HOPS + "I" * MAX_HOPS + "Q" * MAX_HOPS)
COUNTER = struct.Struct("<QQ")
U32 = struct.Struct("<I")


def lpm_key(slot: int, net: ipaddress.IPv4Network) -> bytes:
    return (
        struct.pack("<I", 32 + net.prefixlen) + struct.pack(">I", slot) + net.network_address.packed
    )


def sp_word(spi: int, si: int) -> bytes:
    return struct.pack(">I", (spi << 8) | si)


class _Counters(Protocol):
    def index(self, key: tuple) -> int: ...


class CounterAllocator:
    """Stable counter slots: a rule or (SPI, SI) entry keeps its slot across generations
    while it is unchanged (a changed one starts from zero, like the userspace path's).

    A slot freed by generation N is reused only from generation N + 2 on, so it is never
    shared by the two generations a packet in flight may see.
    """

    def __init__(self, size: int = MAX_COUNTERS) -> None:
        self._slots: dict[tuple, int] = {}
        self._free = list(range(size - 1, -1, -1))
        self._quarantine: list[int] = []
        self._used: set[tuple] = set()
        self.new: list[int] = []

    def begin(self) -> None:
        self._used = set()
        self.new = []

    def index(self, key: tuple) -> int:
        self._used.add(key)
        if key in self._slots:
            return self._slots[key]
        if not self._free:
            raise OverflowError("fast path counter slots exhausted")
        idx = self._free.pop()
        self._slots[key] = idx
        self.new.append(idx)
        return idx

    def commit(self) -> None:
        self._free.extend(self._quarantine)
        self._quarantine = [self._slots.pop(k) for k in list(self._slots) if k not in self._used]

    def abort(self) -> None:
        for k in [k for k, v in self._slots.items() if v in set(self.new)]:
            self._free.append(self._slots.pop(k))
        self.new = []

    def get(self, key: tuple) -> int | None:
        return self._slots.get(key)


# ---- output ----


@dataclass
class RuleEntry:
    name: str
    index: int  # bit / array position
    value: bytes


@dataclass
class Compiled:
    local: bytes  # 4 bytes, 0.0.0.0 when there is no forwarder
    rules: list[RuleEntry] = field(default_factory=list)
    cls_ifs: set[int] = field(default_factory=set)
    local_addrs: set[bytes] = field(default_factory=set)
    src_lpm: dict[ipaddress.IPv4Network, tuple[int, ...]] = field(default_factory=dict)
    dst_lpm: dict[ipaddress.IPv4Network, tuple[int, ...]] = field(default_factory=dict)
    sff: dict[bytes, bytes] = field(default_factory=dict)  # sp word -> SFF_VAL
    rule_counters: dict[str, int] = field(default_factory=dict)
    sff_counters: dict[tuple[int, int], int] = field(default_factory=dict)
    sff_hop_counters: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)  # what stays with the userspace path


def _v4net(p: str | None) -> ipaddress.IPv4Network | bool | None:
    """IPv4 network, None (wildcard) or False (an IPv6 prefix)."""
    if p is None:
        return None
    n = ipaddress.ip_network(p, strict=False)
    return n if isinstance(n, ipaddress.IPv4Network) else False


def _v4addr(a: str | None) -> ipaddress.IPv4Address | None:
    if a is None:
        return None
    ip = ipaddress.ip_address(a)
    return ip if isinstance(ip, ipaddress.IPv4Address) else None


def _bits(indices: Iterable[int]) -> bytes:
    words = [0] * RULE_WORDS
    for i in indices:
        words[i // 64] |= 1 << (i % 64)
    return RULE_BITS.pack(*words)


def bitmap(indices: Iterable[int]) -> bytes:
    return _bits(indices)


def compile_generation(
    cfg: SfcConfig,
    ifindex: Callable[[str], int | None],
    counters: _Counters,
    local_addrs: Iterable[str] = (),
) -> Compiled:
    local = _v4addr(cfg.locator) if cfg.locator else None
    out = Compiled(local=(local.packed if local else b"\0\0\0\0"))
    if cfg.locator and local is None:
        out.left.append(f"everything: locator {cfg.locator} is not IPv4")
        return out
    if local is None:
        if cfg.rules or cfg.table:
            out.left.append("everything: no locator")
        return out
    out.local_addrs = {a.packed for a in map(_v4addr, [*local_addrs, cfg.locator]) if a}
    for r in cfg.rules:
        if r.match.ingress:
            idx = ifindex(r.match.ingress)
            if idx:
                out.cls_ifs.add(idx)
    _compile_rules(cfg, local, ifindex, counters, out)
    _compile_sff(cfg, counters, out)
    return out


def _compile_rules(cfg, local, ifindex, counters, out: Compiled) -> None:
    rules = sorted(cfg.rules, key=lambda r: (r.order, r.name))
    taken: list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Network]] = []
    for pos, r in enumerate(rules):
        m = r.match
        reason = None
        src, dst = _v4net(m.src), _v4net(m.dst)
        if src is False or dst is False:
            out.left.append(f"rule {r.name}: IPv6 prefix (never matches IPv4 packets here)")
            continue
        hop = _v4addr(r.first_hop)
        ifx = 0
        if r.md_type != 1:
            reason = f"MD type {r.md_type} (the RSP trace TLV is built in userspace)"
        elif hop is None:
            reason = f"first hop {r.first_hop} is not IPv4"
        elif not 1 <= r.ttl <= 63:
            reason = f"NSH TTL {r.ttl} does not fit the 6-bit field"
        elif m.ingress:
            ifx = ifindex(m.ingress) or 0
            if not ifx:
                reason = f"ingress interface {m.ingress} does not exist"
        if reason is None and len(taken) >= MAX_RULES:
            reason = f"more than {MAX_RULES} rules"
        if reason is not None:
            out.left.append(f"rule {r.name} and the {len(rules) - pos - 1} after it: {reason}")
            break
        idx = len(taken)
        taken.append((src or ANY4, dst or ANY4))
        sp, dp = m.sport, m.dport
        ports = 0 if (sp.start, sp.end, dp.start, dp.end) == (0, 65535, 0, 65535) else 1
        # a counter lives as long as the rule is unchanged (as the userspace path's do)
        cnt = counters.index(("rule", r))
        out.rule_counters[r.name] = cnt
        value = RULE.pack(
            ifx,
            cnt,
            sp_word(r.spi, r.si),
            hop.packed,
            sp.start,
            sp.end,
            dp.start,
            dp.end,
            m.protocol or 0,
            0xFF if m.dscp is None else m.dscp,
            ports,
            1,
            r.ttl,
        )
        out.rules.append(RuleEntry(r.name, idx, value))
    for which, lpm in ((0, out.src_lpm), (1, out.dst_lpm)):
        prefixes = {t[which] for t in taken}
        for p in prefixes:
            lpm[p] = tuple(i for i, t in enumerate(taken) if p.subnet_of(t[which]))


def hop_salt(locator: str) -> int:
    """The userspace path's per-hop rendezvous salt (engine: _mix(crc32(str(locator))))."""
    from nsf_agent.sfc.engine import _mix

    return _mix(zlib.crc32(str(locator).encode()))


def _compile_sff(cfg, counters, out: Compiled) -> None:
    seen = 0
    for e in sorted(cfg.table, key=lambda e: (e.spi, -e.si)):
        key = (e.spi, e.si)
        hops = tuple(e.next_hops)
        reason = None
        if len(hops) == 1 and hops[0].kind == "terminate":
            kind = KIND_TERMINATE
        else:
            kind = KIND_FORWARD
            if len(hops) > MAX_HOPS:
                reason = f"{len(hops)} next hops (more than {MAX_HOPS})"
            elif len({h.weight for h in hops}) > 1:
                reason = "next hops of unequal weight (that balancing stays in userspace)"
            for h in hops:
                if reason is None and not (
                    h.kind in FORWARD_KINDS and h.transport == "gre" and _v4addr(h.locator)
                ):
                    reason = f"next hop {h.kind}/{h.transport} {h.locator}"
        if reason is None and seen >= MAX_SFF:
            reason = f"more than {MAX_SFF} entries"
        if reason is not None:
            out.left.append(f"sff ({e.spi}, {e.si}): {reason}")
            continue
        seen += 1
        cnt = counters.index(("sff", e.spi, e.si, hops))
        out.sff_counters[key] = cnt
        n = 0 if kind == KIND_TERMINATE else len(hops)
        addrs = [_v4addr(h.locator).packed for h in hops[:n]]
        hcs = [counters.index(("sff-hop", e.spi, e.si, hops, i)) for i in range(n)]
        salts = [hop_salt(h.locator) for h in hops[:n]]
        if n:
            out.sff_hop_counters[key] = hcs
        pad = MAX_HOPS - n
        out.sff[sp_word(e.spi, e.si)] = SFF_VAL.pack(
            kind,
            n,
            cnt,
            0,
            *addrs,
            *([b"\0" * 4] * pad),
            *hcs,
            *([0] * pad),
            *salts,
            *([0] * pad),
        )
