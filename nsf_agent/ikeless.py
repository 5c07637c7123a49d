"""One translation of the RFC 9061 ietf-i2nsf-ikeless tree into backend-neutral SPD and SAD
entries, shared by the kernel (xfrm) and the userspace ESP appliers.

RFC 9061 describes SAD entries from the NSF's point of view (tunnel local/remote, traffic
selector local/remote) and does not store a direction; an SA's direction is that of the SPD
entry carrying the same non-zero `reqid`. Outer addresses follow: an outbound SA goes
local → remote, an inbound one remote → local.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.i2nsf.algorithms import ENCRYPTION, INTEGRITY, EncAlg, IntegAlg
from netconf_core.i2nsf.namespaces import IKELESS_NS
from netconf_core.i2nsf.types import Direction, IpAddr, IpNet, PortRange

NS = IKELESS_NS
Q = f"{{{NS}}}"


@dataclass(frozen=True)
class Selector:
    local_prefix: IpNet
    remote_prefix: IpNet
    protocol: int | None  # None: any
    local_ports: tuple[PortRange, ...] = ()
    remote_ports: tuple[PortRange, ...] = ()
    # str() of the prefixes when parse() made them ("" otherwise): formatting an ip_network
    # costs a microsecond, and the kernel translation of 10,000 entries needs the text.
    local_text: str = field(default="", compare=False, repr=False)
    remote_text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Tunnel:
    local: IpAddr
    remote: IpAddr
    df_bit: str = "clear"
    bypass_dscp: bool = True
    # str() of the addresses when parse() made them ("" otherwise), as in Selector.
    local_text: str = field(default="", compare=False, repr=False)
    remote_text: str = field(default="", compare=False, repr=False)


@dataclass(frozen=True)
class Lifetime:
    """0 means no limit, as in RFC 9061."""

    time: int = 0
    bytes: int = 0
    packets: int = 0
    idle: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.time or self.bytes or self.packets or self.idle)


@dataclass(frozen=True)
class Encap:
    """UDP (RFC 3948) or TCP (RFC 8229) encapsulation of ESP."""

    kind: Literal["espinudp", "espintcp"]
    sport: int = 4500
    dport: int = 4500
    oaddr: tuple[IpAddr, ...] = ()


@dataclass(frozen=True)
class SpdEntry:
    name: str
    index: int  # position in the ordered-by user list: earlier entries win
    direction: Direction
    reqid: int
    selector: Selector
    action: Literal["protect", "bypass", "discard"]
    mode: Literal["transport", "tunnel"] = "transport"
    protocol: str = "esp"
    ext_seq_num: bool = True
    anti_replay_window: int = 64
    tunnel: Tunnel | None = None
    encryption: tuple[int, ...] = ()
    integrity: tuple[int, ...] = ()


@dataclass(frozen=True)
class SadEntry:
    name: str
    reqid: int
    spi: int
    direction: Direction
    src: IpAddr  # outer source address on the wire
    dst: IpAddr
    selector: Selector
    mode: Literal["transport", "tunnel"]
    protocol: str
    ext_seq_num: bool
    seq_overflow: bool
    anti_replay_window: int
    encryption: EncAlg | None
    enc_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)
    integrity: IntegAlg | None
    integ_key: bytes = field(repr=False)
    hard: Lifetime
    soft: Lifetime
    soft_action: str
    tunnel: Tunnel | None
    encap: Encap | None


@dataclass(frozen=True)
class EntryMemo:
    """Each list entry's XML as `parse` saw it (inner content, keyed per list, under the
    serialized head of its container), so that `parse(data, base=...)` can reuse the
    translation of every entry whose XML is unchanged."""

    spd_head: bytes = b""
    spd: dict[bytes, SpdEntry] = field(default_factory=dict)
    sad_head: bytes = b""
    sad: dict[bytes, SadEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class IkelessConfig:
    spd: tuple[SpdEntry, ...] = ()
    sad: tuple[SadEntry, ...] = ()
    memo: EntryMemo | None = field(default=None, compare=False, repr=False)

    def spd_by_name(self) -> dict[str, SpdEntry]:
        return {e.name: e for e in self.spd}

    def sad_by_name(self) -> dict[str, SadEntry]:
        return {e.name: e for e in self.sad}


@dataclass
class IkelessChanges:
    """Entries to remove, add and replace (by name) to go from one config to another."""

    spd_removed: list[SpdEntry] = field(default_factory=list)
    spd_added: list[SpdEntry] = field(default_factory=list)
    spd_changed: list[tuple[SpdEntry, SpdEntry]] = field(default_factory=list)
    sad_removed: list[SadEntry] = field(default_factory=list)
    sad_added: list[SadEntry] = field(default_factory=list)
    sad_changed: list[tuple[SadEntry, SadEntry]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(
            (self.spd_removed, self.spd_added, self.spd_changed,
             self.sad_removed, self.sad_added, self.sad_changed)
        )


def diff(old: IkelessConfig, new: IkelessConfig) -> IkelessChanges:
    ch = IkelessChanges()
    o, n = old.spd_by_name(), new.spd_by_name()
    ch.spd_removed = [e for k, e in o.items() if k not in n]
    ch.spd_added = [e for k, e in n.items() if k not in o]
    ch.spd_changed = [(o[k], e) for k, e in n.items() if k in o and o[k] != e]
    os_, ns_ = old.sad_by_name(), new.sad_by_name()
    ch.sad_removed = [e for k, e in os_.items() if k not in ns_]
    ch.sad_added = [e for k, e in ns_.items() if k not in os_]
    ch.sad_changed = [(os_[k], e) for k, e in ns_.items() if k in os_ and os_[k] != e]
    return ch


# ---- parsing --------------------------------------------------------------------------------
#
# parse() runs on the commit path of every NETCONF edit: a 10,000-entry SPD has to translate
# in tens of milliseconds, and a one-entry change in it in a few. Hence one pass over each
# element's children compared with precomputed Clark-notation tags (lxml's find/findtext go
# through ElementPath, about a microsecond per call), addresses and prefixes parsed once per
# distinct string, and, given the previous translation (`base`), the reuse of every entry
# whose XML is unchanged. libyang has validated the tree (or is validating it concurrently, in
# which case the result is discarded if it fails): each leaf occurs at most once.

_ROOT = Q + "ipsec-ikeless"
_SPD, _SPD_ENTRY, _SAD, _SAD_ENTRY = Q + "spd", Q + "spd-entry", Q + "sad", Q + "sad-entry"
_NAME, _DIRECTION, _REQID = Q + "name", Q + "direction", Q + "reqid"
_POLICY_CFG, _SA_CFG_SAD = Q + "ipsec-policy-config", Q + "ipsec-sa-config"
_TS, _PINFO, _ARW = Q + "traffic-selector", Q + "processing-info", Q + "anti-replay-window-size"
_ACTION, _SA_CFG, _MODE = Q + "action", Q + "ipsec-sa-cfg", Q + "mode"
_PROTO_PARAMS, _ESN, _SEQ_OVERFLOW = (
    Q + "protocol-parameters", Q + "ext-seq-num", Q + "seq-overflow")
_TUNNEL, _ESP_ALGS, _ENCRYPTION, _INTEGRITY = (
    Q + "tunnel", Q + "esp-algorithms", Q + "encryption", Q + "integrity")
_ALG_TYPE, _LOCAL, _REMOTE, _DF_BIT, _BYPASS_DSCP = (
    Q + "algorithm-type", Q + "local", Q + "remote", Q + "df-bit", Q + "bypass-dscp")
_LOCAL_PREFIX, _REMOTE_PREFIX, _INNER_PROTO = (
    Q + "local-prefix", Q + "remote-prefix", Q + "inner-protocol")
_LOCAL_PORTS, _REMOTE_PORTS, _START, _END = (
    Q + "local-ports", Q + "remote-ports", Q + "start", Q + "end")
_SPI, _ESP_SA, _HARD, _SOFT, _ENCAP = (
    Q + "spi", Q + "esp-sa", Q + "sa-lifetime-hard", Q + "sa-lifetime-soft",
    Q + "encapsulation-type")
_ENC_ALG, _INT_ALG, _KEY, _IV = (
    Q + "encryption-algorithm", Q + "integrity-algorithm", Q + "key", Q + "iv")
_ESPENCAP, _SPORT, _DPORT, _OADDR = Q + "espencap", Q + "sport", Q + "dport", Q + "oaddr"
_TIME, _BYTES, _PACKETS, _IDLE = Q + "time", Q + "bytes", Q + "packets", Q + "idle"

_SPD_PATH = "/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry[name='{}']"
_SAD_PATH = "/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry[name='{}']"


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while translating a large tree. Building tens of
    thousands of long-lived objects makes it rescan the whole heap several times over (a
    third of a cold 10,000-entry commit) to find no garbage; reference counting still frees
    everything meanwhile. Nested or concurrent use only ever leaves it enabled."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _text(el: etree._Element) -> str:
    """A leaf's value as findtext(...).strip() gives it ("" for an empty leaf)."""
    v = el.text
    return v.strip() if v else ""


