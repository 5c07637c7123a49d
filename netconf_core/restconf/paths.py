"""RFC 8040 section 3.5.3 resource identifiers ("api-path") resolved against the YANG schema.

`/restconf/data/i2nsf-flow-policy:flow-protection/policies/policy=p1/crypto-profile` becomes
a list of `Segment`s, each with its schema node and (for list and leaf-list instances) its
key values. From them we build what the NETCONF engine understands: a subtree filter for
`get`, the skeleton of an `<config>` for `edit-config`, and the libyang data path used to
parse a request body in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from lxml import etree

from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import SchemaNode, YangSchema

NC = f"{{{NC_NS}}}"


@dataclass(frozen=True)
class Segment:
    node: SchemaNode
    keys: tuple[str, ...] | None  # list: key values in key order; leaf-list: (value,)

    @property
    def is_instance(self) -> bool:
        return self.keys is not None


def _bad(msg: str, tag: str = "invalid-value") -> RpcError:
    return RpcError("protocol", tag, msg)


def module_namespaces(schema: YangSchema) -> dict[str, str]:
    """Implemented modules by name → namespace (api-path prefixes are module names)."""
    return {m.name: m.namespace for m in schema.module_list() if m.implemented}


def parse_api_path(schema: YangSchema, raw: str, modules: dict[str, str]) -> list[Segment]:
    """Resolve the still percent-encoded part after `/restconf/data`. Raises RpcError
    (invalid-value → 404 for paths naming nothing, 400 for malformed ones)."""
    raw = raw.strip("/")
    if not raw:
        return []
    out: list[Segment] = []
    parent: SchemaNode | None = None
    for i, piece in enumerate(raw.split("/")):
        if not piece:
            raise _bad("empty path segment in the resource identifier", "malformed-message")
        ident, eq, keytext = piece.partition("=")
        ident = unquote(ident)
        mod, colon, name = ident.rpartition(":")
        if not colon:
            if i == 0:
                raise _bad(f"the first path segment {ident!r} must be module-qualified "
                           "(module:name)", "malformed-message")
            mod, name = "", ident
        if mod:
            ns = modules.get(mod)
            if ns is None:
                raise RpcError("application", "invalid-value", f"no module {mod!r} is served",
                               info={"bad-element": ident})
        else:
            assert parent is not None
            ns = parent.namespace
        sn = schema.top(ns, name) if parent is None else schema.child(parent, ns, name)
        if sn is None:
            where = "at the top level" if parent is None else f"under {parent.name!r}"
            raise RpcError("application", "invalid-value",
                           f"no data node {ident!r} {where}", info={"bad-element": ident})
        keys: tuple[str, ...] | None = None
        if eq:
            if sn.kind == "list":
                values = tuple(unquote(v) for v in keytext.split(","))
                if len(values) != len(sn.keys):
                    raise _bad(f"list {sn.name!r} needs {len(sn.keys)} key value(s) "
                               f"({', '.join(sn.keys)}), got {len(values)}", "malformed-message")
                keys = values
            elif sn.kind == "leaf-list":
                keys = (unquote(keytext),)
            else:
                raise _bad(f"{sn.name!r} is a {sn.kind}: it takes no key values",
                           "malformed-message")
        elif sn.kind == "list" and i < len(raw.split("/")) - 1:
            raise _bad(f"list {sn.name!r} needs its key values ({', '.join(sn.keys)}) to "
                       "go deeper", "malformed-message")
        out.append(Segment(sn, keys))
        parent = sn
    return out


def segment_text(seg: Segment, parent: Segment | None) -> str:
    """One api-path segment (percent-encoded), module-qualified where RFC 8040 wants it."""
    from urllib.parse import quote

    name = seg.node.name
    if parent is None or parent.node.module != seg.node.module:
        name = f"{seg.node.module}:{name}"
    if seg.keys is not None:
        name += "=" + ",".join(quote(k, safe="") for k in seg.keys)
    return name


def api_path(segments: list[Segment]) -> str:
    out = []
    for i, seg in enumerate(segments):
        out.append(segment_text(seg, segments[i - 1] if i else None))
    return "/".join(out)


def _skeleton(segments: list[Segment], root: etree._Element) -> etree._Element:
    """Elements for every segment under `root` (list instances with their key leaves);
    returns the element of the last segment."""
    cur = root
    for seg in segments:
        el = etree.SubElement(cur, seg.node.tag, nsmap={None: seg.node.namespace}
                              if seg.node.namespace != _ns(cur) else None)
        if seg.keys is not None:
            if seg.node.kind == "list":
                for k, v in zip(seg.node.key_tags, seg.keys, strict=True):
                    etree.SubElement(el, k).text = v
            else:
                el.text = seg.keys[0]
        cur = el
    return cur


def _ns(el: etree._Element) -> str:
    return el.tag[1:].partition("}")[0] if el.tag.startswith("{") else ""


def subtree_filter(segments: list[Segment]) -> etree._Element | None:
    """The RFC 6241 subtree filter selecting exactly the target (None: everything)."""
    if not segments:
        return None
    filt = etree.Element(NC + "filter", nsmap={None: NC_NS})
    filt.set("type", "subtree")
    _skeleton(segments, filt)
    return filt


def config_skeleton(segments: list[Segment]) -> tuple[etree._Element, etree._Element]:
    """`<config>` holding the ancestors of the target (and the target's own element when
    `segments` names it); returns (config, deepest element)."""
    cfg = etree.Element(NC + "config", nsmap={None: NC_NS})
    return cfg, _skeleton(segments, cfg) if segments else cfg


def find_targets(data: etree._Element, segments: list[Segment]) -> list[etree._Element]:
    """The elements of `data` (a `<data>` root) the path names."""
    level = [data]
    for seg in segments:
        nxt = []
        for parent in level:
            for child in parent.iterchildren(seg.node.tag):
                if seg.keys is None:
                    nxt.append(child)
                elif seg.node.kind == "list":
                    got = tuple((child.findtext(k) or "").strip() for k in seg.node.key_tags)
                    if got == seg.keys:
                        nxt.append(child)
                elif (child.text or "").strip() == seg.keys[0]:
                    nxt.append(child)
        level = nxt
    return level


def _xpath_literal(v: str) -> str:
    if "'" not in v:
        return f"'{v}'"
    if '"' not in v:
        return f'"{v}"'
    raise _bad("key values holding both quote characters are not supported")


def data_path(segments: list[Segment]) -> str:
    """The libyang data path (JSON-style prefixes) of the segments."""
    parts = []
    prev: SchemaNode | None = None
    for seg in segments:
        name = seg.node.name
        if prev is None or prev.module != seg.node.module:
            name = f"{seg.node.module}:{name}"
        if seg.keys is not None:
            if seg.node.kind == "list":
                name += "".join(f"[{k}={_xpath_literal(v)}]"
                                for k, v in zip(seg.node.keys, seg.keys, strict=True))
            else:
                name += f"[.={_xpath_literal(seg.keys[0])}]"
        parts.append(name)
        prev = seg.node
    return "/" + "/".join(parts)


# ---- the "fields" query parameter (RFC 8040 section 4.8.3) --------------------------------

FieldTree = dict[str, "FieldTree | None"]


def parse_fields(text: str) -> FieldTree:
    """`a;b/c;d(e;f)` → {"a": None, "b": {"c": None}, "d": {"e": None, "f": None}}
    (names may be module-qualified; None selects the whole node)."""
    pos = 0

    def fail(why: str) -> RpcError:
        return RpcError("protocol", "invalid-value", f"bad fields expression {text!r}: {why}",
                        info={"bad-element": "fields"})

    def name() -> str:
        nonlocal pos
        start = pos
        while pos < len(text) and text[pos] not in ";/()":
            pos += 1
        if pos == start:
            raise fail(f"a node name is expected at {start}")
        return text[start:pos]

    def path(into: FieldTree) -> None:
        nonlocal pos
        n = name()
        if pos < len(text) and text[pos] == "/":
            pos += 1
            sub = into.get(n) or {}
            into[n] = sub
            path(sub)
        elif pos < len(text) and text[pos] == "(":
            pos += 1
            sub = into.get(n) or {}
            into[n] = sub
            expr(sub)
            if pos >= len(text) or text[pos] != ")":
                raise fail("')' expected")
            pos += 1
        else:
            into.setdefault(n, None)

    def expr(into: FieldTree) -> None:
        nonlocal pos
        path(into)
        while pos < len(text) and text[pos] == ";":
            pos += 1
            path(into)

    out: FieldTree = {}
    expr(out)
    if pos != len(text):
        raise fail(f"unexpected {text[pos]!r} at {pos}")
    return out


def select_fields(schema: YangSchema, el: etree._Element, sn: SchemaNode | None,
                  fields: FieldTree) -> None:
    """Keep in `el` only the descendants `fields` names (list keys always stay)."""
    keys = set(sn.key_tags) if sn is not None and sn.kind == "list" else set()
    for child in list(el):
        if not isinstance(child.tag, str) or child.tag in keys:
            continue
        local = child.tag.rpartition("}")[2]
        csn = schema.lookup(sn, child.tag)
        qual = f"{csn.module}:{local}" if csn is not None else local
        sub = fields.get(qual, fields.get(local, False)) if qual != local else \
            fields.get(local, False)
        if sub is False:
            el.remove(child)
        elif sub is not None:
            select_fields(schema, child, csn, sub)
