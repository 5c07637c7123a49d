"""RFC 6470 base notifications (`ietf-netconf-notifications`): session start/end, confirmed
commit events and netconf-config-change with the edited instance-identifiers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lxml import etree

from netconf_core.errors import NC_NS
from netconf_core.notifications import in_loop
from netconf_core.schema import YANG_NS, SchemaNode

if TYPE_CHECKING:
    from netconf_core.datastore import PendingDiff
    from netconf_core.server import NetconfServer
    from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)

NCN_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-notifications"
_OPERATION = f"{{{YANG_NS}}}operation"
# libyang diff operations → RFC 6470 edit-operation-type
_EDIT_OPS = {"create": "create", "delete": "delete", "replace": "replace"}


def nc_notification(name: str, fields: list[tuple[str, str]]) -> etree._Element:
    el = etree.Element(f"{{{NCN_NS}}}{name}", nsmap={None: NCN_NS})
    for k, v in fields:
        etree.SubElement(el, f"{{{NCN_NS}}}{k}").text = v
    return el


def config_change(
    sess: NetconfSession | None, datastore: str, edits: list[tuple[str, dict[str, str], str]]
) -> etree._Element:
    """`netconf-config-change`; edits are (instance-identifier, prefix map, operation)."""
    q = f"{{{NCN_NS}}}"
    el = etree.Element(q + "netconf-config-change", nsmap={None: NCN_NS})
    by = etree.SubElement(el, q + "changed-by")
    if sess is None:
        etree.SubElement(by, q + "server")
    else:
        etree.SubElement(by, q + "username").text = sess.username
        etree.SubElement(by, q + "session-id").text = str(sess.id)
        if sess.source_host:
            etree.SubElement(by, q + "source-host").text = sess.source_host
    etree.SubElement(el, q + "datastore").text = datastore
    for path, prefixes, op in edits:
        edit = etree.SubElement(el, q + "edit")
        etree.SubElement(edit, q + "target", nsmap=prefixes).text = path
        etree.SubElement(edit, q + "operation").text = op
    return el


class ConfigChangeTracker:
    """Computes the edits of one running-datastore change from libyang's diff."""

    def __init__(self, server: NetconfServer) -> None:
        self.server = server

    @contextlib.contextmanager
    def track(self, sess: NetconfSession | None) -> Iterator[None]:
        ds = self.server.datastores
        before = ds.running_generation
        yield
        # The datastore keeps libyang's diff of its last change of running, computed on
        # demand: build the notification after the reply has gone out (the diff of a big
        # change costs as much as its validation), or at once outside the server's loop.
        if ds.running_generation == before or ds.last_change is None:
            return
        pending = ds.last_change
        pending.wanted = True
        loop = self.server.loop
        if loop is not None and loop.is_running() and in_loop(loop):
            loop.call_soon(self._emit, sess, pending)
        else:
            self._emit(sess, pending)

    def _emit(self, sess: NetconfSession | None, pending: PendingDiff) -> None:
        try:
            diff = pending.result()
            if diff is None:
                return
            edits = self._edits(diff)
            if edits:
                self.server.emit(config_change(sess, "running", edits))
        except Exception:  # the change happened; a reporting problem must not undo the reply
            log.exception("cannot build netconf-config-change")

    def _edits(self, diff: etree._Element) -> list[tuple[str, dict[str, str], str]]:
        out: list[tuple[str, dict[str, str], str]] = []
        prefixes: dict[str, str] = {}
        for top in diff:
            if isinstance(top.tag, str):
                self._walk(top, None, "", prefixes, out)
        # Every edit's target carries the full prefix map (it is small).
        return [(p, dict(prefixes), op) for p, _, op in out]

    def _walk(
        self,
        el: etree._Element,
        parent: SchemaNode | None,
        path: str,
        prefixes: dict[str, str],
        out: list[tuple[str, dict[str, str], str]],
    ) -> None:
        node = self.server.schema.lookup(parent, el.tag)
        if node is None:
            return
        prefix = _prefix_for(node, prefixes)
        step = f"{path}/{prefix}:{node.name}"
        if node.kind == "list":
            for k in node.keys:
                kv = el.find(f"{{{node.namespace}}}{k}")
                if kv is not None:
                    step += f"[{prefix}:{k}={_quote(kv.text or '')}]"
        elif node.kind == "leaf-list":
            step += f"[.={_quote(el.text or '')}]"
        op = el.get(_OPERATION)
        if op in _EDIT_OPS:
            out.append((step, prefixes, _EDIT_OPS[op]))
            return
        for child in el:
            if isinstance(child.tag, str):
                self._walk(child, node, step, prefixes, out)


def _prefix_for(node: SchemaNode, prefixes: dict[str, str]) -> str:
    for p, ns in prefixes.items():
        if ns == node.namespace:
            return p
    p = node.module
    prefixes[p] = node.namespace
    return p


def _quote(v: str) -> str:
    return f"'{v}'" if "'" not in v else f'"{v}"'



__all__ = ["NCN_NS", "NC_NS", "ConfigChangeTracker", "config_change", "nc_notification"]