def _hex(v: str | None) -> bytes:
    if not v:
        return b""
    return bytes.fromhex(v.replace(":", ""))


# Large SPDs repeat the same few prefixes, ports and tunnel endpoints: parse each string once.
@functools.lru_cache(maxsize=65536)
def _prefix(s: str) -> tuple[IpNet, str]:
    net = ipaddress.ip_network(s, strict=False)
    return net, str(net)


@functools.lru_cache(maxsize=65536)
def _address(s: str) -> tuple[IpAddr, str]:
    addr = ipaddress.ip_address(s)
    return addr, str(addr)


@functools.lru_cache(maxsize=4096)
def _port_range(start: str | None, end: str | None) -> PortRange:
    return PortRange(int(start or 0), int(end or 0))


@functools.lru_cache(maxsize=4096)
def _tunnel_of(local: str, remote: str, df_bit: str, bypass_dscp: bool) -> Tunnel:
    la, lt = _address(local)
    ra, rt = _address(remote)
    return Tunnel(la, ra, df_bit, bypass_dscp, lt, rt)


def _ports(p: etree._Element) -> PortRange:
    start = end = None
    for c in p:
        t = c.tag
        if t == _START:
            start = c.text
        elif t == _END:
            end = c.text
    return _port_range(start, end)


def _selector(sel: etree._Element | None, path: str) -> Selector:
    if sel is None:
        raise RpcError("application", "data-missing", "traffic-selector is missing", path=path)
    lp = rp = proto = None
    lports: list[PortRange] = []
    rports: list[PortRange] = []
    for c in sel:  # (leaf texts inlined: this loop runs for every entry)
        t = c.tag
        if t == _LOCAL_PREFIX:
            lp = c.text
        elif t == _REMOTE_PREFIX:
            rp = c.text
        elif t == _INNER_PROTO:
            proto = (c.text or "").strip()
        elif t == _REMOTE_PORTS:
            rports.append(_ports(c))
        elif t == _LOCAL_PORTS:
            lports.append(_ports(c))
    lnet, ltext = _prefix(lp.strip() if lp else "")
    rnet, rtext = _prefix(rp.strip() if rp else "")
    return Selector(
        lnet, rnet, None if proto is None or proto == "any" else int(proto or 0),
        tuple(lports), tuple(rports), ltext, rtext,
    )


