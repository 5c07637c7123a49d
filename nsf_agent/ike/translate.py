"""Translation of the RFC 9061 ietf-i2nsf-ike tree into strongSwan vici messages.

One `conn-entry` becomes one vici connection (`load-conn`), named with a prefix so that the
applier can tell its own connections from any others loaded in the same charon; its SPD
entries become the connection's CHILD_SA configs. PAD entries give identities and
credentials: pre-shared and EAP secrets go to `load-shared` (by id, so they can be unloaded
one by one), private keys to `load-key`, the local certificate to `load-cert` (charon finds
it by the connection's local identity) and CA certificates to `load-authority` (named, so
they can be unloaded). Keeping credentials out of the connection means a certificate or CA
rotation leaves the connection definition unchanged: charon 5.9 closes and restarts the
Child SAs of a replaced `start` connection, which would cost the initiator a gap. A remote
peer's pinned certificate and raw public keys stay inside the connection.

Everything strongSwan cannot express is rejected here with an RpcError pointing at the node,
so that a commit fails before charon is touched.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.i2nsf.namespaces import IKE_EVENTS_NS, IKE_NS
from netconf_core.i2nsf.proposals import (  # noqa: F401 - the agent's names for them
    DEFAULT_KEY_LENGTH,
    DH_GROUPS,
    ENCRYPTION,
    INTEGRITY,
    esp_proposals,
    ike_proposals,
)

log = logging.getLogger(__name__)

NS = IKE_NS
Q = f"{{{NS}}}"
EXT_NS = IKE_EVENTS_NS  # our augments (virtual-ip-pool)
EXT = f"{{{EXT_NS}}}"
ROOT = "/ietf-i2nsf-ike:ipsec-ike"

# IANA EAP method types strongSwan has plugins for
EAP_METHODS: dict[int, str] = {
    4: "md5", 6: "gtc", 13: "tls", 18: "sim", 21: "ttls", 23: "aka", 25: "peap",
    26: "mschapv2", 38: "tnc",
}

# IKEv2 Authentication Method (ds-algorithm) → strongSwan auth keyword
SIGNATURE_AUTH: dict[int, str] = {1: "rsa", 9: "ecdsa", 10: "ecdsa", 11: "ecdsa", 14: "pubkey"}


@dataclass(frozen=True)
class Options:
    """Daemon-wide facts the translation must respect (they are not per connection in
    strongSwan) and agent policy for what RFC 9061 leaves open."""

    prefix: str = "i2nsf-"
    fragment_size: int = 1280  # charon.fragment_size of the daemon
    nat_t_port: int = 4500  # charon.port_nat_t of the daemon
    dpd_delay: int = 30  # seconds; RFC 9061 has no DPD setting
    mobike: bool = False
    # kernel-libipsec cannot do extended sequence numbers ("ESN not supported" when the SA
    # is installed): ext-seq-num true is then negotiated as 32-bit sequence numbers
    libipsec: bool = False


@dataclass(frozen=True)
class Secret:
    """A vici `load-shared` message. The secret never appears in repr or logs."""

    id: str
    type: str  # IKE | EAP
    data: bytes = field(repr=False)
    owners: tuple[str, ...] = ()

    def message(self) -> dict[str, object]:
        return {"id": self.id, "type": self.type, "data": self.data, "owners": list(self.owners)}


@dataclass(frozen=True)
class PrivateKey:
    """A vici `load-key` message; `ref` (hash of the public key) names it stably."""

    ref: str
    type: str  # rsa | ecdsa | ed25519 | ed448
    pem: bytes = field(repr=False)

    def message(self) -> dict[str, object]:
        return {"type": self.type, "data": self.pem}


@dataclass(frozen=True)
class Conn:
    """One conn-entry as a vici connection."""

    name: str  # conn-entry name
    vici_name: str
    message: dict[str, object] = field(compare=True)
    autostartup: str = "add"
    children: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()

    def load_message(self) -> dict[str, object]:
        return {self.vici_name: self.message}


@dataclass
class IkeConfig:
    conns: dict[str, Conn] = field(default_factory=dict)  # by vici name
    secrets: dict[str, Secret] = field(default_factory=dict)  # by id
    keys: dict[str, PrivateKey] = field(default_factory=dict)  # by ref
    crls: dict[str, bytes] = field(default_factory=dict)  # sha256 → PEM
    pools: dict[str, dict[str, object]] = field(default_factory=dict)  # vici name → pool
    certs: dict[str, bytes] = field(default_factory=dict)  # sha256 → local cert PEM
    authorities: dict[str, bytes] = field(default_factory=dict)  # vici name → CA PEM

    def by_entry(self) -> dict[str, Conn]:
        return {c.name: c for c in self.conns.values()}


# ---- small helpers -----------------------------------------------------------------------


def _t(el: etree._Element | None, name: str, default: str | None = None) -> str | None:
    if el is None:
        return default
    v = el.findtext(Q + name)
    return v.strip() if v is not None else default


def _int(el: etree._Element | None, name: str, default: int = 0) -> int:
    v = _t(el, name)
    return default if v is None else int(v)


def _bool(el: etree._Element | None, name: str, default: bool = False) -> bool:
    v = _t(el, name)
    return default if v is None else v == "true"


def _b64(v: str | None) -> bytes:
    return base64.b64decode("".join(v.split())) if v else b""


def _err(msg: str, path: str, tag: str = "invalid-value", app_tag: str | None = None) -> RpcError:
    return RpcError("application", tag, msg, path=path, app_tag=app_tag)


def conn_path(name: str) -> str:
    return f"{ROOT}/conn-entry[name='{name}']"


def pad_path(name: str) -> str:
    return f"{ROOT}/pad/pad-entry[name='{name}']"


def _secs(n: int) -> str:
    return f"{n}s"


# ---- PAD ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pad:
    name: str
    id: str  # strongSwan identity string
    address: str | None  # when the identity is an IP address
    method: str
    eap_type: int | None
    secret: bytes | None = field(repr=False)
    ds_algorithm: int
    cert: x509.Certificate | None
    raw_public_key: bytes | None
    private_key: bytes | None = field(repr=False)
    ca: tuple[x509.Certificate, ...]
    crl: bytes | None
    crl_uri: str | None
    ocsp_uri: str | None
    identity_kind: str
    identity_value: str


def _identity(ent: etree._Element, path: str) -> tuple[str, str | None, str, str]:
    """(strongSwan identity, IP address or None, identity case, value as configured)."""
    for kind in ("ipv4-address", "ipv6-address", "fqdn-string", "rfc822-address-string",
                 "dnx509", "gnx509", "id-key", "id-null"):
        el = ent.find(Q + kind)
        if el is None:
            continue
        v = (el.text or "").strip()
        if kind in ("ipv4-address", "ipv6-address"):
            addr = str(ipaddress.ip_address(v))
            return addr, addr, kind, v
        if kind == "fqdn-string":
            return f"fqdn:{v}", None, kind, v
        if kind == "rfc822-address-string":
            return f"email:{v}", None, kind, v
        if kind == "id-null":
            return "%any", None, kind, v
        prefix = {"dnx509": "asn1dn", "gnx509": "asn1gn", "id-key": "keyid"}[kind]
        try:
            raw = _b64(v)
        except ValueError as exc:
            raise _err(f"PAD entry: {kind} is not valid base64", f"{path}/{kind}") from exc
        return f"{prefix}:#{raw.hex()}", None, kind, v
    raise _err("PAD entry has no identity", path, "data-missing")


def _load_cert(der: bytes, what: str, path: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise _err(f"{what} is not a DER X.509 certificate", path,
                   app_tag="bad-certificate") from exc


def parse_pad(root: etree._Element) -> dict[str, Pad]:
    out: dict[str, Pad] = {}
    for ent in root.iterfind(f"{Q}pad/{Q}pad-entry"):
        name = _t(ent, "name") or ""
        path = pad_path(name)
        ident, addr, kind, value = _identity(ent, path)
        auth = ent.find(Q + "peer-authentication")
        method = _t(auth, "auth-method", "pre-shared") or "pre-shared"
        apath = path + "/peer-authentication"
        eap_type = None
        eap = auth.find(Q + "eap-method") if auth is not None else None
        if method == "eap":
            eap_type = _int(eap, "eap-type") if eap is not None else None
            if eap_type is None:
                raise _err(f"PAD entry {name!r}: auth-method eap needs eap-method/eap-type",
                           apath + "/eap-method", "data-missing")
            if eap_type not in EAP_METHODS:
                raise _err(f"PAD entry {name!r}: EAP method type {eap_type} is not supported "
                           f"(supported: {sorted(EAP_METHODS)})",
                           apath + "/eap-method/eap-type", app_tag="unsupported-eap-method")
        psk = auth.find(Q + "pre-shared") if auth is not None else None
        secret_txt = _t(psk, "secret")
        secret = bytes.fromhex(secret_txt.replace(":", "")) if secret_txt else None
        ds = auth.find(Q + "digital-signature") if auth is not None else None
        ds_alg = _int(ds, "ds-algorithm", 14)
        cert = raw = key = crl = None
        cas: list[x509.Certificate] = []
        if ds is not None:
            dpath = apath + "/digital-signature"
            if (v := _t(ds, "cert-data")) is not None:
                cert = _load_cert(_b64(v), f"PAD entry {name!r}: cert-data", dpath + "/cert-data")
            if (v := _t(ds, "raw-public-key")) is not None:
                raw = _b64(v)
            if (v := _t(ds, "private-key")) is not None:
                key = _b64(v)
            for i, ca in enumerate(ds.iterfind(Q + "ca-data")):
                cas.append(_load_cert(_b64(ca.text), f"PAD entry {name!r}: ca-data #{i + 1}",
                                      dpath + "/ca-data"))
            if (v := _t(ds, "crl-data")) is not None:
                crl = _b64(v)
        out[name] = Pad(
            name=name, id=ident, address=addr, method=method, eap_type=eap_type,
            secret=secret, ds_algorithm=ds_alg, cert=cert, raw_public_key=raw,
            private_key=key, ca=tuple(cas), crl=crl,
            crl_uri=_t(ds, "crl-uri"), ocsp_uri=_t(ds, "oscp-uri"),
            identity_kind=kind, identity_value=value,
        )
    return out


def _pem_cert(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_key(pad: Pad, path: str) -> PrivateKey:
    assert pad.private_key is not None
    try:
        key = serialization.load_der_private_key(pad.private_key, password=None)
    except (ValueError, TypeError) as exc:
        raise _err(f"PAD entry {pad.name!r}: private-key is not a DER private key "
                   "(RSAPrivateKey, ECPrivateKey or PKCS#8)", path,
                   app_tag="bad-private-key") from exc
    if isinstance(key, rsa.RSAPrivateKey):
        ktype = "rsa"
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        ktype = "ecdsa"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        ktype = "ed25519"
    elif isinstance(key, ed448.Ed448PrivateKey):
        ktype = "ed448"
    else:
        raise _err(f"PAD entry {pad.name!r}: unsupported private key type", path,
                   app_tag="bad-private-key")
    pub = _public_der(key.public_key())
    if pad.cert is not None and _public_der(pad.cert.public_key()) != pub:
        raise _err(f"PAD entry {pad.name!r}: private-key does not belong to cert-data", path,
                   app_tag="key-mismatch")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return PrivateKey(ref=hashlib.sha256(pub).hexdigest()[:32], type=ktype, pem=pem)


def _check_cert_identity(pad: Pad, path: str) -> None:
    """A certificate must carry the PAD entry's identity, or IKE authentication fails at
    run time with nothing but 'no trusted certificate found' on the wire."""
    cert = pad.cert
    if cert is None:
        return
    kind, value = pad.identity_kind, pad.identity_value
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    ok = True
    if kind in ("ipv4-address", "ipv6-address"):
        want = ipaddress.ip_address(value)
        ok = san is not None and want in san.get_values_for_type(x509.IPAddress)
    elif kind == "fqdn-string":
        ok = san is not None and value.lower() in (
            d.lower() for d in san.get_values_for_type(x509.DNSName))
    elif kind == "rfc822-address-string":
        ok = san is not None and value.lower() in (
            d.lower() for d in san.get_values_for_type(x509.RFC822Name))
    elif kind == "dnx509":
        ok = cert.subject.public_bytes() == _b64(value)
    if not ok:
        raise _err(
            f"PAD entry {pad.name!r}: the certificate ({cert.subject.rfc4514_string()}) does "
            f"not carry the entry's identity {kind} {value!r}",
            path + "/peer-authentication/digital-signature/cert-data",
            app_tag="identity-mismatch",
        )


# ---- traffic selectors --------------------------------------------------------------------


def _ts(sel: etree._Element, side: str,
        pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None) -> list[str]:
    """strongSwan traffic selectors: `prefix[proto/port-range]`; the protocol `any` is
    written as such, a full port range is left out (charon has no `%any` port). A remote
    prefix inside the connection's virtual IP pool becomes `dynamic`: charon narrows it to
    the address it handed to the peer, so one peer cannot claim another's address."""
    net = ipaddress.ip_network(_t(sel, f"{side}-prefix") or "", strict=False)
    prefix = str(net)
    if pool is not None and net.version == pool.version and net.subnet_of(pool):  # type: ignore[arg-type]
        prefix = "dynamic"
    proto = _t(sel, "inner-protocol", "any") or "any"
    ports = [(int(p.findtext(Q + "start") or 0), int(p.findtext(Q + "end") or 0))
             for p in sel.iterfind(Q + f"{side}-ports")]
    ports = [p for p in ports if p != (0, 65535)]
    if not ports:
        return [prefix if proto == "any" else f"{prefix}[{proto}]"]
    return [f"{prefix}[{proto}/{start if start == end else f'{start}-{end}'}]"
            for start, end in ports]


