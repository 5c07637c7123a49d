"""Request bodies in, representations out: RFC 7951 JSON and XML through libyang.

The NETCONF engine works on lxml trees in XML. A RESTCONF body (either encoding) is parsed
by libyang *in place*: under the data node its URI names as parent (created with
`lyd_new_path`), strictly against the schema, so unknown nodes, bad values and a body that
does not fit where it is sent are refused before the datastores see anything. Output is the
other way round: the XML the engine returns is parsed by libyang and printed as JSON.
"""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from lxml import etree

from netconf_core.errors import NC_NS, RpcError
from netconf_core.restconf.paths import Segment, data_path
from netconf_core.schema import YangSchema, print_xml

JSON, XML = "json", "xml"
_FMT = {JSON: lib.LYD_JSON, XML: lib.LYD_XML}
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True,
                          load_dtd=False, huge_tree=True)


def _errors(schema: YangSchema, fallback: str) -> RpcError:
    err = schema._errors_to_rpc_error()
    if err.message == "data validation failed":
        err.message = fallback
    return err


def _in(text: bytes) -> tuple[Any, Any]:
    in_p = ffi.new("struct ly_in **")
    buf = ffi.new("char[]", text)
    if lib.ly_in_new_memory(buf, in_p) != lib.LY_SUCCESS:
        raise RpcError("application", "operation-failed", "cannot read the request body")
    return in_p, buf


def parse_data(schema: YangSchema, text: bytes, fmt: str, parent: libyang.DNode | None = None,
               state: bool = False) -> libyang.DNode | None:
    """Parse data (strict, no validation: the engine validates the whole datastore)."""
    ctx = schema.ctx
    flags = lib.LYD_PARSE_STRICT | lib.LYD_PARSE_ONLY
    if not state:
        flags |= lib.LYD_PARSE_NO_STATE
    in_p, _keep = _in(text)
    out = ffi.new("struct lyd_node **")
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    try:
        ret = lib.lyd_parse_data(ctx.cdata, parent.cdata if parent is not None else ffi.NULL,
                                 in_p[0], _FMT[fmt], flags, 0,
                                 out if parent is None else ffi.NULL)
    finally:
        lib.ly_in_free(in_p[0], 0)
    if ret != lib.LY_SUCCESS:
        if parent is None and out[0] != ffi.NULL:
            lib.lyd_free_all(out[0])
        raise _errors(schema, "the request body does not match the YANG schema")
    if parent is not None or out[0] == ffi.NULL:
        return None
    return libyang.DNode.new(ctx, out[0])


def _root(dn: libyang.DNode) -> libyang.DNode:
    while dn.parent() is not None:
        dn = dn.parent()
    # first sibling
    first = lib.lyd_first_sibling(dn.cdata)
    return libyang.DNode.new(dn.context, first)


def body_to_xml(schema: YangSchema, body: bytes, fmt: str, parent: list[Segment]
                ) -> etree._Element:
    """A request body that holds child nodes of the resource `parent` (the datastore when
    empty), as a `<data>` root whose tree runs from the top down to the body's nodes."""
    if not body.strip():
        raise RpcError("protocol", "malformed-message", "the request needs a body")
    if fmt == JSON:
        try:
            json.loads(body)
        except ValueError as exc:
            raise RpcError("protocol", "malformed-message",
                           f"the body is not valid JSON: {exc}") from None
    else:
        try:
            etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise RpcError("protocol", "malformed-message",
                           f"the body is not well-formed XML: {exc}") from None
    tree: libyang.DNode | None
    if parent:
        path = data_path(parent)
        try:
            top = schema.ctx.create_data_path(path)
        except libyang.LibyangError:
            raise _errors(schema, f"bad key value in the resource identifier {path}") from None
        anchor = top.find_path(path)
        try:
            parse_data(schema, body, fmt, anchor)
            tree = _root(anchor)
        except BaseException:
            lib.lyd_free_all(top.cdata)
            raise
    else:
        tree = parse_data(schema, body, fmt)
        if tree is None:
            raise RpcError("protocol", "malformed-message", "the body holds no data node")
    try:
        text = print_xml(tree)
    finally:
        lib.lyd_free_all(tree.cdata)
    return etree.fromstring(b'<data xmlns="' + NC_NS.encode() + b'">' + text + b"</data>")


