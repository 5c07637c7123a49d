"""IANA IKEv2 transform numbers and Diffie-Hellman groups as strongSwan proposal keywords.

The agent's IKE translation builds charon's proposals with these functions, and the controller
checks crypto profiles against the same tables and writes a road warrior's swanctl.conf with
the same proposals, so that a host proposes exactly what its gateway accepts. Errors are
`RpcError`s pointing at the ietf-i2nsf-ike node (`path`), so a commit fails before charon is
touched.
"""

from __future__ import annotations

import logging
from typing import Protocol

from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.i2nsf.namespaces import IKE_NS

log = logging.getLogger(__name__)

Q = f"{{{IKE_NS}}}"


class ProposalOptions(Protocol):
    """What of the agent's daemon-wide options the proposals depend on."""

    @property
    def libipsec(self) -> bool: ...  # kernel-libipsec: no extended sequence numbers


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


def _err(msg: str, path: str, tag: str = "invalid-value", app_tag: str | None = None) -> RpcError:
    return RpcError("application", tag, msg, path=path, app_tag=app_tag)


# Transform Type 1. Values: keyword pattern ("{}" = key length in bits), allowed key
# lengths (None: fixed-length cipher, key-length ignored unless it contradicts), AEAD?,
# usable for IKE (not only ESP)?
_Enc = tuple[str, tuple[int, ...] | None, bool, bool]
ENCRYPTION: dict[int, _Enc] = {
    3: ("3des", None, False, True),
    11: ("null", None, False, False),
    12: ("aes{}", (128, 192, 256), False, True),
    13: ("aes{}ctr", (128, 192, 256), False, True),
    14: ("aes{}ccm8", (128, 192, 256), True, True),
    15: ("aes{}ccm12", (128, 192, 256), True, True),
    16: ("aes{}ccm16", (128, 192, 256), True, True),
    18: ("aes{}gcm8", (128, 192, 256), True, True),
    19: ("aes{}gcm12", (128, 192, 256), True, True),
    20: ("aes{}gcm16", (128, 192, 256), True, True),
    21: ("aes{}gmac", (128, 192, 256), True, False),
    23: ("camellia{}", (128, 192, 256), False, True),
    24: ("camellia{}ctr", (128, 192, 256), False, True),
    25: ("camellia{}ccm8", (128, 192, 256), True, True),
    26: ("camellia{}ccm12", (128, 192, 256), True, True),
    27: ("camellia{}ccm16", (128, 192, 256), True, True),
    28: ("chacha20poly1305", None, True, True),
}
_FIXED_KEY_BITS = {3: 192, 11: 0, 28: 256}
DEFAULT_KEY_LENGTH = 128  # the YANG default of key-length

# Transform Type 3 → (integrity keyword, PRF keyword used with AEAD IKE proposals)
INTEGRITY: dict[int, tuple[str, str]] = {
    1: ("md5", "prfmd5"),
    2: ("sha1", "prfsha1"),
    5: ("aesxcbc", "prfaesxcbc"),
    8: ("aescmac", "prfaescmac"),
    12: ("sha256", "prfsha256"),
    13: ("sha384", "prfsha384"),
    14: ("sha512", "prfsha512"),
}

# Transform Type 4
DH_GROUPS: dict[int, str] = {
    1: "modp768", 2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072",
    16: "modp4096", 17: "modp6144", 18: "modp8192", 19: "ecp256", 20: "ecp384",
    21: "ecp521", 22: "modp1024s160", 23: "modp2048s224", 24: "modp2048s256",
    25: "ecp192", 26: "ecp224", 27: "ecp224bp", 28: "ecp256bp", 29: "ecp384bp",
    30: "ecp512bp", 31: "curve25519", 32: "curve448",
}


# ---- proposals ---------------------------------------------------------------------------


def enc_keyword(alg: int, bits: int, *, ike: bool, path: str, where: str) -> tuple[str, bool]:
    spec = ENCRYPTION.get(alg)
    if spec is None or (ike and not spec[3]):
        usable = sorted(k for k, v in ENCRYPTION.items() if v[3] or not ike)
        raise _err(f"{where}: encryption algorithm {alg} is not supported "
                   f"{'for IKE SAs ' if ike else ''}(supported: {usable})", path,
                   app_tag="unsupported-algorithm")
    pattern, lengths, aead, _ = spec
    if lengths is None:
        fixed = _FIXED_KEY_BITS[alg]
        if bits not in (fixed, DEFAULT_KEY_LENGTH):
            raise _err(f"{where}: algorithm {alg} has a fixed {fixed}-bit key, "
                       f"key-length {bits} is wrong", path, app_tag="unsupported-algorithm")
        return pattern, aead
    if bits not in lengths:
        raise _err(f"{where}: algorithm {alg} takes key lengths {list(lengths)}, not {bits}",
                   path, app_tag="unsupported-algorithm")
    return pattern.format(bits), aead


