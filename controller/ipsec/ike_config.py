"""The IKE case (RFC 9061 case 1): policies → ietf-i2nsf-ike configuration on the NSFs.

Here the controller does not make SAs; it configures the NSFs' IKE daemons (strongSwan via
the agents' `ike` applier) and follows what they report:

* **One IKE connection per pair of NSFs** (`fp/<x>/<y>`, names sorted), holding one SPD
  entry per protected prefix pair of every IKE-case policy between them (`fp/<policy>/<i>`),
  so the pair has one IKE SA and one Child SA per flow. charon picks a responder's
  connection by identity and never by traffic selector: two connections between the same
  identities would see the Child SAs of one refused by the other (TS_UNACCEPTABLE). The
  pair's policies therefore share the authentication method and the IKE SA settings.
* **PAD entries**: `fp/self/psk|cert` (the NSF's own identity; for certificates its key
  and certificate from the controller's CA), `fp/peer/<nsf>/psk|cert` (the peer's identity
  bound to the pair's pre-shared key or to the CA certificates), `fp/rw/<name>` (a road
  warrior's FQDN and the CA).
* **Initiator**: the NSF with the smaller name starts the IKE SA (`autostartup start`), the
  other only answers (`add`), so there is one IKE SA and not two crossing ones. Commits go
  responder first (`transact(commit_order=...)`): an initiator that speaks before its peer
  has the connection gets NO_PROPOSAL_CHOSEN and charon does not try again.
* **Road warriors** (host-to-gateway): on the gateway a connection per host (`fp/rw/<name>`,
  peer address any, the host's certificate identity, its fixed inner address or its
  virtual IP pool as remote traffic selector); the host gets a swanctl bundle
  (`road_warrior_bundle`) that asks for a virtual IP when there is a pool.

Every NSF's `fp/` entries are written whole (`replace`) and stale ones removed (`remove`),
in one all-or-nothing transaction per connected group of NSFs; agents that are unchanged
are not touched. Status comes from the agents' `i2nsf-ike-events` notifications: a
`child-sa-up` for a policy's SPD entry makes it active, `auth-failure` makes its pair's
policies failed with charon's reason, `child-sa-failed` the policy of the SPD entry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from controller.ipsec.ca import ControllerCA, Credential, cert_has_identity, load_credential_files
from controller.ipsec.model import (
    MODULE,
    CryptoProfile,
    FlowConfig,
    Nsf,
    Policy,
    RoadWarrior,
    policy_flows,
)
from netconf_core.errors import NC_NS
from netconf_core.i2nsf.namespaces import IKE_EVENTS_NS
from netconf_core.i2nsf.namespaces import IKE_NS as _IKE_NS
from netconf_core.i2nsf.proposals import DH_GROUPS, ENCRYPTION, INTEGRITY

log = logging.getLogger(__name__)

IKE_NS = _IKE_NS
EV_NS = IKE_EVENTS_NS
Q = f"{{{IKE_NS}}}"
EV = f"{{{EV_NS}}}"
OPERATION = f"{{{NC_NS}}}operation"
PREFIX = "fp"
MIN_PSK_BYTES = 16

# ---- names ---------------------------------------------------------------------------------


def pair(x: str, y: str) -> tuple[str, str]:
    a, b = sorted((x, y))
    return a, b


def conn_name(x: str, y: str) -> str:
    a, b = pair(x, y)
    return f"{PREFIX}/{a}/{b}"


def spd_name(policy: str, flow: int) -> str:
    return f"{PREFIX}/{policy}/{flow}"


def rw_name(name: str) -> str:
    return f"{PREFIX}/rw/{name}"


def identity(nsf: Nsf) -> str:
    """The NSF's IKE identity: its FQDN if configured, else its data-plane address."""
    return nsf.ike.fqdn or str(nsf.data_plane_address)


def ike_policies(cfg: FlowConfig) -> dict[str, Policy]:
    return {n: p for n, p in cfg.all_policies().items() if p.params.key_management == "ike"}


def _pair_params(pol: Policy, prof: CryptoProfile) -> dict[str, Any]:
    """What all policies of one NSF pair must share (they share one IKE connection)."""
    soft, hard = pol.lifetimes(prof)
    return {"auth-method": pol.params.auth_method, "psk-file": pol.params.psk_file,
            "ike-sa": vars(prof.ike), "lifetime-soft": vars(soft),
            "lifetime-hard": vars(hard)}


