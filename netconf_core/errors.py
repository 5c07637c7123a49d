"""NETCONF `<rpc-error>` (RFC 6241 section 4.3 and appendix A) as a Python exception.

Every failure a client can cause ends up as one of these so that the server can always answer
with the RFC's error-type / error-tag and the datastores stay untouched.
"""

from __future__ import annotations

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
            etree.SubElement(err, q + "error-path").text = self.path
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
