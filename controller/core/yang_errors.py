"""libyang's validation errors in words an operator can act on (issue 13.5).

libyang says `Invalid union value "10.5.0.0/33" - no matching subtype found.` or shows a
regular expression; the controller's northbound (and so its CLI, which prints the server's
error-message) says which field of which entry is wrong and what form it expects:

    nsf 'gw1', protected-prefix: "10.5.0.0/33" is not valid; expected an IPv4 or IPv6
    prefix in CIDR form, such as 198.51.100.0/24 or 2001:db8::/32 (a prefix length of at
    most 32 for IPv4, 128 for IPv6).

The expected form comes from the leaf's type in the schema (the inet types, enumerations,
integer ranges, booleans, the typedef's description); libyang's own text stays in the
error's `<error-info>` (`<libyang-message>`), for experts and bug reports. error-tag,
error-path and error-app-tag are unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import libyang
from lxml import etree

from controller.core.inventory import NS as FP_NS
from netconf_core.errors import RpcError
from netconf_core.schema import YangSchema

INFO_TAG = f"{{{FP_NS}}}libyang-message"

_FORMS = {  # YANG type name → what a valid value looks like
    "inet:ip-prefix": "an IPv4 or IPv6 prefix in CIDR form, such as 198.51.100.0/24 or "
                      "2001:db8::/32",
    "inet:ipv4-prefix": "an IPv4 prefix in CIDR form, such as 198.51.100.0/24",
    "inet:ipv6-prefix": "an IPv6 prefix in CIDR form, such as 2001:db8::/32",
    "inet:ip-address": "an IPv4 or IPv6 address, such as 192.0.2.1 or 2001:db8::1",
    "inet:ip-address-no-zone": "an IPv4 or IPv6 address, such as 192.0.2.1 or 2001:db8::1",
    "inet:ipv4-address": "an IPv4 address, such as 192.0.2.1",
    "inet:ipv6-address": "an IPv6 address, such as 2001:db8::1",
    "inet:host": "an IP address or a DNS name, such as 192.0.2.1 or gw1.example.net",
    "inet:domain-name": "a DNS name, such as gw1.example.net",
    "inet:port-number": "a port number from 0 to 65535",
    "name-type": "a name of letters, digits, '_', '.' and '-' that starts with a letter or "
                 "a digit",
    "yang:date-and-time": "a date and time such as 2026-12-04T20:15:00Z",
}
_LEAF_FORMS = {  # leaf name → form, where the type alone says too little
    "host-key": "an OpenSSH public key line ('ssh-ed25519 AAAA...') or a fingerprint "
                "('SHA256:' and 43 base64 characters)",
}
_INT_BOUNDS = {"uint8": (0, 255), "uint16": (0, 65535), "uint32": (0, 4294967295),
               "uint64": (0, 18446744073709551615), "int8": (-128, 127),
               "int16": (-32768, 32767), "int32": (-2147483648, 2147483647),
               "int64": (-9223372036854775808, 9223372036854775807)}

_VALUE = [re.compile(p) for p in (
    r'^Invalid union value "(?P<v>.*)" - no matching subtype found',
    r'^Value "(?P<v>.*)" is out of type \S+ min/max bounds',
    r'^Unsatisfied range - value "(?P<v>.*)" is out of the allowed range',
    r'^Unsatisfied pattern - "(?P<v>.*)" does not conform to',
    r'^Unsatisfied length - string "(?P<v>.*)" length is not allowed',
    r'^Invalid enumeration value "(?P<v>.*)"',
    r'^Invalid boolean value "(?P<v>.*)"',
    r'^Invalid type \S+ value "(?P<v>.*)"',
    r'^Invalid (?:\S+ )?value "(?P<v>.*?)"',
    r'^Invalid identityref "(?P<v>.*?)" value',
)]
_MANDATORY = re.compile(r'^Mandatory node "(?P<n>[^"]+)" instance does not exist')
_DUPLICATE = re.compile(r'^Duplicate instance of "(?P<n>[^"]+)"')
_LEAFREF = re.compile(r'^Invalid leafref value "(?P<v>.*?)" - no target instance')
_STEP = re.compile(r"([^/\[]+)((?:\[[^\]]*\])*)")
_PRED = re.compile(r"\[([^=\]]+)=(['\"])(.*?)\2\]")


class HumaneSchema(YangSchema):
    """The controller's schema: every libyang validation error is rephrased (see module)."""

    def _errors_to_rpc_error(self) -> RpcError:
        return humanize(super()._errors_to_rpc_error(), self.ctx)