def canonical_keys(schema: YangSchema, segments: list[Segment]) -> list[Segment]:
    """The segments with their key values in libyang's canonical form (`::1` and
    `0:0::1` name the same entry)."""
    last = max((i for i, s in enumerate(segments) if s.keys is not None), default=-1)
    if last < 0:
        return segments
    path = data_path(segments[:last + 1])
    try:
        top = schema.ctx.create_data_path(path)
    except libyang.LibyangError:
        raise _errors(schema, f"bad key value in the resource identifier {path}") from None
    try:
        xml = print_xml(top)
    finally:
        lib.lyd_free_all(top.cdata)
    el: etree._Element = etree.fromstring(b"<d>" + xml + b"</d>")
    out = []
    for seg in segments[:last + 1]:
        el = el.find(seg.node.tag)  # type: ignore[assignment]
        keys = seg.keys
        if keys is not None:
            if seg.node.kind == "list":
                keys = tuple((el.findtext(k) or "") for k in seg.node.key_tags)
            else:
                keys = ((el.text or ""),)
        out.append(Segment(seg.node, keys))
    return out + segments[last + 1:]


def standalone(el: etree._Element) -> bytes:
    """`el` serialized with every prefix in scope declared on it: identityref and
    instance-identifier values use prefixes that an ancestor may declare."""
    raw = etree.tostring(el)
    end = raw.index(b">")
    if raw[end - 1:end] == b"/":
        end -= 1
    head = raw[:end]
    extra = b"".join(
        b' xmlns:%s="%s"' % (p.encode(), escape(uri).encode())
        for p, uri in el.nsmap.items()
        if p and b"xmlns:" + p.encode() + b"=" not in head)
    return head + extra + raw[end:]


def data_to_json(schema: YangSchema, data_children: bytes) -> dict[str, Any]:
    """Serialized top-level data nodes (config and state) as an RFC 7951 JSON object."""
    if not data_children.strip():
        return {}
    # with-defaults=report-all-tagged: RFC 6243's XML attribute is libyang's (and RFC 8040's
    # JSON) ietf-netconf-with-defaults:default metadata
    data_children = data_children.replace(b'"urn:ietf:params:xml:ns:netconf:default:1.0"',
                                          b'"urn:ietf:params:xml:ns:yang:'
                                          b'ietf-netconf-with-defaults"')
    tagged = b"ietf-netconf-with-defaults" in data_children
    tree = parse_data(schema, data_children, XML, state=True)
    if tree is None:
        return {}
    buf = ffi.new("char **")
    # nodes tagged as defaults are printed (with their annotation), not dropped
    flags = lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_SHRINK | (
        lib.LYD_PRINT_WD_ALL_TAG if tagged else 0)
    try:
        if lib.lyd_print_mem(buf, tree.cdata, lib.LYD_JSON, flags) != lib.LY_SUCCESS:
            raise RpcError("application", "operation-failed", "cannot print JSON")
        text = ffi.string(buf[0]).decode() if buf[0] != ffi.NULL else ""
    finally:
        if buf[0] != ffi.NULL:
            lib.free(buf[0])
        lib.lyd_free_all(tree.cdata)
    return json.loads(text) if text else {}


def minimal_tree(targets: list[etree._Element], segments: list[Segment]) -> bytes:
    """The targets with copies of their ancestors (keys only), serialized: what libyang
    needs to print the targets as JSON in the right place."""
    if not segments:
        return b"".join(standalone(t) for t in targets)
    parent = targets[0].getparent()
    chain: list[etree._Element] = []
    while parent is not None and parent.getparent() is not None:  # up to the <data> root
        chain.append(parent)
        parent = parent.getparent()
    chain.reverse()
    root: etree._Element | None = None
    cur: etree._Element | None = None
    for anc, seg in zip(chain, segments, strict=False):
        el = etree.Element(anc.tag, nsmap={None: seg.node.namespace})
        for k in seg.node.key_tags if seg.node.kind == "list" else ():
            kel = anc.find(k)
            if kel is not None:
                el.append(etree.fromstring(standalone(kel)))
        if cur is None:
            root = el
        else:
            cur.append(el)
        cur = el
    if cur is None:
        return b"".join(standalone(t) for t in targets)
    for t in targets:
        cur.append(etree.fromstring(standalone(t)))
    assert root is not None
    return etree.tostring(root)


def walk_json(doc: dict[str, Any], segments: list[Segment]) -> Any:
    """Follow the (single-instance) ancestors of the target in a JSON document; return the
    value of the target's member."""
    cur: Any = doc
    prev_mod = None
    for i, seg in enumerate(segments):
        qual = f"{seg.node.module}:{seg.node.name}"
        key = qual if prev_mod != seg.node.module else seg.node.name
        if isinstance(cur, list):
            cur = cur[0]
        if key not in cur:
            key = qual if key != qual else seg.node.name
        cur = cur[key]
        prev_mod = seg.node.module
        if i == len(segments) - 1:
            return cur
    return cur