# ---- connections --------------------------------------------------------------------------


def _auth_section(pad: Pad, *, local: bool, conn: str, opts: Options,
                  cfg: IkeConfig, path: str) -> tuple[dict[str, object], list[str], list[str]]:
    """The local or remote auth round, and the secrets and keys it needs."""
    sec: dict[str, object] = {"id": pad.id}
    secrets: list[str] = []
    keys: list[str] = []
    ppath = pad_path(pad.name) + "/peer-authentication"
    if pad.method == "pre-shared":
        sec["auth"] = "psk"
    elif pad.method == "null":
        sec["auth"] = "null"
    elif pad.method == "eap":
        sec["auth"] = f"eap-{EAP_METHODS[pad.eap_type or 0]}"
        sec["eap_id"] = pad.id if pad.id != "%any" else "%any"
        if EAP_METHODS[pad.eap_type or 0] not in ("tls", "ttls", "peap", "sim", "aka", "tnc"):
            if pad.secret is None and local:
                raise _err(f"PAD entry {pad.name!r}: EAP method needs a secret "
                           "(pre-shared/secret)", ppath + "/pre-shared/secret", "data-missing",
                           app_tag="missing-secret")
            if pad.secret is not None:
                sid = f"{opts.prefix}eap:{pad.name}"
                cfg.secrets[sid] = Secret(sid, "EAP", pad.secret, (pad.id,))
                secrets.append(sid)
    elif pad.method == "digital-signature":
        kw = SIGNATURE_AUTH.get(pad.ds_algorithm)
        if kw is None:
            raise _err(f"PAD entry {pad.name!r}: ds-algorithm {pad.ds_algorithm} is not "
                       f"supported (supported: {sorted(SIGNATURE_AUTH)})",
                       ppath + "/digital-signature/ds-algorithm",
                       app_tag="unsupported-algorithm")
        sec["auth"] = kw
        if pad.cert is None and pad.raw_public_key is None and local:
            raise _err(f"PAD entry {pad.name!r}: digital-signature needs cert-data or "
                       "raw-public-key for the local peer",
                       ppath + "/digital-signature", "data-missing", app_tag="missing-cert")
        if pad.cert is not None:
            _check_cert_identity(pad, pad_path(pad.name))
            if local:  # load-cert; charon finds it by `id` (see the module docstring)
                pem = _pem_cert(pad.cert)
                cfg.certs[hashlib.sha256(pem).hexdigest()] = pem
            else:
                sec["certs"] = [_pem_cert(pad.cert)]
        if pad.raw_public_key is not None:
            try:
                pub = serialization.load_der_public_key(pad.raw_public_key)
            except ValueError as exc:
                raise _err(f"PAD entry {pad.name!r}: raw-public-key is not a DER public key",
                           ppath + "/digital-signature/raw-public-key",
                           app_tag="bad-public-key") from exc
            sec["pubkeys"] = [pub.public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)]
        for ca in pad.ca:  # trust anchors: load-authority, whichever entry holds them
            _authority(ca, opts, cfg)
        if local and pad.private_key is not None:
            key = _private_key(pad, ppath + "/digital-signature/private-key")
            cfg.keys[key.ref] = key
            keys.append(key.ref)
        if not local and pad.private_key is not None:
            raise _err(f"PAD entry {pad.name!r} is a connection's remote peer but holds a "
                       "private key; only the local PAD entry may",
                       ppath + "/digital-signature/private-key", app_tag="misplaced-key")
        if pad.crl is not None:
            cfg.crls[hashlib.sha256(pad.crl).hexdigest()] = pad.crl
        if pad.crl_uri or pad.ocsp_uri:
            raise _err(f"PAD entry {pad.name!r}: crl-uri and oscp-uri are not supported; "
                       "give the CRL as crl-data", ppath + "/digital-signature",
                       "operation-not-supported", app_tag="unsupported-revocation")
    else:  # pragma: no cover - the YANG enumeration has no other value
        raise _err(f"PAD entry {pad.name!r}: unknown auth-method {pad.method!r}",
                   ppath + "/auth-method")
    return sec, secrets, keys