def humanize(err: RpcError, ctx: libyang.Context | None) -> RpcError:
    """`err` and its `others`, each with an operator's message (libyang's in error-info)."""
    for e in err.all():
        text = _sentence(e, ctx)
        if text is not None and text != e.message:
            info = etree.Element(INFO_TAG, nsmap={None: FP_NS})
            info.text = e.message
            e.info_xml.append(info)
            e.message = text
            e.args = (text,)
    return err


def _steps(path: str) -> list[tuple[str, dict[str, str]]]:
    out = []
    for name, preds in _STEP.findall(path.strip("/")):
        keys = {k.rpartition(":")[2]: v for k, _, v in _PRED.findall(preds)}
        out.append((name.rpartition(":")[2], keys))
    return out


def field_label(path: str | None) -> str:
    """`nsf 'gw1', management/port` for /…:flow-protection/nsfs/nsf[name='gw1']/management/port."""
    if not path:
        return "configuration"
    steps = _steps(path)
    for i in range(len(steps) - 1, -1, -1):
        name, keys = steps[i]
        if keys:
            entry = f"{name} " + ", ".join(f"{v!r}" for v in keys.values())
            rest = "/".join(n for n, _ in steps[i + 1:])
            return f"{entry}, {rest}" if rest else entry
    names = [n for n, _ in steps]
    return " ".join(names[-2:])  # (no entry key: the key itself is what is wrong)


def _snode(ctx: libyang.Context | None, path: str | None) -> Any:
    if ctx is None or not path:
        return None
    schema_path = re.sub(r"\[[^\]]*\]", "", path)
    try:
        return next(ctx.find_path(schema_path), None)
    except (libyang.LibyangError, StopIteration):
        return None


def expected_form(ctx: libyang.Context | None, path: str | None) -> str | None:
    """What a valid value of the leaf at `path` looks like, from its type."""
    sn = _snode(ctx, path)
    if sn is None or not hasattr(sn, "type"):
        return None
    leaf = sn.name()
    if leaf in _LEAF_FORMS:
        return _LEAF_FORMS[leaf]
    t = sn.type()
    name, base = t.name(), t.basename()
    if name in _FORMS:
        return _FORMS[name]
    if base == "enumeration":
        return "one of " + ", ".join(e.name() for e in t.all_enums())
    if base == "boolean":
        return "true or false"
    if base in _INT_BOUNDS:
        ranges = list(t.all_ranges())
        span = ranges[-1] if ranges else "{}..{}".format(*_INT_BOUNDS[base])
        lo, _, hi = str(span).partition("..")
        what = f"a whole number from {lo} to {hi}" if hi else f"the number {lo}"
        desc = _first_sentence(t.description()) if t.typedef() is not None else None
        return f"{what} ({desc})" if desc else what
    if base == "identityref":
        return "a known identity (" + ", ".join(b.name() for b in t.bases()) + " or derived)"
    desc = _first_sentence(t.description() or sn.description())
    return desc


def _first_sentence(text: str | None) -> str | None:
    if not text:
        return None
    flat = " ".join(text.split())
    m = re.match(r"(.+?\.)(\s|$)", flat)
    s = (m.group(1) if m else flat).rstrip(".")
    return s[0].lower() + s[1:] if s else None


def _prefix_hint(value: str) -> str | None:
    addr, sep, length = value.partition("/")
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return f"{addr!r} is not an IP address"
    if not sep:
        return "the prefix length is missing (e.g. /24)"
    top = 32 if ip.version == 4 else 128
    if not length.isdigit() or int(length) > top:
        return f"an IPv{ip.version} prefix length is 0 to {top}"
    return None


def _sentence(e: RpcError, ctx: libyang.Context | None) -> str | None:
    msg = e.message
    label = field_label(e.path)
    m = _MANDATORY.match(msg)
    if m is not None:
        parent = (e.path or "").rpartition("/")[0]
        where = (field_label(parent) if "[" in parent
                 else "an entry of " + (parent.rpartition("/")[2] or "the configuration"))
        return f"{where}: {m.group('n')} is missing (it is mandatory)"
    m = _DUPLICATE.match(msg)
    if m is not None:
        return (f"{m.group('n')} appears twice in the same place of the edit; put all its "
                "entries in one element")
    m = _LEAFREF.match(msg)
    if m is not None:
        what = (e.path or "").rstrip("/").rpartition("/")[2] or "reference"
        return f"{label}: {what} {m.group('v')!r} does not exist (configure it first)"
    for rx in _VALUE:
        m = rx.match(msg)
        if m is None:
            continue
        value = m.group("v")
        form = expected_form(ctx, e.path)
        if form is None:
            return None
        text = f"{label}: {value!r} is not valid; expected {form}"
        sn = _snode(ctx, e.path)
        if sn is not None and hasattr(sn, "type") and "prefix" in sn.type().name():
            hint = _prefix_hint(value)
            if hint:
                text += f" ({hint})"
        return text
    return None