def rpc_input_to_xml(schema: YangSchema, ns: str, module: str, name: str, body: bytes,
                     fmt: str) -> etree._Element:
    """RFC 8040 operation input (`{"mod:input": {...}}` or `<input xmlns=...>`) as the
    NETCONF rpc element `<name xmlns=ns>...</name>`, checked against the rpc's input."""
    if not body.strip():
        text = (json.dumps({f"{module}:{name}": {}}).encode() if fmt == JSON
                else f'<{name} xmlns="{ns}"/>'.encode())
    elif fmt == JSON:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise RpcError("protocol", "malformed-message",
                           f"the body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {f"{module}:input"}:
            raise RpcError("protocol", "malformed-message",
                           f'the body of an operation is {{"{module}:input": {{...}}}}')
        text = json.dumps({f"{module}:{name}": doc[f"{module}:input"] or {}}).encode()
    else:
        try:
            el = etree.fromstring(body, _PARSER)
        except etree.XMLSyntaxError as exc:
            raise RpcError("protocol", "malformed-message",
                           f"the body is not well-formed XML: {exc}") from None
        if el.tag != f"{{{ns}}}input":
            raise RpcError("protocol", "malformed-message",
                           f'the body of an operation is <input xmlns="{ns}">...</input>')
        el.tag = f"{{{ns}}}{name}"
        text = etree.tostring(el)
    op = _parse_op(schema, text, fmt, lib.LYD_TYPE_RPC_YANG)
    try:
        xml = print_xml(op)
    finally:
        lib.lyd_free_all(op.cdata)
    return etree.fromstring(xml)


def _parse_op(schema: YangSchema, text: bytes, fmt: str, dtype: int) -> libyang.DNode:
    ctx = schema.ctx
    in_p, _keep = _in(text)
    tree = ffi.new("struct lyd_node **")
    op = ffi.new("struct lyd_node **")
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    try:
        ret = lib.lyd_parse_op(ctx.cdata, ffi.NULL, in_p[0], _FMT[fmt], dtype, tree, op)
    finally:
        lib.ly_in_free(in_p[0], 0)
    if ret != lib.LY_SUCCESS or tree[0] == ffi.NULL:
        if tree[0] != ffi.NULL:
            lib.lyd_free_all(tree[0])
        raise _errors(schema, "the operation input does not match the YANG schema")
    return libyang.DNode.new(ctx, tree[0])


def rpc_output(schema: YangSchema, ns: str, module: str, name: str,
               body: list[etree._Element | bytes], fmt: str) -> bytes:
    """The output elements of a NETCONF handler as RFC 8040 operation output."""
    out = etree.Element(f"{{{ns}}}output", nsmap={None: ns})
    for el in body:
        out.append(etree.fromstring(el) if isinstance(el, bytes) else el)
    if fmt == XML:
        return etree.tostring(out)
    out.tag = f"{{{ns}}}{name}"
    op = _parse_op(schema, etree.tostring(out), XML, lib.LYD_TYPE_REPLY_YANG)
    try:
        text = op.print_mem("json", with_siblings=True, pretty=False)
    finally:
        lib.lyd_free_all(op.cdata)
    doc = json.loads(text) if text else {}
    return json.dumps({f"{module}:output": doc.get(f"{module}:{name}", {})}).encode()


def notification_json(schema: YangSchema, notification: bytes) -> bytes:
    """An RFC 5277 `<notification>` as RFC 8040 section 6.4 JSON."""
    root = etree.fromstring(notification)
    event_time = ""
    body: dict[str, Any] = {}
    for child in root:
        if not isinstance(child.tag, str):
            continue
        if child.tag.endswith("}eventTime"):
            event_time = (child.text or "").strip()
            continue
        try:
            op = _parse_op(schema, etree.tostring(child), XML, lib.LYD_TYPE_NOTIF_YANG)
        except RpcError:
            # not a YANG notification of ours (replayComplete, notificationComplete)
            body[f"nc-notifications:{child.tag.rpartition('}')[2]}"] = {}
            continue
        try:
            text = op.print_mem("json", with_siblings=True, pretty=False)
        finally:
            lib.lyd_free_all(op.cdata)
        body.update(json.loads(text) if text else {})
    return json.dumps({"ietf-restconf:notification": {"eventTime": event_time, **body}}
                      ).encode()
