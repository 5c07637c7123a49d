"""One translation of the RFC 9061 ietf-i2nsf-ikeless tree into backend-neutral SPD and SAD
entries, shared by the kernel (xfrm) and the userspace ESP appliers.

RFC 9061 describes SAD entries from the NSF's point of view (tunnel local/remote, traffic
selector local/remote) and does not store a direction; an SA's direction is that of the SPD
entry carrying the same non-zero `reqid`. Outer addresses follow: an outbound SA goes
local → remote, an inbound one remote → local.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from lxml import etree

from netconf_core.errors import RpcError

NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{NS}}}"

IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True)
class EncAlg:
    """An IKEv2 encryption transform (IANA registry, Transform Type 1)."""

    number: int
    name: str
    kernel: str  # Linux crypto API name used in XFRM
    aead: bool
    key_bytes: tuple[int, ...]  # accepted key lengths, salt included for AEAD/CTR
    salt_bytes: int = 0
    icv_bits: int = 0
    iv_bytes: int = 8
    block_bytes: int = 4


ENCRYPTION: dict[int, EncAlg] = {
    a.number: a
    for a in (
        EncAlg(3, "3des-cbc", "cbc(des3_ede)", False, (24,), iv_bytes=8, block_bytes=8),
        EncAlg(11, "null", "ecb(cipher_null)", False, (0,), iv_bytes=0, block_bytes=4),
        EncAlg(12, "aes-cbc", "cbc(aes)", False, (16, 24, 32), iv_bytes=16, block_bytes=16),
        EncAlg(13, "aes-ctr", "rfc3686(ctr(aes))", False, (20, 28, 36), salt_bytes=4),
        EncAlg(14, "aes-ccm-8", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 64),
        EncAlg(15, "aes-ccm-12", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 96),
        EncAlg(16, "aes-ccm-16", "rfc4309(ccm(aes))", True, (19, 27, 35), 3, 128),
        EncAlg(18, "aes-gcm-8", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 64),
        EncAlg(19, "aes-gcm-12", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 96),
        EncAlg(20, "aes-gcm-16", "rfc4106(gcm(aes))", True, (20, 28, 36), 4, 128),
        EncAlg(21, "null-auth-aes-gmac", "rfc4543(gcm(aes))", True, (20, 28, 36), 4, 128),
        EncAlg(28, "chacha20-poly1305", "rfc7539esp(chacha20,poly1305)", True, (36,), 4, 128),
    )
}


@dataclass(frozen=True)
class IntegAlg:
    """An IKEv2 integrity transform (IANA registry, Transform Type 3)."""

    number: int
    name: str
    kernel: str
    key_bytes: int
    trunc_bits: int


INTEGRITY: dict[int, IntegAlg] = {
    a.number: a
    for a in (
        IntegAlg(1, "hmac-md5-96", "hmac(md5)", 16, 96),
        IntegAlg(2, "hmac-sha1-96", "hmac(sha1)", 20, 96),
        IntegAlg(5, "aes-xcbc-96", "xcbc(aes)", 16, 96),
        IntegAlg(8, "aes-cmac-96", "cmac(aes)", 16, 96),
        IntegAlg(12, "hmac-sha2-256-128", "hmac(sha256)", 32, 128),
        IntegAlg(13, "hmac-sha2-384-192", "hmac(sha384)", 48, 192),
        IntegAlg(14, "hmac-sha2-512-256", "hmac(sha512)", 64, 256),
    )
}


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int


@dataclass(frozen=True)
class Selector:
    local_prefix: IpNet
    remote_prefix: IpNet
    protocol: int | None  # None: any
    local_ports: tuple[PortRange, ...] = ()
    remote_ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class Tunnel:
    local: IpAddr
    remote: IpAddr
    df_bit: str = "clear"
    bypass_dscp: bool = True


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
class IkelessConfig:
    spd: tuple[SpdEntry, ...] = ()
    sad: tuple[SadEntry, ...] = ()

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


def _t(el: etree._Element | None, name: str, default: str | None = None) -> str | None:
    if el is None:
        return default
    v = el.findtext(Q + name)
    return v.strip() if v is not None else default


def _bool(el: etree._Element | None, name: str, default: bool) -> bool:
    v = _t(el, name)
    return default if v is None else v == "true"


def _int(el: etree._Element | None, name: str, default: int = 0) -> int:
    v = _t(el, name)
    return default if v is None else int(v)


def _hex(v: str | None) -> bytes:
    if not v:
        return b""
    return bytes.fromhex(v.replace(":", ""))


# Large SPDs repeat the same few prefixes and tunnel endpoints; parsing them is the
# dominant cost of translating a 10,000-entry tree, so parse each string once.
_net = functools.lru_cache(maxsize=65536)(lambda s: ipaddress.ip_network(s, strict=False))
_addr = functools.lru_cache(maxsize=65536)(ipaddress.ip_address)


def _ports(sel: etree._Element, name: str) -> tuple[PortRange, ...]:
    return tuple(
        PortRange(int(p.findtext(Q + "start") or 0), int(p.findtext(Q + "end") or 0))
        for p in sel.iterfind(Q + name)
    )


def _selector(sel: etree._Element | None, path: str) -> Selector:
    if sel is None:
        raise RpcError("application", "data-missing", "traffic-selector is missing", path=path)
    proto = _t(sel, "inner-protocol", "any")
    return Selector(
        local_prefix=_net(_t(sel, "local-prefix") or ""),
        remote_prefix=_net(_t(sel, "remote-prefix") or ""),
        protocol=None if proto == "any" else int(proto or 0),
        local_ports=_ports(sel, "local-ports"),
        remote_ports=_ports(sel, "remote-ports"),
    )


def _tunnel(t: etree._Element | None) -> Tunnel | None:
    if t is None or _t(t, "local") is None:
        return None
    return Tunnel(
        local=_addr(_t(t, "local") or ""),
        remote=_addr(_t(t, "remote") or ""),
        df_bit=_t(t, "df-bit", "clear") or "clear",
        bypass_dscp=_bool(t, "bypass-dscp", True),
    )


def _lifetime(el: etree._Element | None) -> Lifetime:
    return Lifetime(
        time=_int(el, "time"), bytes=_int(el, "bytes"),
        packets=_int(el, "packets"), idle=_int(el, "idle"),
    )


def parse(data: etree._Element) -> IkelessConfig:
    """`data` is a `<data>` root (or any element holding `<ipsec-ikeless>`), already
    validated by libyang. Semantic problems libyang cannot see raise RpcError."""
    root = data if data.tag == Q + "ipsec-ikeless" else data.find(Q + "ipsec-ikeless")
    if root is None:
        return IkelessConfig()
    spd = tuple(_parse_spd(root))
    directions: dict[int, set[Direction]] = {}
    for e in spd:
        if e.reqid:
            directions.setdefault(e.reqid, set()).add(e.direction)
    sad = tuple(_parse_sad(root, directions))
    _check_unique_spi(sad)
    return IkelessConfig(spd=spd, sad=sad)


def _parse_spd(root: etree._Element) -> Iterable[SpdEntry]:
    for index, ent in enumerate(root.iterfind(f"{Q}spd/{Q}spd-entry")):
        name = _t(ent, "name") or ""
        path = f"/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry[name='{name}']"
        cfg = ent.find(Q + "ipsec-policy-config")
        pinfo = cfg.find(Q + "processing-info") if cfg is not None else None
        sa_cfg = pinfo.find(Q + "ipsec-sa-cfg") if pinfo is not None else None
        algs = sa_cfg.find(Q + "esp-algorithms") if sa_cfg is not None else None
        enc = tuple(
            int(e.findtext(Q + "algorithm-type") or 0)
            for e in (algs.iterfind(Q + "encryption") if algs is not None else ())
        )
        integ = tuple(
            int(i.text or 0) for i in (algs.iterfind(Q + "integrity") if algs is not None else ())
        )
        action = _t(pinfo, "action", "discard") or "discard"
        mode = _t(sa_cfg, "mode", "transport") or "transport"
        tunnel = _tunnel(sa_cfg.find(Q + "tunnel") if sa_cfg is not None else None)
        if action == "protect" and mode == "tunnel" and tunnel is None:
            raise RpcError("application", "data-missing",
                           f"SPD entry {name!r}: tunnel mode needs tunnel local/remote",
                           path=path + "/ipsec-policy-config/processing-info/ipsec-sa-cfg")
        yield SpdEntry(
            name=name,
            index=index,
            direction="inbound" if _t(ent, "direction") == "inbound" else "outbound",
            reqid=_int(ent, "reqid"),
            selector=_selector(cfg.find(Q + "traffic-selector") if cfg is not None else None,
                               path),
            action=action,  # type: ignore[arg-type]
            mode=mode,  # type: ignore[arg-type]
            protocol=_t(sa_cfg, "protocol-parameters", "esp") or "esp",
            ext_seq_num=_bool(sa_cfg, "ext-seq-num", True),
            anti_replay_window=_int(cfg, "anti-replay-window-size", 64),
            tunnel=tunnel,
            encryption=enc,
            integrity=integ,
        )


def _parse_sad(root: etree._Element, directions: dict[int, set[Direction]]) -> Iterable[SadEntry]:
    for ent in root.iterfind(f"{Q}sad/{Q}sad-entry"):
        name = _t(ent, "name") or ""
        path = f"/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry[name='{name}']"
        cfg = ent.find(Q + "ipsec-sa-config")
        if cfg is None:
            raise RpcError("application", "data-missing",
                           f"SAD entry {name!r} has no ipsec-sa-config", path=path)
        reqid = _int(ent, "reqid")
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
        mode = _t(cfg, "mode", "transport") or "transport"
        selector = _selector(cfg.find(Q + "traffic-selector"), path)
        tunnel = _tunnel(cfg.find(Q + "tunnel"))
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
        esp = cfg.find(Q + "esp-sa")
        encel = esp.find(Q + "encryption") if esp is not None else None
        intel = esp.find(Q + "integrity") if esp is not None else None
        enc_no = _t(encel, "encryption-algorithm")
        int_no = _t(intel, "integrity-algorithm")
        enc = _enc_alg(enc_no, name, path)
        integ = _integ_alg(int_no, name, path)
        enc_key = _hex(_t(encel, "key"))
        integ_key = _hex(_t(intel, "key"))
        _check_keys(name, path, enc, enc_key, integ, integ_key)
        encap = None
        et = cfg.find(Q + "encapsulation-type")
        kind = _t(et, "espencap", "none")
        if kind in ("espinudp", "espintcp"):
            encap = Encap(
                kind=kind,  # type: ignore[arg-type]
                sport=_int(et, "sport", 4500),
                dport=_int(et, "dport", 4500),
                oaddr=tuple(ipaddress.ip_address(a.text.strip())
                            for a in et.iterfind(Q + "oaddr") if a.text),
            )
        soft = cfg.find(Q + "sa-lifetime-soft")
        yield SadEntry(
            name=name,
            reqid=reqid,
            spi=_int(cfg, "spi"),
            direction=direction,
            src=src,
            dst=dst,
            selector=selector,
            mode=mode,  # type: ignore[arg-type]
            protocol=_t(cfg, "protocol-parameters", "esp") or "esp",
            ext_seq_num=_bool(cfg, "ext-seq-num", True),
            seq_overflow=_bool(cfg, "seq-overflow", False),
            anti_replay_window=_int(cfg, "anti-replay-window-size", 64),
            encryption=enc,
            enc_key=enc_key,
            iv=_hex(_t(encel, "iv")),
            integrity=integ,
            integ_key=integ_key,
            hard=_lifetime(cfg.find(Q + "sa-lifetime-hard")),
            soft=_lifetime(soft),
            soft_action=_t(soft, "action", "replace") or "replace",
            tunnel=tunnel,
            encap=encap,
        )


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
    seen: dict[tuple[IpAddr, int, str], str] = {}
    for e in sad:
        k = (e.dst, e.spi, e.protocol)
        if k in seen:
            raise RpcError(
                "application", "operation-failed",
                f"SAD entries {seen[k]!r} and {e.name!r} share destination {e.dst}, "
                f"SPI {e.spi} and protocol {e.protocol}",
                path=f"/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry[name='{e.name}']",
                app_tag="data-not-unique",
            )
        seen[k] = e.name
