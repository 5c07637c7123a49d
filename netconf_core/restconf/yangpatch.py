"""RFC 8072 YANG Patch: several edits applied all together or not at all.

The edits are made, in order, in the candidate datastore under a lock held for the patch
(refused with 409 when another session holds it or has uncommitted changes there), then
committed: one validation of the whole result, one commit through the appliers. Any failing
edit or a failing commit discards the candidate: running is untouched. The reply is a
`yang-patch-status` naming the failed edit and carrying its RFC 8040 errors.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lxml import etree

from netconf_core.errors import NC_NS, RpcError
from netconf_core.restconf import codec
from netconf_core.restconf.errors import RESTCONF_NS, status_of
from netconf_core.restconf.paths import Segment, config_skeleton, find_targets, parse_api_path

if TYPE_CHECKING:
    from netconf_core.restconf.server import RestconfServer, RestconfSession

YP_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-patch"
NC = f"{{{NC_NS}}}"
TYPES = {"application/yang-patch+json": "json", "application/yang-patch+xml": "xml"}
OPS = ("create", "delete", "insert", "merge", "move", "replace", "remove")
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True,
                          load_dtd=False, huge_tree=True)


class _EditFailed(Exception):
    def __init__(self, edit_id: str | None, error: RpcError) -> None:
        super().__init__(error.message)
        self.edit_id = edit_id
        self.error = error


def _bad(msg: str) -> RpcError:
    return RpcError("protocol", "malformed-message", msg)


def _parse(body: bytes, fmt: str) -> tuple[str, list[dict[str, Any]]]:
    """(patch-id, edits) with each edit's value as a RESTCONF body in the same encoding."""
    if fmt == "json":
        try:
            doc = json.loads(body)
            yp = doc["ietf-yang-patch:yang-patch"]
            pid = str(yp["patch-id"])
            raw = yp.get("edit", [])
        except (ValueError, KeyError, TypeError):
            raise _bad('a YANG Patch is {"ietf-yang-patch:yang-patch": {"patch-id": ..., '
                       '"edit": [...]}}') from None
        edits = []
        for e in raw:
            if not isinstance(e, dict):
                raise _bad("each edit is an object")
            value = e.get("value")
            edits.append({"edit-id": str(e.get("edit-id", "")), "operation": e.get("operation"),
                          "target": e.get("target"),
                          "value": json.dumps(value).encode() if value is not None else None})
        return pid, edits
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise _bad(f"the body is not well-formed XML: {exc}") from None
    q = f"{{{YP_NS}}}"
    if root.tag != q + "yang-patch" or root.findtext(q + "patch-id") is None:
        raise _bad(f'a YANG Patch is <yang-patch xmlns="{YP_NS}"> with a <patch-id>')
    edits = []
    for e in root.iterfind(q + "edit"):
        val = e.find(q + "value")
        value = None
        if val is not None:
            kids = [c for c in val if isinstance(c.tag, str)]
            value = b"".join(codec.standalone(c) for c in kids) if kids else None
        edits.append({"edit-id": (e.findtext(q + "edit-id") or "").strip(),
                      "operation": (e.findtext(q + "operation") or "").strip(),
                      "target": (e.findtext(q + "target") or "").strip(), "value": value})
    return (root.findtext(q + "patch-id") or "").strip(), edits


def _edit_config(rc: RestconfServer, sess: RestconfSession, base: list[Segment],
                 edit: dict[str, Any], fmt: str) -> etree._Element:
    op = edit["operation"]
    if op not in OPS:
        raise RpcError("protocol", "invalid-value", f"unknown edit operation {op!r}",
                       info={"bad-element": "operation"})
    if op in ("insert", "move"):
        raise RpcError("protocol", "operation-not-supported",
                       f"{op} applies to ordered-by-user lists; these modules have none")
    target = edit["target"]
    if not isinstance(target, str) or not target.startswith("/"):
        raise RpcError("protocol", "invalid-value", "an edit's target is a path starting "
                       "with '/' (relative to the request's resource)",
                       info={"bad-element": "target"})
    schema = rc.nc.schema
    if base:
        from netconf_core.restconf.paths import api_path

        full = api_path(base) + ("" if target == "/" else target)
    else:
        full = target
    segs = codec.canonical_keys(schema, parse_api_path(schema, full, rc.modules))
    if not segs:
        raise RpcError("protocol", "invalid-value", "an edit must name a data node",
                       info={"bad-element": "target"})
    if op in ("delete", "remove"):
        cfg, el = config_skeleton(segs)
        el.set(NC + "operation", op)
        return cfg
    if edit["value"] is None:
        raise RpcError("protocol", "missing-element", f"a {op} edit needs a value",
                       info={"bad-element": "value"})
    data = codec.body_to_xml(schema, edit["value"], fmt, segs[:-1])
    found = find_targets(data, segs)
    if len(found) != 1:
        raise RpcError("protocol", "invalid-value",
                       "the edit's value must be the target node (keys as in the target)",
                       info={"bad-element": "value"})
    found[0].set(NC + "operation", op)
    data.tag = NC + "config"
    return data


