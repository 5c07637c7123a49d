"""Dataclasses for SPD and SAD entries, and their wire encoding.

These are what the appliers work with: plain values (address prefixes as strings,
enums for direction/mode/protocol), independent of netlink.  Each class knows how to
pack itself into the exact kernel structure (``pack*`` methods, one precompiled
``struct.Struct`` per structure, no intermediate dictionaries, because installing
10,000 entries must stay close to iproute2's speed) and how to build itself from a
message parsed by pyroute2 (``from_msg``/``from_dict``).
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from . import netlink as nl

_SEL_POL = struct.Struct("=16s16sHHHHHBBB3xiI" "8Q" "4Q" "IIBBBB4x")  # xfrm_userpolicy_info
_SEL = struct.Struct("=16s16sHHHHHBBB3xiI")
_TMPL = struct.Struct("=16sIB3x" "H2x16sIBBBxIII")
_SA_TAIL = struct.Struct("=16sIB3x16s" "8Q" "4Q" "3I" "IIHBBB7x")  # id..end of usersa_info
_NLA = struct.Struct("=HH")
_U32_NLA = struct.Struct("=HHI")
_U8_NLA = struct.Struct("=HHB3x")
_MARK_NLA = struct.Struct("=HHII")
_ZERO16 = bytes(16)
_V4PAD = bytes(12)
INF = nl.XFRM_INF


class Dir(IntEnum):
    IN = nl.XFRM_POLICY_IN
    OUT = nl.XFRM_POLICY_OUT
    FWD = nl.XFRM_POLICY_FWD


class Action(IntEnum):
    ALLOW = nl.XFRM_POLICY_ALLOW
    BLOCK = nl.XFRM_POLICY_BLOCK


class Mode(IntEnum):
    TRANSPORT = nl.XFRM_MODE_TRANSPORT
    TUNNEL = nl.XFRM_MODE_TUNNEL
    ROUTEOPTIMIZATION = nl.XFRM_MODE_ROUTEOPTIMIZATION
    IN_TRIGGER = nl.XFRM_MODE_IN_TRIGGER
    BEET = nl.XFRM_MODE_BEET
    IPTFS = nl.XFRM_MODE_IPTFS


class Proto(IntEnum):
    ESP = nl.IPPROTO_ESP
    AH = nl.IPPROTO_AH
    COMP = nl.IPPROTO_COMP
    ANY = nl.IPSEC_PROTO_ANY


class PolicyType(IntEnum):
    MAIN = nl.XFRM_POLICY_TYPE_MAIN
    SUB = nl.XFRM_POLICY_TYPE_SUB


def _enum(cls: type[IntEnum], v: Any) -> Any:
    if type(v) is cls:  # already a member, as on the bulk path: skip the enum lookup
        return v
    if isinstance(v, str):
        return cls[v.upper()]
    return cls(v)


def _nla(atype: int, payload: bytes) -> bytes:
    ln = 4 + len(payload)
    return _NLA.pack(ln, atype) + payload + b"\0" * ((-ln) & 3)


# Packing a large SPD converts the same few address strings over and over: convert once.
@functools.lru_cache(maxsize=65536)
def _addr(a: str | None) -> tuple[bytes, int]:
    """(16-byte address, family) from a textual address (no prefix)."""
    if not a:
        return _ZERO16, 0
    if ":" in a:
        return socket.inet_pton(socket.AF_INET6, a), socket.AF_INET6
    return socket.inet_pton(socket.AF_INET, a) + _V4PAD, socket.AF_INET


@functools.lru_cache(maxsize=65536)
def _prefix(p: str | None) -> tuple[bytes, int, int]:
    """(address, prefix length, family) from 'addr[/len]'; None is 'any'."""
    if not p:
        return _ZERO16, 0, 0
    a, _, ln = p.partition("/")
    raw, fam = _addr(a)
    plen = int(ln) if ln else (32 if fam == socket.AF_INET else 128)
    return raw, plen, fam


def _fmt_prefix(addr: str | None, plen: int, family: int) -> str | None:
    if addr is None:
        return None
    if plen == 0 and addr in ("0.0.0.0", "::"):
        return None
    full = 32 if family == socket.AF_INET else 128
    return addr if plen == full else f"{addr}/{plen}"


# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Selector:
    """Traffic selector (struct xfrm_selector). ``src``/``dst`` are 'addr[/len]' or
    None for any; a port without an explicit mask matches exactly (mask 0xffff)."""

    src: str | None = None
    dst: str | None = None
    proto: int = 0
    sport: int = 0
    dport: int = 0
    sport_mask: int | None = None
    dport_mask: int | None = None
    ifindex: int = 0
    user: int = 0
    family: int | None = None

    def fields(self) -> tuple[Any, ...]:
        """Values for _SEL in order."""
        sa, pls, fs = _prefix(self.src)
        da, pld, fd = _prefix(self.dst)
        fam = self.family or fd or fs
        smask = self.sport_mask if self.sport_mask is not None else (0xFFFF if self.sport else 0)
        dmask = self.dport_mask if self.dport_mask is not None else (0xFFFF if self.dport else 0)
        hs = socket.htons
        return (
            da, sa, hs(self.dport), hs(dmask), hs(self.sport), hs(smask), fam, pld, pls,
            self.proto, self.ifindex, self.user,
        )

    def pack(self) -> bytes:
        return _SEL.pack(*self.fields())

    @property
    def resolved_family(self) -> int:
        return self.fields()[6]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Selector:
        fam = d["family"]
        return cls(
            src=_fmt_prefix(d["saddr"], d["prefixlen_s"], fam),
            dst=_fmt_prefix(d["daddr"], d["prefixlen_d"], fam),
            proto=d["proto"],
            sport=d["sport"],
            dport=d["dport"],
            sport_mask=d["sport_mask"],
            dport_mask=d["dport_mask"],
            ifindex=d["ifindex"],
            user=d["user"],
            family=fam,
        )


@dataclass(slots=True)
class Lifetime:
    """Soft/hard limits (struct xfrm_lifetime_cfg); INF/0 mean unlimited."""

    soft_bytes: int = INF
    hard_bytes: int = INF
    soft_packets: int = INF
    hard_packets: int = INF
    soft_add_seconds: int = 0
    hard_add_seconds: int = 0
    soft_use_seconds: int = 0
    hard_use_seconds: int = 0

    def values(self) -> tuple[int, ...]:
        return (
            self.soft_bytes, self.hard_bytes, self.soft_packets, self.hard_packets,
            self.soft_add_seconds, self.hard_add_seconds, self.soft_use_seconds,
            self.hard_use_seconds,
        )

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> Lifetime:
        return cls(*(d[n] for n in nl.XfrmLifetimeCfg.names))


@dataclass(slots=True)
class LifetimeCurrent:
    """Usage counters (struct xfrm_lifetime_cur); read-only."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> LifetimeCurrent:
        return cls(d["bytes"], d["packets"], d["add_time"], d["use_time"])