def _authority(ca: x509.Certificate, opts: Options, cfg: IkeConfig) -> str:
    pem = _pem_cert(ca)
    name = f"{opts.prefix}ca-{hashlib.sha256(pem).hexdigest()[:16]}"
    cfg.authorities[name] = pem
    return name


def _psk(local: Pad, remote: Pad, cpath: str, opts: Options, cfg: IkeConfig) -> str | None:
    """The PSK of a peer pair. The remote PAD entry binds the peer to its key, so its secret
    wins; the local entry's secret serves when the remote entry has none (RFC 9061's example
    puts the same secret in both). strongSwan uses one key for both directions."""
    if local.method != "pre-shared" and remote.method != "pre-shared":
        return None
    secret = next((p.secret for p in (remote, local)
                   if p.method == "pre-shared" and p.secret is not None), None)
    if secret is None:
        who = remote if remote.method == "pre-shared" else local
        raise _err(
            f"PAD entry {who.name!r}: pre-shared authentication without a secret "
            f"(connection {cpath.rsplit('=', 1)[-1][1:-2]!r})",
            pad_path(who.name) + "/peer-authentication/pre-shared/secret", "data-missing",
            app_tag="missing-secret")
    if local.secret is not None and remote.secret is not None and local.secret != secret:
        log.debug("PAD entries %r and %r hold different secrets; using the remote one",
                  local.name, remote.name)
    sid = f"{opts.prefix}psk:{local.name}:{remote.name}"
    owners = tuple(dict.fromkeys(i for i in (local.id, remote.id)))
    cfg.secrets[sid] = Secret(sid, "IKE", secret, owners)
    return sid