def _tunnel(t: etree._Element | None) -> Tunnel | None:
    if t is None:
        return None
    local = remote = df_bit = bypass = None
    for c in t:
        tag = c.tag
        if tag == _LOCAL:
            local = _text(c)
        elif tag == _REMOTE:
            remote = _text(c)
        elif tag == _DF_BIT:
            df_bit = _text(c)
        elif tag == _BYPASS_DSCP:
            bypass = _text(c)
    if local is None:
        return None
    return _tunnel_of(local, remote or "", df_bit or "clear",
                      True if bypass is None else bypass == "true")


def _lifetime(el: etree._Element | None) -> tuple[Lifetime, str | None]:
    """The lifetime and the soft one's `action` leaf."""
    if el is None:
        return _NO_LIMIT, None
    time = bytes_ = packets = idle = action = None
    for c in el:
        t = c.tag
        if t == _TIME:
            time = _text(c)
        elif t == _BYTES:
            bytes_ = _text(c)
        elif t == _PACKETS:
            packets = _text(c)
        elif t == _IDLE:
            idle = _text(c)
        elif t == _ACTION:
            action = _text(c)
    return Lifetime(0 if time is None else int(time), 0 if bytes_ is None else int(bytes_),
                    0 if packets is None else int(packets),
                    0 if idle is None else int(idle)), action


_NO_LIMIT = Lifetime()