_NO_CUR = (0, 0, 0, 0)


@dataclass(slots=True)
class Mark:
    """Packet mark match (struct xfrm_mark)."""

    value: int
    mask: int = 0xFFFFFFFF


@dataclass(slots=True)
class Template:
    """An SA template of a policy (struct xfrm_user_tmpl). ``src``/``dst`` are the
    tunnel endpoints in tunnel mode and empty in transport mode."""

    src: str | None = None
    dst: str | None = None
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    spi: int = 0
    reqid: int = 0
    share: int = 0
    optional: bool = False
    aalgos: int = 0xFFFFFFFF
    ealgos: int = 0xFFFFFFFF
    calgos: int = 0xFFFFFFFF
    family: int | None = None

    def __post_init__(self) -> None:
        self.proto = _enum(Proto, self.proto)
        self.mode = _enum(Mode, self.mode)

    def pack(self, default_family: int) -> bytes:
        da, fd = _addr(self.dst)
        sa, fs = _addr(self.src)
        fam = self.family or fd or fs or default_family
        return _TMPL.pack(
            da, socket.htonl(self.spi), self.proto, fam, sa, self.reqid, self.mode,
            self.share, int(self.optional), self.aalgos, self.ealgos, self.calgos,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Template:
        i = d["id"]
        zero = ("0.0.0.0", "::", None)
        return cls(
            src=None if d["saddr"] in zero else d["saddr"],
            dst=None if i["daddr"] in zero else i["daddr"],
            proto=i["proto"],
            mode=d["mode"],
            spi=i["spi"],
            reqid=d["reqid"],
            share=d["share"],
            optional=bool(d["optional"]),
            aalgos=d["aalgos"],
            ealgos=d["ealgos"],
            calgos=d["calgos"],
            family=d["family"],
        )


@dataclass(slots=True)
class Policy:
    """An SPD entry (XFRM_MSG_NEWPOLICY).  ``index`` 0 lets the kernel choose one;
    ``curlft`` is filled only on entries read back from the kernel."""

    selector: Selector
    dir: Dir = Dir.OUT
    action: Action = Action.ALLOW
    priority: int = 0
    templates: list[Template] = field(default_factory=list)
    lifetime: Lifetime = field(default_factory=Lifetime)
    mark: Mark | None = None
    if_id: int | None = None
    index: int = 0
    flags: int = 0
    share: int = 0
    ptype: PolicyType = PolicyType.MAIN
    curlft: LifetimeCurrent | None = None

    def __post_init__(self) -> None:
        self.dir = _enum(Dir, self.dir)
        self.action = _enum(Action, self.action)
        self.ptype = _enum(PolicyType, self.ptype)

    def pack(self) -> bytes:
        """Body of NEWPOLICY/UPDPOLICY: xfrm_userpolicy_info + attributes."""
        sel = self.selector.fields()
        parts = [
            _SEL_POL.pack(
                *sel, *self.lifetime.values(), *_NO_CUR, self.priority, self.index,
                self.dir, self.action, self.flags, self.share,
            )
        ]
        if self.templates:
            fam = sel[6]
            parts.append(_nla(nl.XFRMA_TMPL, b"".join(t.pack(fam) for t in self.templates)))
        parts.extend(_common_attrs(self.mark, self.if_id, self.ptype))
        return b"".join(parts)

    def pack_id(self) -> bytes:
        """Body of GETPOLICY/DELPOLICY for this entry (selector+dir, or index)."""
        return policy_id_body(self.selector, self.dir, self.index, self.mark, self.if_id,
                              self.ptype)

    @classmethod
    def from_msg(cls, msg: Any) -> Policy:
        return cls.from_parts(msg["body"], msg)

    @classmethod
    def from_parts(cls, body: dict[str, Any], msg: Any) -> Policy:
        mark = msg.get_attr("XFRMA_MARK") if msg is not None else None
        ptype = msg.get_attr("XFRMA_POLICY_TYPE") if msg is not None else None
        tmpls = (msg.get_attr("XFRMA_TMPL") if msg is not None else None) or []
        return cls(
            selector=Selector.from_dict(body["sel"]),
            dir=Dir(body["dir"]),
            action=Action(body["action"]),
            priority=body["priority"],
            templates=[Template.from_dict(t) for t in tmpls],
            lifetime=Lifetime.from_dict(body["lft"]),
            mark=Mark(mark["v"], mark["m"]) if mark else None,
            if_id=msg.get_attr("XFRMA_IF_ID") if msg is not None else None,
            index=body["index"],
            flags=body["flags"],
            share=body["share"],
            ptype=PolicyType(ptype["type"]) if ptype else PolicyType.MAIN,
            curlft=LifetimeCurrent.from_dict(body["curlft"]),
        )


def _common_attrs(mark: Mark | None, if_id: int | None, ptype: int | None = None) -> list[bytes]:
    out = []
    if mark is not None:
        out.append(_MARK_NLA.pack(12, nl.XFRMA_MARK, mark.value, mark.mask))
    if if_id is not None:
        out.append(_U32_NLA.pack(8, nl.XFRMA_IF_ID, if_id))
    if ptype:  # MAIN is the kernel default; only send SUB explicitly
        out.append(_nla(nl.XFRMA_POLICY_TYPE, nl.XfrmUserpolicyType.pack({"type": ptype})))
    return out


def policy_id_body(
    selector: Selector | None,
    dir: Dir | int | str,
    index: int = 0,
    mark: Mark | None = None,
    if_id: int | None = None,
    ptype: int = 0,
) -> bytes:
    """xfrm_userpolicy_id (+ mark/if_id/type): the key of a policy.  With a non-zero
    index the kernel looks up by index and ignores the selector."""
    sel = selector.pack() if selector is not None else bytes(56)
    body = sel + struct.pack("=IB3x", index, _enum(Dir, dir))
    return body + b"".join(_common_attrs(mark, if_id, ptype))


# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Algorithm:
    """Encryption or compression algorithm (struct xfrm_algo), e.g. 'cbc(aes)'."""

    name: str
    key: bytes = b""

    def pack(self) -> bytes:
        return struct.pack("=64sI", self.name.encode(), len(self.key) * 8) + self.key


@dataclass(slots=True)
class AuthAlgorithm:
    """Integrity algorithm with ICV truncation (struct xfrm_algo_auth), e.g.
    'hmac(sha256)' with trunc_len 128 bits."""

    name: str
    key: bytes
    trunc_len: int = 96

    def pack(self) -> bytes:
        head = struct.pack("=64sII", self.name.encode(), len(self.key) * 8, self.trunc_len)
        return head + self.key


@dataclass(slots=True)
class AeadAlgorithm:
    """Combined-mode algorithm (struct xfrm_algo_aead), e.g. 'rfc4106(gcm(aes))' with
    key = AES key + 4-byte salt and icv_len 128 bits."""

    name: str
    key: bytes
    icv_len: int = 128

    def pack(self) -> bytes:
        head = struct.pack("=64sII", self.name.encode(), len(self.key) * 8, self.icv_len)
        return head + self.key


@dataclass(slots=True)
class Algorithms:
    """The transforms of an SA: either ``aead`` alone, or ``crypt`` and/or ``auth``;
    ``comp`` for IPComp states."""

    aead: AeadAlgorithm | None = None
    crypt: Algorithm | None = None
    auth: AuthAlgorithm | None = None
    comp: Algorithm | None = None


@dataclass(slots=True)
class Encap:
    """UDP encapsulation for NAT traversal (struct xfrm_encap_tmpl, RFC 3948)."""

    sport: int = 4500
    dport: int = 4500
    type: int = nl.UDP_ENCAP_ESPINUDP
    oa: str | None = None

    def pack(self) -> bytes:
        return struct.pack(
            "=HHH2x16s", self.type, socket.htons(self.sport), socket.htons(self.dport),
            _addr(self.oa)[0],
        )


@dataclass(slots=True)
class ReplayEsn:
    """Anti-replay state with extended sequence numbers (struct xfrm_replay_state_esn)."""

    replay_window: int = 0
    oseq: int = 0
    seq: int = 0
    oseq_hi: int = 0
    seq_hi: int = 0
    bmp: list[int] = field(default_factory=list)

    def pack(self) -> bytes:
        return nl.XfrmReplayStateEsn.pack(
            {
                "replay_window": self.replay_window, "oseq": self.oseq, "seq": self.seq,
                "oseq_hi": self.oseq_hi, "seq_hi": self.seq_hi, "bmp": self.bmp,
            }
        )


@dataclass(slots=True)
class State:
    """A SAD entry (XFRM_MSG_NEWSA).

    ``esn`` sets XFRM_STATE_ESN and sends the window as XFRMA_REPLAY_ESN_VAL (the
    kernel then requires the 8-bit ``replay_window`` field to be 0); a window above 32
    without ESN is sent the same way, as iproute2 does, because the legacy replay
    state has a 32-bit bitmap and the kernel silently caps the plain field at 32.
    Read-back entries also carry ``curlft``, ``stats`` and the replay counters.
    """

    src: str
    dst: str
    spi: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    reqid: int = 0
    algorithms: Algorithms = field(default_factory=Algorithms)
    selector: Selector | None = None
    lifetime: Lifetime = field(default_factory=Lifetime)
    replay_window: int = 0
    esn: bool = False
    flags: int = 0
    extra_flags: int = 0
    encap: Encap | None = None
    mark: Mark | None = None
    if_id: int | None = None
    output_mark: Mark | None = None
    tfcpad: int | None = None
    sa_dir: int | None = None
    family: int | None = None
    seq: int = 0
    # read-only, from the kernel
    curlft: LifetimeCurrent | None = None
    stats: dict[str, int] | None = None
    replay: dict[str, int] | None = None
    replay_esn: ReplayEsn | None = None

    def __post_init__(self) -> None:
        self.proto = _enum(Proto, self.proto)
        self.mode = _enum(Mode, self.mode)

    def _family(self) -> int:
        return self.family or _addr(self.dst)[1] or _addr(self.src)[1]

    def pack_info(self) -> bytes:
        fam = self._family()
        sel = self.selector.pack() if self.selector is not None else bytes(56)
        flags = self.flags | (nl.XFRM_STATE_ESN if self.esn else 0)
        use_esn = self.esn or self.replay_window > 32
        return sel + _SA_TAIL.pack(
            _addr(self.dst)[0], socket.htonl(self.spi), self.proto, _addr(self.src)[0],
            *self.lifetime.values(), *_NO_CUR, 0, 0, 0,
            self.seq, self.reqid, fam, self.mode, 0 if use_esn else self.replay_window, flags,
        )

    def pack(self) -> bytes:
        """Body of NEWSA/UPDSA: xfrm_usersa_info + attributes."""
        parts = [self.pack_info()]
        a = self.algorithms
        if a.aead is not None:
            parts.append(_nla(nl.XFRMA_ALG_AEAD, a.aead.pack()))
        if a.crypt is not None:
            parts.append(_nla(nl.XFRMA_ALG_CRYPT, a.crypt.pack()))
        if a.auth is not None:
            parts.append(_nla(nl.XFRMA_ALG_AUTH_TRUNC, a.auth.pack()))
        if a.comp is not None:
            parts.append(_nla(nl.XFRMA_ALG_COMP, a.comp.pack()))
        if self.encap is not None:
            parts.append(_nla(nl.XFRMA_ENCAP, self.encap.pack()))
        if self.esn or self.replay_window > 32:
            esn = self.replay_esn or ReplayEsn(replay_window=self.replay_window)
            parts.append(_nla(nl.XFRMA_REPLAY_ESN_VAL, esn.pack()))
        if self.extra_flags:
            parts.append(_U32_NLA.pack(8, nl.XFRMA_SA_EXTRA_FLAGS, self.extra_flags))
        if self.output_mark is not None:
            parts.append(_U32_NLA.pack(8, nl.XFRMA_SET_MARK, self.output_mark.value))
            parts.append(_U32_NLA.pack(8, nl.XFRMA_SET_MARK_MASK, self.output_mark.mask))
        if self.tfcpad is not None:
            parts.append(_U32_NLA.pack(8, nl.XFRMA_TFCPAD, self.tfcpad))
        if self.sa_dir is not None:
            parts.append(_U8_NLA.pack(5, nl.XFRMA_SA_DIR, self.sa_dir))
        parts.extend(_common_attrs(self.mark, self.if_id))
        return b"".join(parts)

    @classmethod
    def from_msg(cls, msg: Any) -> State:
        return cls.from_parts(msg["body"], msg)

    @classmethod
    def from_parts(cls, b: dict[str, Any], msg: Any) -> State:
        get = msg.get_attr if msg is not None else (lambda _n: None)
        aead = get("XFRMA_ALG_AEAD")
        crypt = get("XFRMA_ALG_CRYPT")
        auth = get("XFRMA_ALG_AUTH_TRUNC")
        auth_plain = get("XFRMA_ALG_AUTH") if auth is None else None
        comp = get("XFRMA_ALG_COMP")
        encap = get("XFRMA_ENCAP")
        mark = get("XFRMA_MARK")
        smark = get("XFRMA_SET_MARK")
        esn = get("XFRMA_REPLAY_ESN_VAL")
        sel = Selector.from_dict(b["sel"])
        algos = Algorithms(
            aead=AeadAlgorithm(aead["alg_name"], aead["alg_key"], aead["alg_icv_len"])
            if aead else None,
            crypt=Algorithm(crypt["alg_name"], crypt["alg_key"]) if crypt else None,
            auth=AuthAlgorithm(auth["alg_name"], auth["alg_key"], auth["alg_trunc_len"])
            if auth
            else (
                AuthAlgorithm(auth_plain["alg_name"], auth_plain["alg_key"], 96)
                if auth_plain else None
            ),
            comp=Algorithm(comp["alg_name"], comp["alg_key"]) if comp else None,
        )
        flags = b["flags"]
        return cls(
            src=b["saddr"],
            dst=b["id"]["daddr"],
            spi=b["id"]["spi"],
            proto=b["id"]["proto"],
            mode=b["mode"],
            reqid=b["reqid"],
            algorithms=algos,
            selector=sel,
            lifetime=Lifetime.from_dict(b["lft"]),
            replay_window=esn["replay_window"] if esn else b["replay_window"],
            esn=bool(flags & nl.XFRM_STATE_ESN),
            flags=flags & ~nl.XFRM_STATE_ESN,
            extra_flags=get("XFRMA_SA_EXTRA_FLAGS") or 0,
            encap=Encap(encap["encap_sport"], encap["encap_dport"], encap["encap_type"],
                        encap["encap_oa"]) if encap else None,
            mark=Mark(mark["v"], mark["m"]) if mark else None,
            if_id=get("XFRMA_IF_ID"),
            output_mark=Mark(smark, get("XFRMA_SET_MARK_MASK") or 0xFFFFFFFF)
            if smark is not None else None,
            tfcpad=get("XFRMA_TFCPAD"),
            sa_dir=get("XFRMA_SA_DIR"),
            family=b["family"],
            seq=b["seq"],
            curlft=LifetimeCurrent.from_dict(b["curlft"]),
            stats=dict(b["stats"]),
            replay=get("XFRMA_REPLAY_VAL"),
            replay_esn=ReplayEsn(
                esn["replay_window"], esn["oseq"], esn["seq"], esn["oseq_hi"], esn["seq_hi"],
                list(esn["bmp"]),
            ) if esn else None,
        )


def sa_id_body(
    dst: str, spi: int, proto: int = Proto.ESP, mark: Mark | None = None,
    if_id: int | None = None, src: str | None = None,
) -> bytes:
    """xfrm_usersa_id (+ mark, source address): the key of an SA."""
    raw, fam = _addr(dst)
    body = nl.XfrmUsersaId.S.pack(raw, socket.htonl(spi), fam, int(proto))
    parts = [body, *_common_attrs(mark, if_id)]
    if src:
        parts.append(_nla(nl.XFRMA_SRCADDR, _addr(src)[0]))
    return b"".join(parts)
