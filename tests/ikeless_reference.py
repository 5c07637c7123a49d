"""The ikeless parser and xfrm translation as they were before the per-entry memo and the
incremental path (commit b584ddb), kept verbatim as the oracle the equivalence tests compare
the fast code against. Not used by the agent."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from lxml import etree

from netconf_core.errors import RpcError
from nsf_agent.ikeless import (
    ENCRYPTION,
    INTEGRITY,
    Direction,
    EncAlg,
    Encap,
    IkelessConfig,
    IntegAlg,
    IpAddr,
    Lifetime,
    PortRange,
    SadEntry,
    Selector,
    SpdEntry,
    Tunnel,
)
from nsf_agent.xfrm.model import (
    AeadAlgorithm,
    Algorithm,
    Algorithms,
    AuthAlgorithm,
    Dir,
    Mode,
    Policy,
    Proto,
    State,
    Template,
)
from nsf_agent.xfrm.model import Encap as XEncap
from nsf_agent.xfrm.model import Lifetime as XLifetime
from nsf_agent.xfrm.model import Selector as XSelector

NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{NS}}}"
PRIORITY_BASE = 1_000_000
INF = (1 << 64) - 1
TCP_ENCAP_ESPINTCP = 7


@dataclass
class Op:
    kind: str
    obj: Policy | State
    name: str
    undo: tuple[str, Policy | State] | None


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
            ext_seq_num=_bool(cfg, "ext-seq-num", False),
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


# ---- xfrm translation -------


def port_blocks(r: PortRange) -> list[tuple[int, int]]:
    """Split a port range into (port, mask) blocks the XFRM selector can match."""
    if (r.start, r.end) == (0, 65535):
        return [(0, 0)]
    out = []
    lo, hi = r.start, r.end
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def _xports(ranges: tuple[PortRange, ...]) -> list[tuple[int, int]]:
    if not ranges:
        return [(0, 0)]
    return [b for r in ranges for b in port_blocks(r)]


@dataclass(frozen=True)
class PolicyKey:
    """What identifies a policy in the kernel (selector + direction)."""

    dir: int
    src: str
    dst: str
    proto: int
    sport: int
    sport_mask: int
    dport: int
    dport_mask: int


def policy_key(p: Policy) -> PolicyKey:
    s = p.selector
    return PolicyKey(int(p.dir), _norm(s.src), _norm(s.dst), s.proto, s.sport,
                     s.sport_mask or 0, s.dport, s.dport_mask or 0)


@functools.lru_cache(maxsize=65536)
def _norm(prefix: str | None) -> str:
    if prefix is None:
        return "any"
    return str(ipaddress.ip_network(prefix, strict=False))


def state_key(s: State) -> tuple[str, int, int]:
    return (str(ipaddress.ip_address(s.dst)), s.spi, int(s.proto))


def spd_policies(e: SpdEntry) -> list[tuple[Policy, str]]:
    """The kernel policies standing for one SPD entry (tagged with the entry's name)."""
    sel = e.selector
    out = []
    if e.direction == "outbound":
        dirs = [Dir.OUT]
        src, dst = sel.local_prefix, sel.remote_prefix
        sports, dports = _xports(sel.local_ports), _xports(sel.remote_ports)
    else:
        # A gateway forwards inbound tunnel traffic: the FWD policy checks it as IN does.
        dirs = [Dir.IN, Dir.FWD] if e.mode == "tunnel" or e.action != "protect" else [Dir.IN]
        src, dst = sel.remote_prefix, sel.local_prefix
        sports, dports = _xports(sel.remote_ports), _xports(sel.local_ports)
    proto = sel.protocol or 0
    for d in dirs:
        for sport, smask in sports:
            for dport, dmask in dports:
                tmpls = []
                if e.action == "protect":
                    if e.mode == "tunnel" and e.tunnel is not None:
                        tsrc, tdst = (
                            (str(e.tunnel.local), str(e.tunnel.remote)) if d == Dir.OUT
                            else (str(e.tunnel.remote), str(e.tunnel.local))
                        )
                    else:
                        tsrc = tdst = None
                    tmpls.append(Template(
                        src=tsrc, dst=tdst,
                        proto=Proto.ESP if e.protocol == "esp" else Proto.AH,
                        mode=Mode.TUNNEL if e.mode == "tunnel" else Mode.TRANSPORT,
                        reqid=e.reqid,
                    ))
                pol = Policy(
                    selector=XSelector(
                        src=str(src), dst=str(dst), proto=proto,
                        sport=sport, sport_mask=smask, dport=dport, dport_mask=dmask,
                    ),
                    dir=d,
                    action=1 if e.action == "discard" else 0,
                    priority=PRIORITY_BASE + e.index,
                    templates=tmpls,
                )
                out.append((pol, e.name))
    return out


def _xlifetime(e: SadEntry) -> XLifetime:
    def lim(v: int) -> int:
        return v if v else INF

    return XLifetime(
        soft_bytes=lim(e.soft.bytes), hard_bytes=lim(e.hard.bytes),
        soft_packets=lim(e.soft.packets), hard_packets=lim(e.hard.packets),
        soft_add_seconds=e.soft.time, hard_add_seconds=e.hard.time,
        soft_use_seconds=e.soft.idle, hard_use_seconds=e.hard.idle,
    )


def sad_state(e: SadEntry) -> State:
    algs = Algorithms()
    if e.encryption is not None and e.encryption.aead:
        algs.aead = AeadAlgorithm(e.encryption.kernel, e.enc_key, e.encryption.icv_bits)
    else:
        if e.encryption is not None:
            algs.crypt = Algorithm(e.encryption.kernel, e.enc_key)
        if e.integrity is not None:
            algs.auth = AuthAlgorithm(e.integrity.kernel, e.integ_key, e.integrity.trunc_bits)
    encap = None
    if e.encap is not None and e.encap.kind == "espinudp":
        encap = XEncap(sport=e.encap.sport, dport=e.encap.dport,
                      oa=str(e.encap.oaddr[0]) if e.encap.oaddr else None)
    elif e.encap is not None:
        encap = XEncap(sport=e.encap.sport, dport=e.encap.dport, type=TCP_ENCAP_ESPINTCP)
    return State(
        src=str(e.src), dst=str(e.dst), spi=e.spi,
        proto=Proto.ESP if e.protocol == "esp" else Proto.AH,
        mode=Mode.TUNNEL if e.mode == "tunnel" else Mode.TRANSPORT,
        reqid=e.reqid,
        algorithms=algs,
        lifetime=_xlifetime(e),
        # The kernel wants a window on ESN states of either direction (outbound ignores it).
        replay_window=e.anti_replay_window,
        esn=e.ext_seq_num,
        encap=encap,
    )


@dataclass
class Desired:
    policies: dict[PolicyKey, tuple[Policy, str]]
    states: dict[tuple[str, int, int], tuple[State, str]]


def desired(cfg: IkelessConfig) -> Desired:
    pols: dict[PolicyKey, tuple[Policy, str]] = {}
    for e in cfg.spd:
        for pol, name in spd_policies(e):
            pols.setdefault(policy_key(pol), (pol, name))  # the first (higher) entry wins
    sts = {}
    for e in cfg.sad:
        st = sad_state(e)
        sts[state_key(st)] = (st, e.name)
    return Desired(pols, sts)



def ops(old: Desired, new: Desired) -> list[Op]:
    ops: list[Op] = []
    # New states first, so that policies referring to them work at once; old ones last.
    for k, (st, name) in new.states.items():
        if k not in old.states:
            ops.append(Op("add_state", st, name, ("delete_state", st)))
        elif old.states[k][0] != st:
            ops.append(Op("delete_state", old.states[k][0], name,
                          ("add_state", old.states[k][0])))
            ops.append(Op("add_state", st, name, ("delete_state", st)))
    for k, (pol, name) in new.policies.items():
        if k not in old.policies:
            ops.append(Op("add_policy", pol, name, ("delete_policy", pol)))
        elif old.policies[k][0] != pol:
            ops.append(Op("update_policy", pol, name, ("update_policy", old.policies[k][0])))
    for k, (pol, name) in old.policies.items():
        if k not in new.policies:
            ops.append(Op("delete_policy", pol, name, ("add_policy", pol)))
    for k, (st, name) in old.states.items():
        if k not in new.states:
            ops.append(Op("delete_state", st, name, ("add_state", st)))
    return ops