def _esp_algorithms(algs: etree._Element) -> tuple[tuple[int, ...], tuple[int, ...]]:
    enc: list[int] = []
    integ: list[int] = []
    for c in algs:
        t = c.tag
        if t == _ENCRYPTION:
            at = None
            for x in c:
                if x.tag == _ALG_TYPE:
                    at = x.text
                    break
            enc.append(int(at or 0))
        elif t == _INTEGRITY:
            integ.append(int(c.text or 0))
    return tuple(enc), tuple(integ)


# What processing-info says: action, mode, tunnel, protocol, ext-seq-num, encryption and
# integrity algorithms. SPD entries share it far more than the rest (one per pair of
# gateways), so the fast path below looks it up by its XML.
Processing = tuple[str, str, Tunnel | None, str, bool, tuple[int, ...], tuple[int, ...]]
_NO_PROCESSING: Processing = ("discard", "transport", None, "esp", True, (), ())


def _processing(pinfo: etree._Element | None) -> Processing:
    if pinfo is None:
        return _NO_PROCESSING
    action = mode = proto = esn = None
    sa = tun = None
    enc: tuple[int, ...] = ()
    integ: tuple[int, ...] = ()
    for c in pinfo:
        t = c.tag
        if t == _ACTION:
            action = _text(c)
        elif t == _SA_CFG:
            sa = c
    if sa is not None:
        for c in sa:
            t = c.tag
            if t == _MODE:
                mode = _text(c)
            elif t == _TUNNEL:
                tun = c
            elif t == _ESP_ALGS:
                enc, integ = _esp_algorithms(c)
            elif t == _PROTO_PARAMS:
                proto = _text(c)
            elif t == _ESN:
                esn = _text(c)
    return (action or "discard", mode or "transport", _tunnel(tun), proto or "esp",
            True if esn is None else esn == "true", enc, integ)


def _spd(name: str, index: int, direction: str | bytes | None, reqid: str | bytes | None,
         arw: str | bytes | None, proc: Processing, selector: Selector) -> SpdEntry:
    action, mode, tunnel, proto, esn, enc, integ = proc
    return SpdEntry(
        name,
        index,
        "inbound" if direction in ("inbound", b"inbound") else "outbound",
        0 if reqid is None else int(reqid),
        selector,
        action,  # type: ignore[arg-type]
        mode,  # type: ignore[arg-type]
        proto,
        esn,
        64 if arw is None else int(arw),
        tunnel,
        enc,
        integ,
    )


def _check_tunnel(name: str, proc: Processing) -> None:
    """(Made before the traffic selector is read, as parse always has.)"""
    if proc[0] == "protect" and proc[1] == "tunnel" and proc[2] is None:
        raise RpcError("application", "data-missing",
                       f"SPD entry {name!r}: tunnel mode needs tunnel local/remote",
                       path=_SPD_PATH.format(name)
                       + "/ipsec-policy-config/processing-info/ipsec-sa-cfg")


def _spd_entry(ent: etree._Element, index: int) -> SpdEntry:
    """An spd-entry element, read through lxml (any form of XML)."""
    name = direction = reqid = arw = None
    cfg = ts = pinfo = None
    for c in ent:
        t = c.tag
        if t == _NAME:
            name = _text(c)
        elif t == _DIRECTION:
            direction = _text(c)
        elif t == _REQID:
            reqid = _text(c)
        elif t == _POLICY_CFG:
            cfg = c
    if cfg is not None:
        for c in cfg:
            t = c.tag
            if t == _TS:
                ts = c
            elif t == _PINFO:
                pinfo = c
            elif t == _ARW:
                arw = _text(c)
    name = name or ""
    proc = _processing(pinfo)
    _check_tunnel(name, proc)
    return _spd(name, index, direction, reqid, arw, proc, _selector(ts, _SPD_PATH.format(name)))


# The fast path: an spd-entry's inner XML as libyang prints it (schema order, no attributes,
# comments or entities in these leaves), matched in one go. Anything else does not match
# and takes the lxml path, which gives the same result for the same tree.
def _leaf(name: bytes) -> bytes:
    return b"(?:<" + name + rb">([^<&]*)</" + name + b">)?"


def _ranges(name: bytes) -> bytes:
    return (rb"((?:<" + name + rb"><start>[^<&]*</start><end>[^<&]*</end></" + name
            + rb">)*)")


