"""The controller's view of its northbound configuration (module i2nsf-flow-policy).

libyang checks what YANG can express; the checks here are the ones it cannot (effective
lifetimes after overrides, algorithm tables, selector overlaps, features not built yet). Both
run before anything is pushed to an NSF, so bad input ends as an rpc-error with nothing changed.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from lxml import etree

from controller.core.inventory import MODULE, NS, Nat, Nsf, NsfIke  # noqa: F401 - re-exported
from netconf_core.errors import RpcError
from netconf_core.i2nsf.algorithms import ENCRYPTION, INTEGRITY
from netconf_core.i2nsf.types import IpAddr, IpNet, PortRange

Q = f"{{{NS}}}"

Mode = Literal["tunnel", "transport"]
KeyManagement = Literal["ikeless", "ike"]

# A policy's flows are numbered into its SPD reqids (see translate.reqid); keep it bounded.
MAX_FLOWS_PER_POLICY = 256


@dataclass(frozen=True)
class Limits:
    """SA lifetime limits; 0 means no limit (RFC 9061)."""

    time: int = 0
    bytes: int = 0
    packets: int = 0


@dataclass(frozen=True)
class LimitsOverride:
    """Per-policy lifetime overrides; None keeps the crypto profile's value."""

    time: int | None = None
    bytes: int | None = None
    packets: int | None = None

    def over(self, base: Limits) -> Limits:
        return Limits(
            time=base.time if self.time is None else self.time,
            bytes=base.bytes if self.bytes is None else self.bytes,
            packets=base.packets if self.packets is None else self.packets,
        )


@dataclass(frozen=True)
class IkeSaParams:
    """IKE SA settings of a crypto profile (IKE case)."""

    encryption: int = 20
    key_length: int = 128
    integrity: int = 12
    dh_group: int = 19
    pfs_group: int = 0
    rekey_time: int = 14400


@dataclass(frozen=True)
class CryptoProfile:
    name: str
    encryption: int = 20
    key_length: int = 128
    integrity: int = 0
    soft: Limits = Limits(time=3240)
    hard: Limits = Limits(time=3600)
    anti_replay_window: int = 64
    ext_seq_num: bool = True
    ike: IkeSaParams = IkeSaParams()  # not in to_dict (IKE-less fingerprints)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "encryption": self.encryption, "key_length": self.key_length,
            "integrity": self.integrity, "soft": vars(self.soft), "hard": vars(self.hard),
            "anti_replay_window": self.anti_replay_window, "ext_seq_num": self.ext_seq_num,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CryptoProfile:
        return cls(
            name=d["name"], encryption=d["encryption"], key_length=d["key_length"],
            integrity=d["integrity"], soft=Limits(**d["soft"]), hard=Limits(**d["hard"]),
            anti_replay_window=d["anti_replay_window"], ext_seq_num=d["ext_seq_num"],
        )


@dataclass(frozen=True)
class Endpoint:
    nsf: str
    prefixes: tuple[IpNet, ...] = ()  # empty: the NSF's protected prefixes
    ports: tuple[PortRange, ...] = ()


@dataclass(frozen=True)
class FlowParams:
    """What policies and policy groups share."""

    crypto_profile: str
    inner_protocol: int | None = None  # None: any
    mode: Mode = "tunnel"
    soft: LimitsOverride = LimitsOverride()
    hard: LimitsOverride = LimitsOverride()
    key_management: KeyManagement = "ikeless"
    on_demand: bool = False
    auth_method: str = "psk"  # IKE case: psk | certificate
    psk_file: str | None = None