def _lifetimes(info: etree._Element | None, path: str, where: str) -> dict[str, str]:
    soft = info.find(Q + "child-sa-lifetime-soft") if info is not None else None
    hard = info.find(Q + "child-sa-lifetime-hard") if info is not None else None
    action = _t(soft, "action", "replace") or "replace"
    out: dict[str, str] = {}
    for leaf, rekey, life in (("time", "rekey_time", "life_time"),
                              ("bytes", "rekey_bytes", "life_bytes"),
                              ("packets", "rekey_packets", "life_packets")):
        s, h = _int(soft, leaf), _int(hard, leaf)
        if s and h and h <= s:
            raise _err(f"{where}: hard {leaf} lifetime ({h}) must exceed the soft one ({s})",
                       f"{path}/child-sa-info/child-sa-lifetime-hard/{leaf}",
                       app_tag="lifetime-order")
        suffix = "s" if leaf == "time" else ""
        if action != "replace":
            # terminate-*: no rekey; the SA ends at the soft limit (or the hard one)
            end = s or h
            out[rekey] = "0"
            out[life] = f"{end}{suffix}"
            continue
        out[rekey] = f"{s}{suffix}"
        if h:
            out[life] = f"{h}{suffix}"
        elif not s:
            out[life] = f"0{suffix}"
    if leaf_idle := (_int(hard, "idle") or _int(soft, "idle")):
        out["inactivity"] = _secs(leaf_idle)
    return out