# ---- checks libyang cannot do --------------------------------------------------------------

Problem = tuple[str, str, str, str | None]  # path, message, error-tag, error-app-tag


def _fp(path: str) -> str:
    return f"/{MODULE}:flow-protection/{path}"


def _ppath(p: Policy) -> str:
    if p.group is not None:
        return _fp(f"policy-groups/policy-group[name='{p.group}']")
    return _fp(f"policies/policy[name='{p.name}']")


def read_psk_file(path: str) -> bytes:
    """A pre-shared key from a file (surrounding whitespace dropped). ValueError if absent
    or shorter than MIN_PSK_BYTES; the key itself never goes into the message."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read pre-shared-key-file {path}: {exc.strerror}") from exc
    if len(data) < MIN_PSK_BYTES:
        raise ValueError(f"pre-shared-key-file {path} holds {len(data)} bytes; at least "
                         f"{MIN_PSK_BYTES} are needed")
    return data


def _check_algorithms(prof: CryptoProfile) -> list[str]:
    out = []
    ike = prof.ike
    enc = ENCRYPTION.get(ike.encryption)
    if enc is None or not enc[3]:
        out.append(f"IKE SA encryption algorithm {ike.encryption} is not supported "
                   f"(supported: {sorted(k for k, v in ENCRYPTION.items() if v[3])})")
    elif enc[1] is not None and ike.key_length not in enc[1]:
        out.append(f"IKE SA encryption algorithm {ike.encryption} takes key lengths "
                   f"{list(enc[1])}, not {ike.key_length}")
    if ike.integrity not in INTEGRITY:
        out.append(f"IKE SA integrity/PRF algorithm {ike.integrity} is not supported "
                   f"(supported: {sorted(INTEGRITY)})")
    for what, g in (("dh-group", ike.dh_group), ("pfs-group", ike.pfs_group)):
        if g not in DH_GROUPS and not (what == "pfs-group" and g == 0):
            out.append(f"IKE SA {what} {g} is not supported (supported: {sorted(DH_GROUPS)})")
    return out


def check_ike(cfg: FlowConfig) -> list[Problem]:
    """Problems of the IKE-case part of `cfg` (the IKE-less checks of model.check_config
    cover the rest: NSFs, profile, lifetimes, selectors, overlaps)."""
    out: list[Problem] = []
    pairs: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    used_profiles: set[str] = set()
    cert_nsfs: set[str] = set()
    for pol in sorted(ike_policies(cfg).values(), key=lambda p: p.name):
        path, what = _ppath(pol), f"policy {pol.name!r}"
        a, b = cfg.nsfs.get(pol.a.nsf), cfg.nsfs.get(pol.b.nsf)
        prof = cfg.profiles.get(pol.params.crypto_profile)
        if a is None or b is None or prof is None or a.name == b.name:
            continue  # reported by model.check_config
        used_profiles.add(prof.name)
        prm = pol.params
        if prm.psk_file is not None:
            if prm.auth_method != "psk":
                out.append((path + "/ike/pre-shared-key-file", f"{what}: pre-shared-key-file "
                            "needs auth-method psk", "invalid-value", None))
            else:
                try:
                    read_psk_file(prm.psk_file)
                except ValueError as exc:
                    out.append((path + "/ike/pre-shared-key-file", f"{what}: missing "
                                f"pre-shared key: {exc}", "data-missing", "missing-psk"))
        if prm.auth_method == "certificate":
            cert_nsfs.update((a.name, b.name))
        if prm.mode == "transport" and (a.ike.fqdn or b.ike.fqdn):
            out.append((path + "/mode", f"{what}: transport mode in the IKE case needs IP "
                        "address identities (no identity-fqdn)", "invalid-value", None))
        key = pair(a.name, b.name)
        params = _pair_params(pol, prof)
        seen = pairs.get(key)
        if seen is None:
            pairs[key] = (pol.name, params)
        elif seen[1] != params:
            diff = sorted(k for k in params if params[k] != seen[1].get(k))
            out.append((path + "/ike", f"{what}: policies between {key[0]} and {key[1]} share "
                        f"one IKE SA, but its {', '.join(diff)} differ from policy "
                        f"{seen[0]!r}", "invalid-value", "ike-pair-conflict"))
    names = {r.identity.lower(): r.name for r in cfg.road_warriors.values()}
    for rw in sorted(cfg.road_warriors.values(), key=lambda r: r.name):
        path = _fp(f"road-warriors/road-warrior[name='{rw.name}']")
        gw = cfg.nsfs.get(rw.gateway)
        prof = cfg.profiles.get(rw.crypto_profile)
        if gw is None or prof is None:
            continue  # leafrefs: libyang
        used_profiles.add(prof.name)
        cert_nsfs.add(gw.name)
        if names.get(rw.identity.lower()) != rw.name:
            out.append((path + "/identity", f"road warrior {rw.name!r}: identity "
                        f"{rw.identity!r} is used twice", "invalid-value", None))
        if not (rw.prefixes or gw.protected_prefixes):
            out.append((path + "/prefix", f"road warrior {rw.name!r}: no network to reach "
                        f"(give prefix or set {gw.name}'s protected-prefix)", "data-missing",
                        None))
        inner = rw.pool if rw.pool is not None else rw.inner_address
        leaf = "pool" if rw.pool is not None else "inner-address"
        if inner is not None and any(p.version != inner.version
                                     for p in (rw.prefixes or gw.protected_prefixes)):
            out.append((f"{path}/{leaf}", f"road warrior {rw.name!r}: {leaf} and prefixes "
                        "must be of one address family", "invalid-value", None))
        if rw.pool is not None:
            for other in sorted(cfg.road_warriors.values(), key=lambda r: r.name):
                if (other.name < rw.name and other.gateway == rw.gateway
                        and other.pool is not None
                        and other.pool.version == rw.pool.version
                        and other.pool.overlaps(rw.pool)):  # type: ignore[arg-type]
                    out.append((path + "/pool", f"road warrior {rw.name!r}: pool {rw.pool} "
                                f"overlaps road warrior {other.name!r}'s pool {other.pool} "
                                f"on gateway {rw.gateway}", "invalid-value", "pool-overlap"))
    for name in sorted(used_profiles):
        for m in _check_algorithms(cfg.profiles[name]):
            out.append((_fp(f"crypto-profiles/crypto-profile[name='{name}']/ike-sa"),
                        f"crypto profile {name!r}: {m}", "invalid-value",
                        "unsupported-algorithm"))
    for name in sorted(cert_nsfs):
        nsf = cfg.nsfs[name]
        if nsf.ike.certificate_file is None:
            continue
        path = _fp(f"nsfs/nsf[name='{name}']/ike/certificate-file")
        try:
            cred = load_credential_files(nsf.ike.certificate_file,
                                         nsf.ike.private_key_file or "")
        except ValueError as exc:
            out.append((path, f"NSF {name!r}: {exc}", "invalid-value", "bad-certificate"))
            continue
        if not cert_has_identity(cred.cert, identity(nsf)):
            out.append((path, f"NSF {name!r}: the certificate "
                        f"({cred.cert.subject.rfc4514_string()}) does not carry the NSF's IKE "
                        f"identity {identity(nsf)!r}", "invalid-value", "identity-mismatch"))
    return out


# ---- configuration elements ------------------------------------------------------------------


def _el(parent: etree._Element, name: str, text: object = None) -> etree._Element:
    e = etree.SubElement(parent, Q + name)
    if text is not None:
        e.text = str(text)
    return e


def _b64(der: bytes) -> str:
    import base64

    return base64.b64encode(der).decode()


def _hex(secret: bytes) -> str:
    return ":".join(f"{b:02x}" for b in secret)


def _identity_el(entry: etree._Element, ident: str) -> None:
    try:
        addr = ipaddress.ip_address(ident)
    except ValueError:
        _el(entry, "fqdn-string", ident)
        return
    _el(entry, "ipv4-address" if addr.version == 4 else "ipv6-address", str(addr))


def pad_entry(name: str, ident: str, *, psk: bytes | None = None, psk_method: bool = False,
              cred: Credential | None = None,
              cas: Iterable[x509.Certificate] = ()) -> etree._Element:
    e = etree.Element(Q + "pad-entry")
    _el(e, "name", name)
    _identity_el(e, ident)
    auth = _el(e, "peer-authentication")
    if psk_method or psk is not None:
        _el(auth, "auth-method", "pre-shared")
        if psk is not None:
            _el(_el(auth, "pre-shared"), "secret", _hex(psk))
        return e
    _el(auth, "auth-method", "digital-signature")
    ds = _el(auth, "digital-signature")
    if cred is not None:
        _el(ds, "cert-data", _b64(cred.cert_der))
        _el(ds, "private-key", _b64(cred.key_der))
    for ca in cas:
        _el(ds, "ca-data", _b64(ca.public_bytes(serialization.Encoding.DER)))
    return e


@dataclass
class Spd:
    name: str
    local: str
    remote: str
    proto: int | None = None
    lports: tuple[tuple[int, int], ...] = ()
    rports: tuple[tuple[int, int], ...] = ()
    mode: str = "tunnel"
    tunnel: tuple[str, str] | None = None


def _spd_el(parent: etree._Element, s: Spd, prof: CryptoProfile) -> None:
    e = _el(parent, "spd-entry")
    _el(e, "name", s.name)
    cfg = _el(e, "ipsec-policy-config")
    _el(cfg, "anti-replay-window-size", prof.anti_replay_window)
    ts = _el(cfg, "traffic-selector")
    _el(ts, "local-prefix", s.local)
    _el(ts, "remote-prefix", s.remote)
    if s.proto is not None:
        _el(ts, "inner-protocol", s.proto)
    for tag, ports in (("local-ports", s.lports), ("remote-ports", s.rports)):
        for start, end in ports:
            pr = _el(ts, tag)
            _el(pr, "start", start)
            _el(pr, "end", end)
    pi = _el(cfg, "processing-info")
    _el(pi, "action", "protect")
    sa = _el(pi, "ipsec-sa-cfg")
    _el(sa, "ext-seq-num", "true" if prof.ext_seq_num else "false")
    _el(sa, "mode", s.mode)
    _el(sa, "protocol-parameters", "esp")
    algs = _el(sa, "esp-algorithms")
    if prof.integrity:
        _el(algs, "integrity", prof.integrity)
    if prof.encryption != 11:
        enc = _el(algs, "encryption")
        _el(enc, "id", 1)
        _el(enc, "algorithm-type", prof.encryption)
        _el(enc, "key-length", prof.key_length)
    if s.tunnel is not None:
        tun = _el(sa, "tunnel")
        _el(tun, "local", s.tunnel[0])
        _el(tun, "remote", s.tunnel[1])


def conn_entry(name: str, *, autostartup: str, local_pad: str, remote_pad: str,
               prof: CryptoProfile, soft: Any, hard: Any, spds: list[Spd],
               udp: bool = False, pool: str | None = None) -> etree._Element:
    ike = prof.ike
    e = etree.Element(Q + "conn-entry")
    _el(e, "name", name)
    _el(e, "autostartup", autostartup)
    _el(_el(e, "ike-sa-lifetime-soft"), "rekey-time", ike.rekey_time)
    _el(e, "ike-sa-intr-alg", ike.integrity)
    enc = _el(e, "ike-sa-encr-alg")
    _el(enc, "id", 1)
    _el(enc, "algorithm-type", ike.encryption)
    _el(enc, "key-length", ike.key_length)
    _el(e, "dh-group", ike.dh_group)
    _el(_el(e, "local"), "local-pad-entry-name", local_pad)
    _el(_el(e, "remote"), "remote-pad-entry-name", remote_pad)
    if udp:
        _el(_el(e, "encapsulation-type"), "espencap", "espinudp")
    spd = _el(e, "spd")
    for s in spds:
        _spd_el(spd, s, prof)
    info = _el(e, "child-sa-info")
    if ike.pfs_group:
        _el(info, "fs-groups", ike.pfs_group)
    for tag, lim in (("child-sa-lifetime-soft", soft), ("child-sa-lifetime-hard", hard)):
        lt = _el(info, tag)
        _el(lt, "time", lim.time)
        _el(lt, "bytes", lim.bytes)
        _el(lt, "packets", lim.packets)
    if pool is not None:  # i2nsf-ike-events augment: virtual IPs for road warriors
        etree.SubElement(e, EV + "virtual-ip-pool", nsmap={"i2nsf-ikev": EV_NS}).text = pool
    return e


def host_net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> str:
    assert addr is not None
    return str(ipaddress.ip_network(addr))


# ---- the desired configuration of every NSF ------------------------------------------------


@dataclass
class NsfIke:
    """What one NSF must hold: our PAD and connection entries by name."""

    pads: dict[str, etree._Element] = field(default_factory=dict)
    conns: dict[str, etree._Element] = field(default_factory=dict)

    def digest(self) -> str:
        h = hashlib.sha256()
        for d in (self.pads, self.conns):
            for name in sorted(d):
                h.update(etree.tostring(d[name], method="c14n"))
        return h.hexdigest()

    def names(self) -> set[str]:
        return set(self.pads) | set(self.conns)


@dataclass
class Desired:
    nsfs: dict[str, NsfIke] = field(default_factory=dict)
    spd_policy: dict[str, str] = field(default_factory=dict)  # SPD entry → policy
    conn_policies: dict[str, list[str]] = field(default_factory=dict)  # conn → policies
    policy_nsfs: dict[str, tuple[str, str]] = field(default_factory=dict)
    edges: set[tuple[str, str]] = field(default_factory=set)  # NSF pairs
    errors: dict[str, str] = field(default_factory=dict)  # policy/rw → why not built


class Credentials:
    """PSKs (in the store) and certificates (the CA) the configuration needs."""

    def __init__(self, store: Any, ca: ControllerCA) -> None:
        self.store = store
        self.ca = ca

    def psk(self, x: str, y: str, file: str | None) -> bytes:
        if file is not None:
            return read_psk_file(file)
        a, b = pair(x, y)
        key = f"ike:psk:{a}:{b}"
        v = self.store.get_meta(key)
        if v is None:
            v = secrets.token_bytes(32).hex()
            self.store.put_meta(key, v)
            log.info("pre-shared key generated for NSF pair %s/%s", a, b)
        return bytes.fromhex(v)

    def nsf_cert(self, nsf: Nsf) -> Credential:
        if nsf.ike.certificate_file is not None:
            return load_credential_files(nsf.ike.certificate_file,
                                         nsf.ike.private_key_file or "")
        return self.ca.credential("nsf", nsf.name, identity(nsf))

    def rw_cert(self, rw: RoadWarrior) -> Credential:
        return self.ca.credential("rw", rw.name, rw.identity)


def build(cfg: FlowConfig, creds: Credentials) -> Desired:
    """Every NSF's PAD and connection entries for the IKE-case policies and road warriors
    of `cfg` (already checked)."""
    d = Desired()
    groups: dict[tuple[str, str], list[Policy]] = {}
    for pol in sorted(ike_policies(cfg).values(), key=lambda p: p.name):
        if pol.a.nsf in cfg.nsfs and pol.b.nsf in cfg.nsfs:
            groups.setdefault(pair(pol.a.nsf, pol.b.nsf), []).append(pol)
    cas = creds.ca.trust_anchors() if (
        any(p.params.auth_method == "certificate" for g in groups.values() for p in g)
        or cfg.road_warriors) else []
    for (x, y), pols in sorted(groups.items()):
        first = pols[0]
        prof = cfg.profiles[first.params.crypto_profile]
        soft, hard = first.lifetimes(prof)
        cname = conn_name(x, y)
        try:
            auth = first.params.auth_method
            if auth == "psk":
                psk = creds.psk(x, y, first.params.psk_file)
                local = {n: pad_entry(f"{PREFIX}/self/psk", identity(cfg.nsfs[n]),
                                      psk_method=True) for n in (x, y)}
                remote = {n: pad_entry(f"{PREFIX}/peer/{m}/psk", identity(cfg.nsfs[m]),
                                       psk=psk) for n, m in ((x, y), (y, x))}
            else:
                local = {n: pad_entry(f"{PREFIX}/self/cert", identity(cfg.nsfs[n]),
                                      cred=creds.nsf_cert(cfg.nsfs[n])) for n in (x, y)}
                remote = {n: pad_entry(f"{PREFIX}/peer/{m}/cert", identity(cfg.nsfs[m]),
                                       cas=cas) for n, m in ((x, y), (y, x))}
        except ValueError as exc:
            for p in pols:
                d.errors[p.name] = str(exc)
            continue
        d.edges.add((x, y))
        d.conn_policies[cname] = [p.name for p in pols]
        for n, m in ((x, y), (y, x)):
            me, peer = cfg.nsfs[n], cfg.nsfs[m]
            spds: list[Spd] = []
            for pol in pols:
                d.policy_nsfs[pol.name] = (pol.a.nsf, pol.b.nsf)
                a, b = cfg.nsfs[pol.a.nsf], cfg.nsfs[pol.b.nsf]
                mine, theirs = (pol.a, pol.b) if n == a.name else (pol.b, pol.a)
                proto = pol.params.inner_protocol
                for f in policy_flows(pol, a, b):
                    lp, rp = (f.a_prefix, f.b_prefix) if n == a.name else (f.b_prefix,
                                                                           f.a_prefix)
                    s = Spd(spd_name(pol.name, f.index), str(lp), str(rp), proto,
                            tuple((r.start, r.end) for r in mine.ports),
                            tuple((r.start, r.end) for r in theirs.ports),
                            pol.params.mode)
                    if s.mode == "tunnel":
                        s.tunnel = (str(me.data_plane_address), str(peer.reachable_address))
                    d.spd_policy[s.name] = pol.name
                    spds.append(s)
            nsf_cfg = d.nsfs.setdefault(n, NsfIke())
            lpad, rpad = local[n], remote[n]
            nsf_cfg.pads[lpad.findtext(Q + "name") or ""] = lpad
            nsf_cfg.pads[rpad.findtext(Q + "name") or ""] = rpad
            nsf_cfg.conns[cname] = conn_entry(
                cname, autostartup="start" if n == x else "add",
                local_pad=lpad.findtext(Q + "name") or "",
                remote_pad=rpad.findtext(Q + "name") or "", prof=prof, soft=soft,
                hard=hard, spds=spds, udp=bool(me.nat or peer.nat))
    for rw in sorted(cfg.road_warriors.values(), key=lambda r: r.name):
        gw = cfg.nsfs.get(rw.gateway)
        prof = cfg.profiles.get(rw.crypto_profile)
        if gw is None or prof is None:
            continue
        try:
            lpad = pad_entry(f"{PREFIX}/self/cert", identity(gw), cred=creds.nsf_cert(gw))
        except ValueError as exc:
            d.errors[rw.name] = str(exc)
            continue
        name = rw_name(rw.name)
        rpad = pad_entry(name, rw.identity, cas=cas)
        any_addr = "0.0.0.0" if gw.data_plane_address.version == 4 else "::"
        inner = str(rw.pool) if rw.pool is not None else host_net(rw.inner_address)
        spds = [Spd(f"{name}/{i}", str(p), inner,
                    tunnel=(str(gw.data_plane_address), any_addr))
                for i, p in enumerate(rw.prefixes or gw.protected_prefixes)]
        nsf_cfg = d.nsfs.setdefault(gw.name, NsfIke())
        nsf_cfg.pads[lpad.findtext(Q + "name") or ""] = lpad
        nsf_cfg.pads[name] = rpad
        soft, hard = prof.soft, prof.hard
        nsf_cfg.conns[name] = conn_entry(
            name, autostartup="add", local_pad=lpad.findtext(Q + "name") or "",
            remote_pad=name, prof=prof, soft=soft, hard=hard, spds=spds,
            pool=str(rw.pool) if rw.pool is not None else None)
    return d


Present = tuple[set[str], set[str]]  # our PAD entry names, our conn-entry names


def edit_config(want: NsfIke, present: Present) -> etree._Element:
    """`<config>` that makes the NSF's `fp/` entries exactly `want`."""
    cfg = etree.Element(f"{{{NC_NS}}}config", nsmap={"nc": NC_NS})
    root = etree.SubElement(cfg, Q + "ipsec-ike", nsmap={None: IKE_NS})
    pad = etree.SubElement(root, Q + "pad")
    for _name, e in sorted(want.pads.items()):
        e = _copy(e)
        e.set(OPERATION, "replace")
        pad.append(e)
    for name in sorted(present[0] - set(want.pads)):
        x = _el(pad, "pad-entry")
        x.set(OPERATION, "remove")
        _el(x, "name", name)
    for _name, e in sorted(want.conns.items()):
        e = _copy(e)
        e.set(OPERATION, "replace")
        root.append(e)
    for name in sorted(present[1] - set(want.conns)):
        x = _el(root, "conn-entry")
        x.set(OPERATION, "remove")
        _el(x, "name", name)
    if not len(pad):
        root.remove(pad)
    return cfg


def _copy(e: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(e))