_SPD_RX = re.compile(
    rb"<name>([^<&]*)</name>" + _leaf(b"direction") + _leaf(b"reqid")
    + rb"(?:<ipsec-policy-config>" + _leaf(b"anti-replay-window-size")
    + rb"(?:<traffic-selector>()" + _leaf(b"local-prefix") + _leaf(b"remote-prefix")
    + _leaf(b"inner-protocol") + _ranges(b"local-ports") + _ranges(b"remote-ports")
    + rb"</traffic-selector>)?(<processing-info>.*</processing-info>)?</ipsec-policy-config>)?",
    re.DOTALL,
)
_RANGE_RX = re.compile(rb"<start>([^<&]*)</start><end>([^<&]*)</end>")


@functools.lru_cache(maxsize=4096)
def _range_run(run: bytes) -> tuple[PortRange, ...]:
    return tuple(_port_range(a, b) for a, b in _RANGE_RX.findall(run))


@functools.lru_cache(maxsize=65536)
def _prefix_b(s: bytes | None) -> tuple[IpNet, str]:
    return _prefix(s.decode().strip() if s else "")


# A frozen dataclass's __init__ sets each field through object.__setattr__: for SpdEntry that
# is as much as the rest of reading it. The fast path sets the instance dict in one go (the
# tests check that the result equals what the lxml path builds with the constructors).
_new = object.__new__
_set = object.__setattr__


def _spd_fast(key: bytes, ents: list[etree._Element], index: int,
              procs: dict[bytes, Processing]) -> SpdEntry | None:
    """The entry from its inner XML (see _SPD_RX), or None if it has another form.
    `procs` maps processing-info XML to its meaning, filled as entries are parsed."""
    m = _SPD_RX.fullmatch(key)
    if m is None:
        return None
    name_b, direction, reqid, arw, ts, lp, rp, proto, lports, rports, pinfo = m.groups()
    if pinfo is None:
        proc = _NO_PROCESSING
    else:
        got = procs.get(pinfo)
        if got is None:
            cfg = next(c for c in ents[index] if c.tag == _POLICY_CFG)
            got = procs[pinfo] = _processing(next(c for c in cfg if c.tag == _PINFO))
        proc = got

    name = name_b.decode().strip()
    action, mode, tunnel, protocol, esn, enc, integ = proc
    if action == "protect" and mode == "tunnel" and tunnel is None:
        _check_tunnel(name, proc)
    if ts is None:
        raise RpcError("application", "data-missing", "traffic-selector is missing",
                       path=_SPD_PATH.format(name))
    lnet, ltext = _prefix_b(lp)
    rnet, rtext = _prefix_b(rp)
    p = proto.strip() if proto is not None else b"any"
    # (The frozen dataclasses' own __init__ would double the cost of this function.)
    sel = _new(Selector)
    _set(sel, "__dict__", {
        "local_prefix": lnet, "remote_prefix": rnet,
        "protocol": None if p == b"any" else int(p or 0),
        "local_ports": _range_run(lports) if lports else (),
        "remote_ports": _range_run(rports) if rports else (),
        "local_text": ltext, "remote_text": rtext,
    })
    e = _new(SpdEntry)
    _set(e, "__dict__", {
        "name": name, "index": index,
        "direction": ("inbound" if direction is not None and direction.strip() == b"inbound"
                      else "outbound"),
        "reqid": 0 if reqid is None else int(reqid),
        "selector": sel, "action": action, "mode": mode, "protocol": protocol,
        "ext_seq_num": esn, "anti_replay_window": 64 if arw is None else int(arw),
        "tunnel": tunnel, "encryption": enc, "integrity": integ,
    })
    return e