def _child(spd: etree._Element, conn_name: str, cpath: str, autostartup: str,
           groups: list[int], lifetimes: dict[str, str], opts: Options,
           pool: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None,
           ) -> tuple[str, dict[str, object], tuple[str, str] | None]:
    name = _t(spd, "name") or ""
    path = f"{cpath}/spd/spd-entry[name='{name}']/ipsec-policy-config"
    where = f"connection {conn_name!r}, SPD entry {name!r}"
    cfg = spd.find(Q + "ipsec-policy-config")
    sel = cfg.find(Q + "traffic-selector") if cfg is not None else None
    if sel is None:
        raise _err(f"{where}: traffic-selector is missing", path + "/traffic-selector",
                   "data-missing")
    child: dict[str, object] = {"local_ts": _ts(sel, "local"),
                                "remote_ts": _ts(sel, "remote", pool)}
    pinfo = cfg.find(Q + "processing-info")  # type: ignore[union-attr]
    action = _t(pinfo, "action", "discard") or "discard"
    if action != "protect":
        child["mode"] = "pass" if action == "bypass" else "drop"
        child["start_action"] = "trap"  # shunt policies are installed on load
        return name, child, None
    sa_cfg = pinfo.find(Q + "ipsec-sa-cfg")  # type: ignore[union-attr]
    spath = path + "/processing-info/ipsec-sa-cfg"
    if sa_cfg is None:
        sa_cfg = etree.Element(Q + "ipsec-sa-cfg")
    for leaf, why in (("pfp-flag", "Populate From Packet"),
                      ("seq-overflow", "sequence number rollover"),
                      ("stateful-frag-check", "stateful fragment checking")):
        if _bool(sa_cfg, leaf):
            raise _err(f"{where}: {why} ({leaf} true) is not supported by strongSwan",
                       f"{spath}/{leaf}", "operation-not-supported",
                       app_tag="unsupported-option")
    mode = _t(sa_cfg, "mode", "transport") or "transport"
    child["mode"] = mode
    child["esp_proposals"] = esp_proposals(sa_cfg, groups, spath, where, opts,
                                           cpath + "/child-sa-info/fs-groups")
    child["replay_window"] = str(_int(cfg, "anti-replay-window-size", 64))
    algs = sa_cfg.find(Q + "esp-algorithms")
    if _bool(algs, "tfc-pad"):
        child["tfc_padding"] = "mtu"
    endpoints = None
    if mode == "tunnel":
        tun = sa_cfg.find(Q + "tunnel")
        if tun is None or _t(tun, "local") is None:
            raise _err(f"{where}: tunnel mode needs tunnel local/remote", spath + "/tunnel",
                       "data-missing")
        endpoints = (str(ipaddress.ip_address(_t(tun, "local") or "")),
                     str(ipaddress.ip_address(_t(tun, "remote") or "")))
        df = _t(tun, "df-bit", "clear")
        if df == "set":
            raise _err(f"{where}: df-bit 'set' is not supported by strongSwan (use clear or "
                       "copy)", spath + "/tunnel/df-bit", "operation-not-supported",
                       app_tag="unsupported-option")
        child["copy_df"] = "yes" if df == "copy" else "no"
        if not _bool(tun, "bypass-dscp", True):
            raise _err(f"{where}: DSCP mapping (bypass-dscp false) is not supported by "
                       "strongSwan", spath + "/tunnel/bypass-dscp", "operation-not-supported",
                       app_tag="unsupported-option")
        child["copy_dscp"] = "out"
    child.update(lifetimes)
    child["start_action"] = {"add": "none", "on-demand": "trap", "start": "start"}[autostartup]
    child["dpd_action"] = {"add": "clear", "on-demand": "trap", "start": "restart"}[autostartup]
    child["close_action"] = "none"
    return name, child, endpoints


