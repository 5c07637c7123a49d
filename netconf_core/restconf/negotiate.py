"""Media types: which encoding a request body is in (Content-Type) and which one the client
wants back (Accept, with q-values), per RFC 8040 section 5.2."""

from __future__ import annotations

from aiohttp import web

from netconf_core.errors import RpcError
from netconf_core.restconf.errors import HttpError

MEDIA = {"json": "application/yang-data+json", "xml": "application/yang-data+xml"}
_IN_TYPES = {"application/yang-data+json": "json", "application/json": "json",
             "application/yang-data+xml": "xml", "application/xml": "xml", "text/xml": "xml"}

def _media(value: str) -> str:
    return value.split(";")[0].strip().lower()


def input_format(request: web.Request, required: bool) -> str | None:
    if not request.can_read_body and not required:
        return None
    ctype = request.headers.get("Content-Type")
    if ctype is None:
        if required:
            raise HttpError(415, RpcError("protocol", "malformed-message",
                                          "the request needs a Content-Type "
                                          "(application/yang-data+json or +xml)"))
        return None
    fmt = _IN_TYPES.get(_media(ctype))
    if fmt is None:
        raise HttpError(415, RpcError("protocol", "malformed-message",
                                      f"unsupported Content-Type {ctype!r}: use "
                                      "application/yang-data+json or +xml"))
    return fmt


def output_format(request: web.Request, prefer: str | None = None) -> str:
    accept = request.headers.get("Accept")
    if not accept:
        if prefer:
            return prefer
        ctype = _IN_TYPES.get(_media(request.headers.get("Content-Type", "")))
        return ctype or "json"
    choices = []
    for part in accept.split(","):
        media = _media(part)
        q = 1.0
        for p in part.split(";")[1:]:
            k, _, v = p.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if media in _IN_TYPES:
            choices.append((q, _IN_TYPES[media]))
        elif media in ("*/*", "application/*"):
            choices.append((q * 0.99, prefer or "json"))
        elif media == "text/event-stream":
            choices.append((q * 0.98, prefer or "json"))
    choices = [c for c in choices if c[0] > 0]
    if not choices:
        raise HttpError(406, RpcError("protocol", "invalid-value",
                                      f"cannot answer in {accept!r}: use "
                                      "application/yang-data+json or +xml"))
    return max(choices, key=lambda c: c[0])[1]