def _sad_entry(ent: etree._Element, directions: dict[int, set[Direction]]) -> SadEntry:
    name = reqid_s = None
    cfg = None
    for c in ent:
        t = c.tag
        if t == _NAME:
            name = _text(c)
        elif t == _REQID:
            reqid_s = _text(c)
        elif t == _SA_CFG_SAD:
            cfg = c
    name = name or ""
    path = _SAD_PATH.format(name)
    if cfg is None:
        raise RpcError("application", "data-missing",
                       f"SAD entry {name!r} has no ipsec-sa-config", path=path)
    reqid = 0 if reqid_s is None else int(reqid_s)
    dirs = directions.get(reqid, set())
    if len(dirs) != 1:
        why = ("no SPD entry has" if not dirs
               else "both an inbound and an outbound SPD entry have")
        raise RpcError(
            "application", "invalid-value",
            f"SAD entry {name!r}: {why} reqid {reqid}; RFC 9061 SAs take their direction "
            "from the SPD entry with the same reqid",
            path=path + "/reqid", app_tag="sa-direction-unknown",
        )
    direction = next(iter(dirs))
    spi = esn = seq_overflow = arw = mode = proto = None
    ts = tun = esp = hard = soft = et = None
    for c in cfg:
        t = c.tag
        if t == _SPI:
            spi = _text(c)
        elif t == _MODE:
            mode = _text(c)
        elif t == _TS:
            ts = c
        elif t == _TUNNEL:
            tun = c
        elif t == _ESP_SA:
            esp = c
        elif t == _HARD:
            hard = c
        elif t == _SOFT:
            soft = c
        elif t == _ENCAP:
            et = c
        elif t == _ESN:
            esn = _text(c)
        elif t == _SEQ_OVERFLOW:
            seq_overflow = _text(c)
        elif t == _ARW:
            arw = _text(c)
        elif t == _PROTO_PARAMS:
            proto = _text(c)
    mode = mode or "transport"
    selector = _selector(ts, path)
    tunnel = _tunnel(tun)
    local: IpAddr
    remote: IpAddr
    if mode == "tunnel":
        if tunnel is None:
            raise RpcError("application", "data-missing",
                           f"SAD entry {name!r}: tunnel mode needs tunnel local/remote",
                           path=path + "/ipsec-sa-config/tunnel")
        local, remote = tunnel.local, tunnel.remote
    else:
        local = selector.local_prefix.network_address
        remote = selector.remote_prefix.network_address
    src, dst = (local, remote) if direction == "outbound" else (remote, local)
    enc_no = enc_key_s = iv_s = int_no = integ_key_s = None
    if esp is not None:
        for c in esp:
            t = c.tag
            if t == _ENCRYPTION:
                for x in c:
                    tx = x.tag
                    if tx == _ENC_ALG:
                        enc_no = _text(x)
                    elif tx == _KEY:
                        enc_key_s = _text(x)
                    elif tx == _IV:
                        iv_s = _text(x)
            elif t == _INTEGRITY:
                for x in c:
                    tx = x.tag
                    if tx == _INT_ALG:
                        int_no = _text(x)
                    elif tx == _KEY:
                        integ_key_s = _text(x)
    enc = _enc_alg(enc_no, name, path)
    integ = _integ_alg(int_no, name, path)
    enc_key = _hex(enc_key_s)
    integ_key = _hex(integ_key_s)
    _check_keys(name, path, enc, enc_key, integ, integ_key)
    encap = None if et is None else _encap(et)
    hard_lt, _ = _lifetime(hard)
    soft_lt, soft_action = _lifetime(soft)
    e = _new(SadEntry)  # (see _spd_fast: the constructor would cost as much again)
    _set(e, "__dict__", {
        "name": name,
        "reqid": reqid,
        "spi": 0 if spi is None else int(spi),
        "direction": direction,
        "src": src,
        "dst": dst,
        "selector": selector,
        "mode": mode,
        "protocol": proto or "esp",
        "ext_seq_num": esn == "true",  # YANG default: false
        "seq_overflow": False if seq_overflow is None else seq_overflow == "true",
        "anti_replay_window": 64 if arw is None else int(arw),
        "encryption": enc,
        "enc_key": enc_key,
        "iv": _hex(iv_s),
        "integrity": integ,
        "integ_key": integ_key,
        "hard": hard_lt,
        "soft": soft_lt,
        "soft_action": soft_action or "replace",
        "tunnel": tunnel,
        "encap": encap,
    })
    return e


def _encap(et: etree._Element) -> Encap | None:
    kind = sport = dport = None
    oaddr: list[IpAddr] = []
    for c in et:
        t = c.tag
        if t == _ESPENCAP:
            kind = _text(c)
        elif t == _SPORT:
            sport = _text(c)
        elif t == _DPORT:
            dport = _text(c)
        elif t == _OADDR and c.text:
            oaddr.append(ipaddress.ip_address(c.text.strip()))
    if kind not in ("espinudp", "espintcp"):
        return None
    return Encap(
        kind=kind,  # type: ignore[arg-type]
        sport=4500 if sport is None else int(sport),
        dport=4500 if dport is None else int(dport),
        oaddr=tuple(oaddr),
    )