def integ_keyword(alg: int, path: str, where: str) -> tuple[str, str]:
    spec = INTEGRITY.get(alg)
    if spec is None:
        raise _err(f"{where}: integrity algorithm {alg} is not supported "
                   f"(supported: {sorted(INTEGRITY)})", path, app_tag="unsupported-algorithm")
    return spec


def dh_keyword(group: int, path: str, where: str) -> str:
    kw = DH_GROUPS.get(group)
    if kw is None:
        raise _err(f"{where}: Diffie-Hellman group {group} is not supported "
                   f"(supported: {sorted(DH_GROUPS)})", path, app_tag="unsupported-algorithm")
    return kw


def ike_proposals(ent: etree._Element, path: str, where: str) -> list[str]:
    """IKE SA proposals: non-AEAD and AEAD ciphers go into separate proposals because an
    AEAD proposal carries a PRF instead of an integrity algorithm."""
    classic: list[str] = []
    aead: list[str] = []
    for e in ent.iterfind(Q + "ike-sa-encr-alg"):
        eid = _t(e, "id")
        kw, is_aead = enc_keyword(
            _int(e, "algorithm-type", 12), _int(e, "key-length", DEFAULT_KEY_LENGTH),
            ike=True, path=f"{path}/ike-sa-encr-alg[id='{eid}']", where=where)
        (aead if is_aead else classic).append(kw)
    intr = [int(x.text) for x in ent.iterfind(Q + "ike-sa-intr-alg")] or [12]
    integ, prfs = [], []
    for a in intr:
        if a == 0:
            continue
        i, p = integ_keyword(a, path + "/ike-sa-intr-alg", where)
        integ.append(i)
        prfs.append(p)
    dh = _int(ent, "dh-group", 14)
    if dh == 0:
        raise _err(f"{where}: IKEv2 needs a Diffie-Hellman group (dh-group 0)",
                   path + "/dh-group", app_tag="unsupported-algorithm")
    group = dh_keyword(dh, path + "/dh-group", where)
    out = []
    if classic:
        if not integ:
            raise _err(f"{where}: non-AEAD IKE encryption needs an integrity algorithm",
                       path + "/ike-sa-intr-alg", app_tag="unsupported-algorithm")
        out.append("-".join([*classic, *integ, group]))
    if aead:
        out.append("-".join([*aead, *(prfs or ["prfsha256"]), group]))
    return out


def esp_proposals(sa_cfg: etree._Element, groups: list[int], path: str, where: str,
                  opts: ProposalOptions, gpath: str = "") -> list[str]:
    algs = sa_cfg.find(Q + "esp-algorithms")
    apath = path + "/esp-algorithms"
    classic: list[str] = []
    aead: list[str] = []
    for e in (algs.iterfind(Q + "encryption") if algs is not None else ()):
        eid = _t(e, "id")
        kw, is_aead = enc_keyword(
            _int(e, "algorithm-type", 20), _int(e, "key-length", DEFAULT_KEY_LENGTH),
            ike=False, path=f"{apath}/encryption[id='{eid}']", where=where)
        (aead if is_aead else classic).append(kw)
    if not classic and not aead:
        classic = ["null"]  # RFC 9061: no encryption entry means NULL encryption
    integ = [
        integ_keyword(int(x.text), apath + "/integrity", where)[0]
        for x in (algs.iterfind(Q + "integrity") if algs is not None else ())
        if int(x.text or 0) != 0
    ]
    ke = [dh_keyword(g, gpath, where) for g in groups if g != 0]
    if groups and 0 in groups and ke:
        ke.append("modpnone")  # forward secrecy optional, as the list allows "no group"
    esn = ["esn"] if _bool(sa_cfg, "ext-seq-num") else ["noesn"]
    if esn == ["esn"] and opts.libipsec:
        log.debug("%s: kernel-libipsec has no ESN, negotiating 32-bit sequence numbers", where)
        esn = ["noesn"]
    out = []
    if classic:
        if not integ:
            raise _err(f"{where}: ESP without an AEAD cipher needs an integrity algorithm",
                       apath + "/integrity", app_tag="unsupported-algorithm")
        out.append("-".join([*classic, *integ, *ke, *esn]))
    if aead:
        out.append("-".join([*aead, *ke, *esn]))
    return out
