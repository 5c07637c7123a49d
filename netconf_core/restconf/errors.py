"""RFC 8040 section 7: an RpcError as an `ietf-restconf:errors` body and its HTTP status.

Every failure in the RESTCONF server — a bad URI, a body that does not fit the schema, a
datastore or controller check — is an RpcError, so RESTCONF clients get exactly the
error-type/-tag/-path/-message a NETCONF client would for the same mistake.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lxml import etree

from netconf_core.errors import RpcError

RESTCONF_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"

# RFC 8040 section 7, table 1 (the first status where the RFC allows several).
STATUS = {
    "in-use": 409, "invalid-value": 400, "too-big": 413, "missing-attribute": 400,
    "bad-attribute": 400, "unknown-attribute": 400, "bad-element": 400,
    "missing-element": 400, "unknown-element": 400, "unknown-namespace": 400,
    "access-denied": 403, "lock-denied": 409, "resource-denied": 409,
    "rollback-failed": 500, "data-exists": 409, "data-missing": 409,
    "operation-not-supported": 501, "operation-failed": 500, "partial-operation": 500,
    "malformed-message": 400,
}


class HttpError(Exception):
    """An RpcError with the HTTP status to send it with (where table 1 allows a choice:
    404 for a resource that does not exist, 405 for a method, 401 for no credentials)."""

    def __init__(self, status: int, error: RpcError, headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.headers = headers or {}


def status_of(err: RpcError) -> int:
    return STATUS.get(err.error_tag, 500)


def not_found(message: str) -> HttpError:
    return HttpError(404, RpcError("protocol", "invalid-value", message))


def _json_error(e: RpcError) -> dict[str, Any]:
    out: dict[str, Any] = {"error-type": e.error_type, "error-tag": e.error_tag}
    if e.app_tag:
        out["error-app-tag"] = e.app_tag
    if e.path:
        out["error-path"] = e.path
    out["error-message"] = e.message
    if e.info or e.info_xml:
        info: dict[str, Any] = dict(e.info)
        for el in e.info_xml:
            info[el.tag.rpartition("}")[2]] = etree.tostring(el, encoding="unicode")
        out["error-info"] = info
    return out


_PREFIX = re.compile(r"/([A-Za-z_][A-Za-z0-9_.-]*):")


def render(err: RpcError, fmt: str, modules: dict[str, str]) -> bytes:
    """The errors body in JSON or XML. In XML the error-path is an instance-identifier
    whose prefixes (module names, as libyang writes them) are declared on the element."""
    errs = err.all()
    if fmt == "json":
        return json.dumps({"ietf-restconf:errors": {"error": [_json_error(e) for e in errs]}},
                          indent=2).encode()
    q = f"{{{RESTCONF_NS}}}"
    root = etree.Element(q + "errors", nsmap={None: RESTCONF_NS})
    for e in errs:
        el = etree.SubElement(root, q + "error")
        etree.SubElement(el, q + "error-type").text = e.error_type
        etree.SubElement(el, q + "error-tag").text = e.error_tag
        if e.app_tag:
            etree.SubElement(el, q + "error-app-tag").text = e.app_tag
        if e.path:
            nsmap = {m: modules[m] for m in _PREFIX.findall(e.path) if m in modules}
            etree.SubElement(el, q + "error-path", nsmap=nsmap).text = e.path
        etree.SubElement(el, q + "error-message").text = e.message
        if e.info or e.info_xml:
            info = etree.SubElement(el, q + "error-info")
            for k, v in e.info.items():
                etree.SubElement(info, q + k).text = v
            for x in e.info_xml:
                info.append(x)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