def _split(container: etree._Element, n: int, local: bytes) -> tuple[bytes, list[bytes]] | None:
    """The container's serialized head and its n children's inner XML, from one
    serialization of the whole container (a third cheaper than one per entry), or None
    unless the text is exactly n `<local>...</local>` siblings with no other `</local>`:
    then every child is such an element, none nests another, and the split is exact."""
    body = etree.tostring(container, encoding="utf-8", with_tail=False)
    start = body.find(b">") + 1  # (">" in attribute values is escaped)
    end = body.rfind(b"</")
    open_, close = b"<" + local + b">", b"</" + local + b">"
    if (start <= 0 or end < start or not body.startswith(open_, start)
            or not body.endswith(close, start, end) or body.count(close, start, end) != n):
        return None
    inner = body.split(close + open_)  # (the head and the container's end tag hold neither)
    if len(inner) != n:
        return None
    inner[0] = inner[0][start + len(open_):]
    inner[-1] = inner[-1][:len(inner[-1]) - (len(body) - end) - len(close)]
    return body[:start], inner


def _entries(root: etree._Element, ctag: str, etag: str, local: bytes,
             ) -> tuple[bytes, list[bytes], list[etree._Element]]:
    """(head, keys, entries): the list entries under `root`'s `ctag` container(s) and a key
    per entry that is equal for two entries exactly when their XML is (under equal heads)."""
    conts = [c for c in root if c.tag == ctag]
    if len(conts) == 1:
        ents = list(conts[0])
        if not ents:
            return b"", [], []
        split = _split(conts[0], len(ents), local)
        if split is not None:
            return split[0], split[1], ents
    # Anything unusual (comments, prefixes, attributes): each entry serialized on its own,
    # which carries its namespace declarations, so no head is needed.
    ents = [e for c in conts for e in c.iterchildren(etag)]
    return b"", [etree.tostring(e, with_tail=False) for e in ents], ents


def parse(data: etree._Element, base: IkelessConfig | None = None) -> IkelessConfig:
    """`data` is a `<data>` root (or any element holding `<ipsec-ikeless>`), already
    validated by libyang. Semantic problems libyang cannot see raise RpcError.

    `base` is an earlier result of parse (typically the running configuration's): entries
    whose XML is the same as there are returned as the very same objects, without being
    translated again, so that a small change to a large tree costs little. `base` is only
    read, so a parse for a commit that is later rejected changes nothing."""
    if data.tag == _ROOT:
        root: etree._Element | None = data
    else:
        root = next((c for c in data if c.tag == _ROOT), None)
    if root is None:
        return IkelessConfig()
    memo = base.memo if base is not None else None
    spd_head, spd_keys, spd_ents = _entries(root, _SPD, _SPD_ENTRY, b"spd-entry")
    known_spd = memo.spd if memo is not None and memo.spd_head == spd_head else {}
    spd: list[SpdEntry] = []
    add = spd.append
    known = known_spd.get
    directions: dict[int, set[Direction]] = {}
    procs: dict[bytes, Processing] = {}
    for index, key in enumerate(spd_keys):
        e = known(key)
        if e is None:
            e = ((spd_head and _spd_fast(key, spd_ents, index, procs))
                 or _spd_entry(spd_ents[index], index))
        elif e.index != index:  # moved: same entry, another priority
            e = dataclasses.replace(e, index=index)
        add(e)
    spd_memo = dict(zip(spd_keys, spd, strict=True))
    sad_head, sad_keys, sad_ents = _entries(root, _SAD, _SAD_ENTRY, b"sad-entry")
    if sad_ents:
        for e in spd:
            if e.reqid:
                dirs = directions.get(e.reqid)
                if dirs is None:
                    directions[e.reqid] = {e.direction}
                else:
                    dirs.add(e.direction)
    known_sad = memo.sad if memo is not None and memo.sad_head == sad_head else {}
    sad: list[SadEntry] = []
    sad_memo: dict[bytes, SadEntry] = {}
    for key, ent in zip(sad_keys, sad_ents, strict=True):
        s = known_sad.get(key)
        # An SA's direction comes from the SPD, which may have changed around it.
        if s is None or directions.get(s.reqid) != {s.direction}:
            s = _sad_entry(ent, directions)
        sad.append(s)
        sad_memo[key] = s
    sad_t = tuple(sad)
    _check_unique_spi(sad_t)
    return IkelessConfig(spd=tuple(spd), sad=sad_t,
                         memo=EntryMemo(spd_head, spd_memo, sad_head, sad_memo))


