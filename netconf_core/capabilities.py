"""The capability URIs the server advertises in its `<hello>`.

Clients decide what they may send from these exact strings (ncclient refuses test-option,
error-option or confirmed commits when the matching URI is missing), so they are spelled as
in RFC 6241 section 10.4, RFC 5277, RFC 7950 and RFC 8525.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from urllib.parse import quote

BASE_10 = "urn:ietf:params:netconf:base:1.0"
BASE_11 = "urn:ietf:params:netconf:base:1.1"

PROTOCOL_CAPABILITIES: tuple[str, ...] = (
    BASE_10,
    BASE_11,
    "urn:ietf:params:netconf:capability:writable-running:1.0",
    "urn:ietf:params:netconf:capability:candidate:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.0",
    "urn:ietf:params:netconf:capability:confirmed-commit:1.1",
    "urn:ietf:params:netconf:capability:rollback-on-error:1.0",
    "urn:ietf:params:netconf:capability:validate:1.0",
    "urn:ietf:params:netconf:capability:validate:1.1",
    "urn:ietf:params:netconf:capability:startup:1.0",
    "urn:ietf:params:netconf:capability:xpath:1.0",
    "urn:ietf:params:netconf:capability:notification:1.0",
    "urn:ietf:params:netconf:capability:interleave:1.0",
)

YANG_LIBRARY_REVISION = "2019-01-04"


def module_capability(
    namespace: str, name: str, revision: str | None, features: Iterable[str] = ()
) -> str:
    """`<ns>?module=<name>&revision=<rev>&features=a,b` (RFC 6020 section 5.6.4)."""
    uri = f"{namespace}?module={quote(name, safe='-_.')}"
    if revision:
        uri += f"&revision={revision}"
    feats = ",".join(sorted(features))
    if feats:
        uri += f"&features={feats}"
    return uri


def module_set_id(module_caps: Iterable[str]) -> str:
    """A stable id that changes whenever the set of modules or features changes."""
    h = hashlib.sha256()
    for cap in sorted(module_caps):
        h.update(cap.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def yang_library_capability(set_id: str) -> str:
    return (
        "urn:ietf:params:netconf:capability:yang-library:1.0"
        f"?revision={YANG_LIBRARY_REVISION}&module-set-id={set_id}"
    )


def yang_library_11_capability(content_id: str) -> str:
    return (
        "urn:ietf:params:netconf:capability:yang-library:1.1"
        f"?revision={YANG_LIBRARY_REVISION}&content-id={content_id}"
    )