@dataclass(frozen=True)
class Policy:
    name: str
    a: Endpoint
    b: Endpoint
    params: FlowParams
    group: str | None = None  # set for policies generated from a policy group
    description: str = ""

    def lifetimes(self, profile: CryptoProfile) -> tuple[Limits, Limits]:
        """Effective (soft, hard) lifetimes: the profile's, overridden by the policy's."""
        return self.params.soft.over(profile.soft), self.params.hard.over(profile.hard)

    def to_dict(self) -> dict[str, Any]:
        def ep(e: Endpoint) -> dict[str, Any]:
            return {"nsf": e.nsf, "prefixes": [str(p) for p in e.prefixes],
                    "ports": [[r.start, r.end] for r in e.ports]}
        p = self.params
        return {
            "name": self.name, "a": ep(self.a), "b": ep(self.b), "group": self.group,
            "description": self.description,
            "params": {
                "crypto_profile": p.crypto_profile, "inner_protocol": p.inner_protocol,
                "mode": p.mode, "soft": vars(p.soft), "hard": vars(p.hard),
                "key_management": p.key_management, "on_demand": p.on_demand,
                # only for IKE-case policies, so IKE-less fingerprints stay as they were
                **({"auth_method": p.auth_method, "psk_file": p.psk_file}
                   if p.key_management == "ike" else {}),
            },
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Policy:
        def ep(e: dict[str, Any]) -> Endpoint:
            return Endpoint(e["nsf"], tuple(ipaddress.ip_network(x) for x in e["prefixes"]),
                            tuple(PortRange(s, t) for s, t in e["ports"]))
        p = d["params"]
        return cls(
            name=d["name"], a=ep(d["a"]), b=ep(d["b"]), group=d.get("group"),
            description=d.get("description", ""),
            params=FlowParams(
                crypto_profile=p["crypto_profile"], inner_protocol=p["inner_protocol"],
                mode=p["mode"], soft=LimitsOverride(**p["soft"]),
                hard=LimitsOverride(**p["hard"]), key_management=p["key_management"],
                on_demand=p["on_demand"], auth_method=p.get("auth_method", "psk"),
                psk_file=p.get("psk_file"),
            ),
        )


@dataclass(frozen=True)
class PolicyGroup:
    name: str
    members: tuple[str, ...]
    params: FlowParams
    description: str = ""

    def expand(self) -> list[Policy]:
        """One policy per pair of members (seed section 9: adding a member meshes it with
        every other one); names are stable so that existing pairs are left alone."""
        out = []
        for x, y in itertools.combinations(sorted(set(self.members)), 2):
            out.append(Policy(name=group_policy_name(self.name, x, y), a=Endpoint(x),
                              b=Endpoint(y), params=self.params, group=self.name))
        return out


def group_policy_name(group: str, a: str, b: str) -> str:
    """':' is not allowed in configured names (name-type), so these never collide."""
    x, y = sorted((a, b))
    return f"{group}:{x}:{y}"


@dataclass(frozen=True)
class RoadWarrior:
    """A remote host connecting to a gateway NSF (RFC 9061 host-to-gateway, IKE case)."""

    name: str
    gateway: str
    identity: str  # FQDN, a DNS SAN of its certificate
    inner_address: IpAddr | None
    crypto_profile: str
    prefixes: tuple[IpNet, ...] = ()  # empty: the gateway's protected prefixes
    pool: IpNet | None = None  # virtual IPs handed out by the gateway (else inner_address)


@dataclass(frozen=True)
class FlowConfig:
    nsfs: dict[str, Nsf] = field(default_factory=dict)
    profiles: dict[str, CryptoProfile] = field(default_factory=dict)
    policies: dict[str, Policy] = field(default_factory=dict)
    groups: dict[str, PolicyGroup] = field(default_factory=dict)
    road_warriors: dict[str, RoadWarrior] = field(default_factory=dict)

    def all_policies(self) -> dict[str, Policy]:
        """Configured policies plus those generated from policy groups."""
        out = dict(self.policies)
        for g in self.groups.values():
            for p in g.expand():
                out[p.name] = p
        return out


# ---- parsing the northbound configuration ----------------------------------------------------


def _t(el: etree._Element | None, path: str) -> str | None:
    if el is None:
        return None
    v = el.findtext("/".join(Q + p for p in path.split("/")))
    return v.strip() if v is not None else None


def _opt_int(el: etree._Element | None, path: str) -> int | None:
    v = _t(el, path)
    return None if v is None else int(v)


def _limits(el: etree._Element | None, default: Limits) -> Limits:
    return LimitsOverride(_opt_int(el, "time"), _opt_int(el, "bytes"),
                          _opt_int(el, "packets")).over(default)


def _override(el: etree._Element | None) -> LimitsOverride:
    return LimitsOverride(_opt_int(el, "time"), _opt_int(el, "bytes"), _opt_int(el, "packets"))


def _ports(el: etree._Element | None) -> tuple[PortRange, ...]:
    if el is None:
        return ()
    return tuple(PortRange(int(_t(p, "start") or 0), int(_t(p, "end") or 0))
                 for p in el.iterfind(Q + "ports"))


def _endpoint(el: etree._Element | None) -> Endpoint:
    if el is None:
        raise RpcError("application", "data-missing", "policy endpoint missing")
    return Endpoint(
        nsf=_t(el, "nsf") or "",
        prefixes=tuple(ipaddress.ip_network(p.text.strip(), strict=False)
                       for p in el.iterfind(Q + "prefix") if p.text),
        ports=_ports(el),
    )


def _params(el: etree._Element) -> FlowParams:
    proto = _t(el, "inner-protocol") or "any"
    return FlowParams(
        crypto_profile=_t(el, "crypto-profile") or "",
        inner_protocol=None if proto == "any" else int(proto),
        mode="transport" if _t(el, "mode") == "transport" else "tunnel",
        soft=_override(el.find(Q + "lifetime-soft")),
        hard=_override(el.find(Q + "lifetime-hard")),
        key_management="ike" if el.find(Q + "ike") is not None else "ikeless",
        on_demand=_t(el, "ikeless/on-demand") == "true",
        auth_method=_t(el, "ike/auth-method") or "psk",
        psk_file=_t(el, "ike/pre-shared-key-file"),
    )


def parse_nsf(el: etree._Element) -> Nsf:
    mgmt = el.find(Q + "management")
    nat_el = el.find(Q + "nat")
    nat = None
    if nat_el is not None:
        nat = Nat(ipaddress.ip_address(_t(nat_el, "public-address") or ""),
                  int(_t(nat_el, "public-port") or 4500))
    return Nsf(
        name=_t(el, "name") or "",
        address=_t(mgmt, "address") or "",
        port=int(_t(mgmt, "port") or 830),
        username=_t(mgmt, "username") or "",
        private_key_file=_t(mgmt, "private-key-file"),
        password_file=_t(mgmt, "password-file"),
        password=_t(mgmt, "password"),
        host_key=_t(mgmt, "host-key") or "",
        data_plane_address=ipaddress.ip_address(_t(el, "data-plane-address") or ""),
        protected_prefixes=tuple(ipaddress.ip_network(p.text.strip(), strict=False)
                                 for p in el.iterfind(Q + "protected-prefix") if p.text),
        nat=nat,
        dataplane=_t(el, "dataplane") or "kernel",
        ike=NsfIke(_t(el, "ike/identity-fqdn"), _t(el, "ike/certificate-file"),
                   _t(el, "ike/private-key-file")),
    )


def parse_profile(el: etree._Element) -> CryptoProfile:
    d = CryptoProfile(name="")
    return CryptoProfile(
        name=_t(el, "name") or "",
        encryption=int(_t(el, "encryption-algorithm") or d.encryption),
        key_length=int(_t(el, "key-length") or d.key_length),
        integrity=int(_t(el, "integrity-algorithm") or d.integrity),
        soft=_limits(el.find(Q + "lifetime-soft"), d.soft),
        hard=_limits(el.find(Q + "lifetime-hard"), d.hard),
        anti_replay_window=int(_t(el, "anti-replay-window-size") or d.anti_replay_window),
        ext_seq_num=(_t(el, "ext-seq-num") or "true") == "true",
        ike=IkeSaParams(
            encryption=int(_t(el, "ike-sa/encryption-algorithm") or 20),
            key_length=int(_t(el, "ike-sa/key-length") or 128),
            integrity=int(_t(el, "ike-sa/integrity-algorithm") or 12),
            dh_group=int(_t(el, "ike-sa/dh-group") or 19),
            pfs_group=int(_t(el, "ike-sa/pfs-group") or 0),
            rekey_time=int(_t(el, "ike-sa/rekey-time") or 14400),
        ),
    )


def parse_policy(el: etree._Element) -> Policy:
    return Policy(
        name=_t(el, "name") or "",
        a=_endpoint(el.find(Q + "endpoint-a")),
        b=_endpoint(el.find(Q + "endpoint-b")),
        params=_params(el),
        description=_t(el, "description") or "",
    )


def parse_group(el: etree._Element) -> PolicyGroup:
    return PolicyGroup(
        name=_t(el, "name") or "",
        members=tuple(m.text.strip() for m in el.iterfind(Q + "member") if m.text),
        params=_params(el),
        description=_t(el, "description") or "",
    )


def parse_road_warrior(el: etree._Element) -> RoadWarrior:
    return RoadWarrior(
        name=_t(el, "name") or "",
        gateway=_t(el, "gateway") or "",
        identity=_t(el, "identity") or "",
        inner_address=(ipaddress.ip_address(v) if (v := _t(el, "inner-address")) else None),
        crypto_profile=_t(el, "crypto-profile") or "",
        pool=ipaddress.ip_network(v, strict=False) if (v := _t(el, "pool")) else None,
        prefixes=tuple(ipaddress.ip_network(p.text.strip(), strict=False)
                       for p in el.iterfind(Q + "prefix") if p.text),
    )


def parse_config(data: etree._Element) -> FlowConfig:
    """`data` holds `<flow-protection>` (a `<data>`/`<config>` root) or is it; already
    validated by libyang, so structure is trusted and only values are interpreted."""
    root = data if data.tag == Q + "flow-protection" else data.find(Q + "flow-protection")
    if root is None:
        return FlowConfig()
    nsfs = [parse_nsf(e) for e in root.iterfind(f"{Q}nsfs/{Q}nsf")]
    profiles = [parse_profile(e) for e in root.iterfind(f"{Q}crypto-profiles/{Q}crypto-profile")]
    policies = [parse_policy(e) for e in root.iterfind(f"{Q}policies/{Q}policy")]
    groups = [parse_group(e) for e in root.iterfind(f"{Q}policy-groups/{Q}policy-group")]
    rws = [parse_road_warrior(e)
           for e in root.iterfind(f"{Q}road-warriors/{Q}road-warrior")]
    return FlowConfig(
        nsfs={n.name: n for n in nsfs},
        profiles={p.name: p for p in profiles},
        policies={p.name: p for p in policies},
        groups={g.name: g for g in groups},
        road_warriors={r.name: r for r in rws},
    )


# ---- flows and profile checks --------------------------------------------------------


@dataclass(frozen=True)
class FlowSpec:
    """One protected prefix pair of a policy, from endpoint a's point of view."""

    index: int
    a_prefix: IpNet
    b_prefix: IpNet


def policy_flows(policy: Policy, a: Nsf, b: Nsf) -> list[FlowSpec]:
    """The prefix pairs a policy protects (same address family only). Transport mode
    protects the two data-plane addresses themselves."""
    if policy.params.mode == "transport":
        pa = policy.a.prefixes or (ipaddress.ip_network(a.data_plane_address),)
        pb = policy.b.prefixes or (ipaddress.ip_network(b.data_plane_address),)
    else:
        pa = policy.a.prefixes or a.protected_prefixes
        pb = policy.b.prefixes or b.protected_prefixes
    pairs = [(x, y) for x in pa for y in pb if x.version == y.version]
    return [FlowSpec(i, x, y) for i, (x, y) in enumerate(pairs)]


def check_profile(profile: CryptoProfile) -> list[str]:
    """What is wrong with a profile's algorithms (empty list: fine)."""
    errs: list[str] = []
    enc = ENCRYPTION.get(profile.encryption)
    if enc is None:
        return [f"encryption algorithm {profile.encryption} is not supported "
                f"(supported: {sorted(ENCRYPTION)})"]
    if enc.number == 11:
        if profile.key_length != 0:
            errs.append("NULL encryption takes key-length 0")
    elif profile.key_length % 8 or (profile.key_length // 8 + enc.salt_bytes
                                    not in enc.key_bytes):
        ok = sorted((n - enc.salt_bytes) * 8 for n in enc.key_bytes)
        errs.append(f"{enc.name} takes key-length {' or '.join(map(str, ok))} bits, "
                    f"not {profile.key_length}")
    if enc.aead and profile.integrity != 0:
        errs.append(f"{enc.name} is an AEAD algorithm: integrity-algorithm must be 0")
    if not enc.aead and profile.integrity == 0 and enc.number != 11:
        errs.append(f"{enc.name} needs an integrity algorithm")
    if profile.integrity and profile.integrity not in INTEGRITY:
        errs.append(f"integrity algorithm {profile.integrity} is not supported "
                    f"(supported: {sorted(INTEGRITY)})")
    return errs