def _enc_alg(no: str | None, name: str, path: str) -> EncAlg | None:
    if no is None:
        return None
    alg = ENCRYPTION.get(int(no))
    if alg is None:
        raise RpcError("application", "invalid-value",
                       f"SAD entry {name!r}: encryption algorithm {no} is not supported "
                       f"(supported: {sorted(ENCRYPTION)})",
                       path=path + "/ipsec-sa-config/esp-sa/encryption/encryption-algorithm")
    return alg


def _integ_alg(no: str | None, name: str, path: str) -> IntegAlg | None:
    if no is None or no == "0":
        return None
    alg = INTEGRITY.get(int(no))
    if alg is None:
        raise RpcError("application", "invalid-value",
                       f"SAD entry {name!r}: integrity algorithm {no} is not supported "
                       f"(supported: {sorted(INTEGRITY)})",
                       path=path + "/ipsec-sa-config/esp-sa/integrity/integrity-algorithm")
    return alg


def _check_keys(name: str, path: str, enc: EncAlg | None, enc_key: bytes,
                integ: IntegAlg | None, integ_key: bytes) -> None:
    base = path + "/ipsec-sa-config/esp-sa"
    if enc is not None and len(enc_key) not in enc.key_bytes:
        raise RpcError(
            "application", "invalid-value",
            f"SAD entry {name!r}: {enc.name} needs a key of "
            f"{' or '.join(str(n) for n in enc.key_bytes)} bytes"
            + (" (salt included)" if enc.salt_bytes else "") + f", got {len(enc_key)}",
            path=base + "/encryption/key",
        )
    if enc is not None and enc.aead and integ is not None:
        raise RpcError("application", "invalid-value",
                       f"SAD entry {name!r}: {enc.name} is an AEAD cipher; leave integrity out",
                       path=base + "/integrity")
    if enc is not None and not enc.aead and integ is None and enc.number != 11:
        raise RpcError("application", "invalid-value",
                       f"SAD entry {name!r}: {enc.name} needs an integrity algorithm",
                       path=base + "/integrity")
    if integ is not None and len(integ_key) != integ.key_bytes:
        raise RpcError("application", "invalid-value",
                       f"SAD entry {name!r}: {integ.name} needs a {integ.key_bytes}-byte key, "
                       f"got {len(integ_key)}", path=base + "/integrity/key")


def _check_unique_spi(sad: tuple[SadEntry, ...]) -> None:
    seen: dict[tuple[int, int, int, str], str] = {}
    for e in sad:
        # (version and int: an ip_address hashes through hex(), slow for 10,000 SAs)
        k = (e.dst.version, int(e.dst), e.spi, e.protocol)
        if k in seen:
            raise RpcError(
                "application", "operation-failed",
                f"SAD entries {seen[k]!r} and {e.name!r} share destination {e.dst}, "
                f"SPI {e.spi} and protocol {e.protocol}",
                path=f"/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry[name='{e.name}']",
                app_tag="data-not-unique",
            )
        seen[k] = e.name


def check_transport_hosts(e: SadEntry, path: str) -> None:
    """Transport mode protects traffic between two hosts (RFC 4301 4.1): the SA's endpoints
    are its traffic selector's addresses, so both prefixes must be single addresses."""
    sel = e.selector
    if e.mode == "transport" and (sel.local_prefix.num_addresses != 1
                                  or sel.remote_prefix.num_addresses != 1):
        raise RpcError("application", "invalid-value",
                       f"SAD entry {e.name!r}: transport mode protects traffic between two "
                       f"hosts: local-prefix and remote-prefix must be single addresses "
                       f"(/32 or /128), not {sel.local_prefix} and {sel.remote_prefix}; "
                       "use tunnel mode between networks",
                       path=path + "/ipsec-sa-config/traffic-selector")