def _op(tag: str, *children: etree._Element) -> etree._Element:
    el = etree.Element(NC + tag, nsmap={None: NC_NS})
    for c in children:
        el.append(c)
    return el


def _target(name: str, ds: str = "candidate") -> etree._Element:
    t = etree.Element(NC + name)
    etree.SubElement(t, NC + ds)
    return t


async def apply(rc: RestconfServer, request: web.Request, segments: list[Segment],
                fmt: str, out_fmt: str) -> web.Response:
    body = await request.read()
    pid, edits = _parse(body, fmt)
    sess = rc._session(request)
    configs = []
    try:
        for e in edits:  # check every edit before anything is touched
            try:
                configs.append((e["edit-id"], _edit_config(rc, sess, segments, e, fmt)))
            except RpcError as err:
                raise _EditFailed(e["edit-id"], err) from None
        locked = False
        try:
            rc._call(request, _op("lock", _target("target")), sess)
            locked = True
            for eid, cfg in configs:
                edit = _op("edit-config", _target("target"), cfg)
                etree.SubElement(edit, NC + "error-option").text = "rollback-on-error"
                try:
                    rc._call(request, edit, sess)
                except RpcError as err:
                    raise _EditFailed(eid, err) from None
            try:
                rc._call(request, _op("commit"), sess)
            except RpcError as err:
                raise _EditFailed(None, err) from None
        except BaseException:
            if locked:
                rc._call(request, _op("discard-changes"), sess)
            raise
        finally:
            if locked:
                rc._call(request, _op("unlock", _target("target")), sess)
    except _EditFailed as failed:
        return _status(rc, pid, failed, out_fmt)
    return _status(rc, pid, None, out_fmt)


def _status(rc: RestconfServer, pid: str, failed: _EditFailed | None, fmt: str
            ) -> web.Response:
    from netconf_core.restconf.errors import _json_error, render

    media = "application/yang-data+" + fmt
    if failed is None:
        if fmt == "json":
            body = json.dumps({"ietf-yang-patch:yang-patch-status": {
                "patch-id": pid, "ok": [None]}}).encode()
        else:
            body = (f'<yang-patch-status xmlns="{YP_NS}"><patch-id>{_x(pid)}</patch-id>'
                    "<ok/></yang-patch-status>").encode()
        return web.Response(status=200, body=body, content_type=media)
    err = failed.error
    status = status_of(err)
    if fmt == "json":
        errors = {"error": [_json_error(e) for e in err.all()]}
        st: dict[str, Any] = {"patch-id": pid}
        if failed.edit_id is None:
            st["global-errors"] = errors
        else:
            st["edit-status"] = {"edit": [{"edit-id": failed.edit_id, "errors": errors}]}
        body = json.dumps({"ietf-yang-patch:yang-patch-status": st}, indent=1).encode()
    else:
        # `errors` is the ietf-restconf grouping used by ietf-yang-patch: its namespace
        tree = etree.fromstring(render(err, "xml", rc.modules))
        for el in tree.iter():
            if isinstance(el.tag, str) and el.tag.startswith(f"{{{RESTCONF_NS}}}"):
                el.tag = f"{{{YP_NS}}}" + el.tag.rpartition("}")[2]
        etree.cleanup_namespaces(tree)
        errs = etree.tostring(tree)
        if failed.edit_id is None:
            mid = b"<global-errors>" + errs + b"</global-errors>"
        else:
            mid = (b"<edit-status><edit><edit-id>" + _x(failed.edit_id).encode()
                   + b"</edit-id>" + errs + b"</edit></edit-status>")
        body = (f'<yang-patch-status xmlns="{YP_NS}"><patch-id>{_x(pid)}</patch-id>'
                .encode() + mid + b"</yang-patch-status>")
    return web.Response(status=status, body=body, content_type=media)


def _x(s: str) -> str:
    from xml.sax.saxutils import escape

    return escape(s)