def _one(values: Iterable[str], what: str, path: str, where: str) -> str | None:
    vals = list(dict.fromkeys(values))
    if len(vals) > 1:
        raise _err(f"{where}: SPD entries use different tunnel {what} addresses {vals}; one "
                   "IKE SA has one pair of endpoints", path, app_tag="endpoint-conflict")
    return vals[0] if vals else None


def _conn(ent: etree._Element, pads: dict[str, Pad], opts: Options, cfg: IkeConfig) -> Conn:
    name = _t(ent, "name") or ""
    path = conn_path(name)
    where = f"connection {name!r}"
    autostartup = _t(ent, "autostartup", "add") or "add"
    lname = _t(ent.find(Q + "local"), "local-pad-entry-name") or ""
    rname = _t(ent.find(Q + "remote"), "remote-pad-entry-name") or ""
    for pname, side in ((lname, "local/local-pad-entry-name"),
                        (rname, "remote/remote-pad-entry-name")):
        if pname not in pads:
            raise _err(f"{where}: PAD entry {pname!r} does not exist", f"{path}/{side}",
                       "data-missing", app_tag="unknown-pad-entry")
    local, remote = pads[lname], pads[rname]
    msg: dict[str, object] = {"version": "2"}

    info = ent.find(Q + "child-sa-info")
    groups = [int(x.text) for x in (info.iterfind(Q + "fs-groups") if info is not None else ())]
    lifetimes = _lifetimes(info, path, where)
    children: dict[str, object] = {}
    local_eps, remote_eps = [], []
    pool = None
    if (ptxt := ent.findtext(EXT + "virtual-ip-pool")) is not None:
        pool = ipaddress.ip_network(ptxt.strip(), strict=False)
        if autostartup != "add":
            raise _err(f"{where}: a virtual IP pool serves remote hosts that connect to "
                       f"this NSF; autostartup must be add, not {autostartup}",
                       path + "/autostartup", app_tag="pool-needs-responder")
        pname = opts.prefix + name
        cfg.pools[pname] = {"addrs": str(pool)}
        msg["pools"] = [pname]
    for spd in ent.iterfind(f"{Q}spd/{Q}spd-entry"):
        cname, child, eps = _child(spd, name, path, autostartup, groups, lifetimes, opts,
                                   pool)
        children[cname] = child
        if eps is not None:
            local_eps.append(eps[0])
            remote_eps.append(eps[1])
    laddr = _one(local_eps, "local", path + "/spd", where) or local.address
    raddr = _one(remote_eps, "remote", path + "/spd", where) or remote.address
    if laddr:
        msg["local_addrs"] = [laddr]
    msg["remote_addrs"] = [raddr or "%any"]
    if raddr is None and autostartup != "add":
        raise _err(f"{where}: autostartup {autostartup} needs the peer's address (a tunnel "
                   "remote or an IP address identity in the remote PAD entry)",
                   path + "/autostartup", app_tag="unknown-peer-address")

    msg["proposals"] = ike_proposals(ent, path, where)
    soft = ent.find(Q + "ike-sa-lifetime-soft")
    rekey, reauth = _int(soft, "rekey-time"), _int(soft, "reauth-time")
    over = _int(ent.find(Q + "ike-sa-lifetime-hard"), "over-time")
    msg["rekey_time"] = _secs(rekey)
    msg["reauth_time"] = _secs(reauth)
    if over:
        base = max(rekey, reauth)
        if base == 0 or over <= base:
            raise _err(f"{where}: strongSwan counts the hard IKE SA lifetime from the rekey "
                       f"or reauthentication time; over-time ({over}) must exceed a non-zero "
                       f"rekey-time or reauth-time ({base})",
                       path + "/ike-sa-lifetime-hard/over-time", app_tag="lifetime-order")
        msg["over_time"] = _secs(over - base)
    nonzero = [t for t in (rekey, reauth) if t]
    msg["rand_time"] = _secs(min(nonzero) // 10 if nonzero else 0)

    frag = ent.find(Q + "fragmentation")
    if _bool(frag, "enabled"):
        msg["fragmentation"] = "yes"
        mtu = _int(frag, "mtu", 0)
        if mtu and mtu != opts.fragment_size:
            raise _err(f"{where}: strongSwan uses one IKE fragment size for all connections "
                       f"({opts.fragment_size} on this NSF); mtu {mtu} cannot be set per "
                       "connection", path + "/fragmentation/mtu", "operation-not-supported",
                       app_tag="daemon-wide-setting")
    else:
        msg["fragmentation"] = "no"
    # RFC 9061: initial-contact true means "do not send INITIAL_CONTACT".
    msg["unique"] = "never" if _bool(ent, "initial-contact") else "no"

    encap = ent.find(Q + "encapsulation-type")
    kind = _t(encap, "espencap", "none")
    if kind == "espintcp":
        raise _err(f"{where}: ESP in TCP (RFC 8229) is not supported by strongSwan",
                   path + "/encapsulation-type/espencap", "operation-not-supported",
                   app_tag="unsupported-option")
    if kind == "espinudp":
        msg["encap"] = "yes"
        sport, dport = _int(encap, "sport", 4500), _int(encap, "dport", 4500)
        if sport != opts.nat_t_port:
            raise _err(f"{where}: the local NAT-T port is daemon-wide in strongSwan "
                       f"({opts.nat_t_port} on this NSF), sport {sport} cannot be set",
                       path + "/encapsulation-type/sport", "operation-not-supported",
                       app_tag="daemon-wide-setting")
        if dport != 4500:
            msg["remote_port"] = str(dport)
    else:
        msg["encap"] = "no"

    msg["mobike"] = "yes" if opts.mobike else "no"
    if opts.dpd_delay:
        msg["dpd_delay"] = _secs(opts.dpd_delay)
    msg["keyingtries"] = "0" if autostartup == "start" else "1"

    lsec, s1, k1 = _auth_section(local, local=True, conn=name, opts=opts, cfg=cfg, path=path)
    rsec, s2, k2 = _auth_section(remote, local=False, conn=name, opts=opts, cfg=cfg, path=path)
    if local.cert is not None or "pubkeys" in lsec:
        msg["send_cert"] = "always"
    psk = _psk(local, remote, path, opts, cfg)
    msg["local"] = lsec
    msg["remote"] = rsec
    msg["children"] = children
    return Conn(
        name=name, vici_name=opts.prefix + name, message=msg, autostartup=autostartup,
        children=tuple(children),
        secrets=tuple(dict.fromkeys([*s1, *s2, *([psk] if psk else [])])),
        keys=tuple(dict.fromkeys([*k1, *k2])),
    )


def parse(data: etree._Element, opts: Options | None = None) -> IkeConfig:
    """`data` is a `<data>` root (or the `<ipsec-ike>` element) already validated by
    libyang. Semantic problems libyang cannot see raise RpcError."""
    opts = opts or Options()
    root = data if data.tag == Q + "ipsec-ike" else data.find(Q + "ipsec-ike")
    cfg = IkeConfig()
    if root is None:
        return cfg
    pads = parse_pad(root)
    for ent in root.iterfind(Q + "conn-entry"):
        conn = _conn(ent, pads, opts, cfg)
        cfg.conns[conn.vici_name] = conn
    return cfg
