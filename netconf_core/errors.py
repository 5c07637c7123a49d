"""NETCONF `<rpc-error>` (RFC 6241 section 4.3 and appendix A) as a Python exception.

Every failure a client can cause ends up as one of these so that the server can always answer
with the RFC's error-type / error-tag and the datastores stay untouched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lxml import etree

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"

ERROR_TYPES = ("transport", "rpc", "protocol", "application")
ERROR_TAGS = (
    "in-use", "invalid-value", "too-big", "missing-attribute", "bad-attribute",
    "unknown-attribute", "missing-element", "bad-element", "unknown-element",
    "unknown-namespace", "access-denied", "lock-denied", "resource-denied",
    "rollback-failed", "data-exists", "data-missing", "operation-not-supported",
    "operation-failed", "partial-operation", "malformed-message",
)


YANG_NS = "urn:ietf:params:xml:ns:yang:1"  # error-info elements of RFC 7950 section 15

# module name -> namespace of every module any schema served here has loaded: error-path
# and instance-identifiers in error-info use module names as XML prefixes and declare them
_MODULES: dict[str, str] = {}


def register_module(name: str, namespace: str) -> None:
    _MODULES.setdefault(name, namespace)


_PATH_TOKEN = re.compile(r"""'[^']*'|"[^"]*"|[^\W\d][\w.\-]*(?::[^\W\d][\w.\-]*)?|.""",
                         re.UNICODE | re.DOTALL)


def qualify_path(path: str) -> tuple[str, dict[str, str]]:
    """libyang's / our JSON-style data path (`/mod:a/b[k='v']/c`: a module name on the
    first node of each module) as an XML instance-identifier in which every node name has
    a prefix, and the prefix declarations it needs (RFC 7950 9.13.2; RFC 6241 error-path).
    A path whose first node has no module (`/rpc/edit-config/...`) is in the base
    namespace. Unknown module names are left as they are (undeclared)."""
    out: list[str] = []
    nsmap: dict[str, str] = {}
    cur: str | None = None
    depth = 0
    prev = ""
    for tok in _PATH_TOKEN.findall(path):
        is_name = tok[:1].isalpha() or tok[:1] == "_"
        if is_name and prev in ("/", "[") and (depth == 0 or prev == "["):
            mod, _, local = tok.rpartition(":")
            if mod:
                if depth == 0:
                    cur = mod
            elif depth == 0 and cur is None:
                cur = "nc"
            mod = mod or cur or "nc"
            uri = NC_NS if mod == "nc" and mod not in _MODULES else _MODULES.get(mod)
            if uri is not None:
                nsmap[mod] = uri
            tok = f"{mod}:{local}"
        elif tok == "[":
            depth += 1
        elif tok == "]":
            depth -= 1
        if not tok.isspace():
            prev = tok
        out.append(tok)
    return "".join(out), nsmap


class RpcError(Exception):
    """One `<rpc-error>`; `others` carries further errors reported in the same reply."""

    def __init__(
        self,
        error_type: str,
        error_tag: str,
        message: str,
        *,
        path: str | None = None,
        app_tag: str | None = None,
        severity: str = "error",
        info: dict[str, str] | None = None,
        info_xml: Iterable[etree._Element] = (),
        others: Iterable[RpcError] = (),
    ) -> None:
        if error_type not in ERROR_TYPES:
            raise ValueError(f"bad error-type {error_type}")
        if error_tag not in ERROR_TAGS:
            raise ValueError(f"bad error-tag {error_tag}")
        super().__init__(message)
        self.error_type = error_type
        self.error_tag = error_tag
        self.message = message
        self.path = path
        self.app_tag = app_tag
        self.severity = severity
        self.info = dict(info or {})
        self.info_xml = list(info_xml)
        self.others = list(others)

    def all(self) -> list[RpcError]:
        return [self, *self.others]

    def to_xml(self) -> etree._Element:
        """The `<rpc-error>` element in the NETCONF base namespace."""
        q = f"{{{NC_NS}}}"
        err = etree.Element(q + "rpc-error", nsmap={None: NC_NS})
        etree.SubElement(err, q + "error-type").text = self.error_type
        etree.SubElement(err, q + "error-tag").text = self.error_tag
        etree.SubElement(err, q + "error-severity").text = self.severity
        if self.app_tag:
            etree.SubElement(err, q + "error-app-tag").text = self.app_tag
        if self.path:
            path, nsmap = qualify_path(self.path)
            etree.SubElement(err, q + "error-path", nsmap=nsmap).text = path
        msg = etree.SubElement(err, q + "error-message")
        msg.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        msg.text = self.message
        if self.info or self.info_xml:
            info = etree.SubElement(err, q + "error-info")
            for k, v in self.info.items():
                etree.SubElement(info, q + k).text = v
            for el in self.info_xml:
                info.append(el)
        return err

    def __repr__(self) -> str:
        return f"RpcError({self.error_type}/{self.error_tag}: {self.message!r}, path={self.path!r})"


def operation_failed(message: str, **kw: object) -> RpcError:
    return RpcError("application", "operation-failed", message, **kw)  # type: ignore[arg-type]


def invalid_value(message: str, **kw: object) -> RpcError:
    return RpcError("application", "invalid-value", message, **kw)  # type: ignore[arg-type]
