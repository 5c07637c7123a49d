"""The part of RFC 8341 (NACM) that protects key material: data nodes marked
`nacm:default-deny-all` (RFC 9061's keys, PSKs, private keys) are neither shown to nor
writable by users whose configuration says `read_secrets = false`.

Full NACM rule lists are not implemented; every other node is open to every authenticated
user, as with NACM's default rules for an `admin` group.
"""

from __future__ import annotations

from lxml import etree

from netconf_core.errors import RpcError
from netconf_core.schema import SchemaNode, YangSchema


def strip_secrets(schema: YangSchema, data: etree._Element) -> None:
    """Remove default-deny-all nodes from a `<data>` tree in place."""
    _strip(schema, data, None)


def _strip(schema: YangSchema, parent: etree._Element, psn: SchemaNode | None) -> None:
    for child in list(parent):
        if not isinstance(child.tag, str):
            continue
        sn = schema.lookup(psn, child.tag)
        if sn is None:
            continue
        if sn.deny_all:
            parent.remove(child)
        elif sn.kind in ("container", "list"):
            _strip(schema, child, sn)


def check_no_secrets(schema: YangSchema, config: etree._Element, user: str) -> None:
    """access-denied if an edit by `user` touches a default-deny-all node."""
    path = _find(schema, config, None, "")
    if path is not None:
        raise RpcError(
            "application", "access-denied",
            f"user {user!r} may not read or write key material ({path})",
            path=path,
        )


def _find(schema: YangSchema, parent: etree._Element, psn: SchemaNode | None,
          prefix: str) -> str | None:
    for child in parent:
        if not isinstance(child.tag, str):
            continue
        sn = schema.lookup(psn, child.tag)
        if sn is None:
            continue
        here = f"{prefix}/{sn.module}:{sn.name}"
        if sn.deny_all:
            return here
        if sn.kind in ("container", "list"):
            found = _find(schema, child, sn, here)
            if found:
                return found
    return None
