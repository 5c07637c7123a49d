"""`<filter>` for get and get-config: RFC 6241 section 6 subtree filtering and the `:xpath`
capability's XPath 1.0 filter, both over lxml `<data>` trees.

List keys are kept in every partially selected list entry (as Netopeer2 does) so that the
client can tell which entry a selected leaf belongs to.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from lxml import etree

from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import SchemaNode, YangSchema


def _new_data() -> etree._Element:
    return etree.Element(f"{{{NC_NS}}}data", nsmap={None: NC_NS})


def _matches(f: etree._Element, d: etree._Element) -> bool:
    if not isinstance(d.tag, str):
        return False
    if f.tag.startswith("{"):
        return f.tag == d.tag
    # A filter element without a namespace matches that name in any namespace.
    return d.tag.rpartition("}")[2] == f.tag


def _is_content_match(f: etree._Element) -> bool:
    return len(f) == 0 and bool((f.text or "").strip())


def _is_selection(f: etree._Element) -> bool:
    return len(f) == 0 and not (f.text or "").strip()


def _attrs_match(f: etree._Element, d: etree._Element) -> bool:
    return all(d.get(k) == v for k, v in f.attrib.items())


def top_level_selector(filt: etree._Element | None) -> Callable[[str], bool] | None:
    """Which top-level data nodes (by tag) a `<filter>` can select; None: any (no filter,
    an XPath filter). Lets `get` skip building what would be filtered away."""
    if filt is None:
        return None
    ftype = filt.get("type") or filt.get(f"{{{NC_NS}}}type") or "subtree"
    if ftype != "subtree":
        return None
    tags: set[str] = set()
    names: set[str] = set()  # filter elements without a namespace match it in any
    for f in filt:
        if isinstance(f.tag, str):
            if f.tag.startswith("{"):
                tags.add(f.tag)
            else:
                names.add(f.tag)
    return lambda tag: tag in tags or (bool(names) and tag.rpartition("}")[2] in names)


def subtree_filter(
    data: etree._Element, filt: etree._Element, schema: YangSchema | None = None
) -> etree._Element:
    """Apply the children of `filt` (a `<filter type="subtree">`) to the `<data>` root."""
    out = _new_data()
    fnodes = [f for f in filt if isinstance(f.tag, str)]
    if not fnodes:
        return out
    for child in _filter_children(data, fnodes, schema, None, top=True):
        out.append(child)
    return out


def _filter_children(
    data_parent: etree._Element,
    fnodes: list[etree._Element],
    schema: YangSchema | None,
    psn: SchemaNode | None,
    top: bool = False,
) -> list[etree._Element]:
    """The filtered copies of `data_parent`'s children, or `_ALL` when the sibling set holds
    only content match nodes that all match (RFC 6241 6.2.5: the whole parent is selected)."""
    content = [f for f in fnodes if _is_content_match(f)]
    others = [f for f in fnodes if not _is_content_match(f)]
    for cm in content:
        want = (cm.text or "").strip()
        if not any(_matches(cm, d) and (d.text or "").strip() == want for d in data_parent):
            return []
    if content and not others and not top:
        return _ALL
    result: list[etree._Element] = []
    for d in data_parent:
        if not isinstance(d.tag, str):
            continue
        if any(_matches(cm, d) for cm in content):
            result.append(copy.deepcopy(d))
            continue
        sn = schema.lookup(psn, d.tag) if schema is not None else None
        picked: etree._Element | None = None
        merged = 0  # filter nodes whose results went into `picked`
        for f in others:
            if not _matches(f, d) or not _attrs_match(f, d):
                continue
            if _is_selection(f):
                picked = copy.deepcopy(d)
                break
            sub = _filter_children(d, [c for c in f if isinstance(c.tag, str)], schema, sn)
            if sub is _ALL:
                picked = copy.deepcopy(d)
                break
            if sub:
                if picked is None:
                    picked = etree.Element(d.tag, nsmap=d.nsmap)
                    _add_keys(picked, d, sn)
                keys = len(picked)
                for item in sub:
                    # Only a second filter node for the same data node can select an item
                    # twice (and key leaves were added above): dedupe only then.
                    if merged or (keys and item.tag in {k.tag for k in picked[:keys]}):
                        _add_unique(picked, item)
                    else:
                        picked.append(item)
                merged += 1
        if picked is not None:
            result.append(picked)
    return result


class _AllMarker(list):
    """Returned when a sibling set holds only content match nodes (select everything)."""


_ALL = _AllMarker()


def _add_keys(picked: etree._Element, d: etree._Element, sn: SchemaNode | None) -> None:
    if sn is None or sn.kind != "list":
        return
    for k in sn.keys:
        kel = d.find(f"{{{sn.namespace}}}{k}")
        if kel is not None:
            picked.append(copy.deepcopy(kel))


def _add_unique(parent: etree._Element, child: etree._Element) -> None:
    text = etree.tostring(child)
    for existing in parent:
        if existing.tag == child.tag and etree.tostring(existing) == text:
            return
    parent.append(child)


def xpath_filter(
    data: etree._Element,
    select: str,
    nsmap: dict[str | None, str],
    schema: YangSchema | None = None,
) -> etree._Element:
    """Select nodes with an XPath 1.0 expression (prefixes from the filter's namespaces) and
    return them with their ancestors (ancestor list entries keep their keys)."""
    ns = {k: v for k, v in nsmap.items() if k}
    # Absolute paths address top-level data nodes: evaluate relative to the <data> root.
    expr = select.strip()
    if expr.startswith("/") and not expr.startswith("//"):
        expr = "." + expr
    try:
        found = data.xpath(expr, namespaces=ns)
    except etree.XPathError as exc:
        raise RpcError(
            "protocol", "invalid-value", f"invalid XPath filter {select!r}: {exc}",
            info={"bad-attribute": "select", "bad-element": "filter"},
        ) from exc
    out = _new_data()
    if not isinstance(found, list):
        return out
    copies: dict[int, etree._Element] = {id(data): out}
    for node in found:
        if not isinstance(node, etree._Element):
            if isinstance(node, etree._ElementUnicodeResult | str):
                parent = getattr(node, "getparent", lambda: None)()
                if parent is None:
                    continue
                node = parent
            else:
                continue
        if node is data:
            return copy.deepcopy(data)
        chain = []
        cur = node
        while cur is not None and cur is not data:
            chain.append(cur)
            cur = cur.getparent()
        if cur is None:
            continue
        chain.reverse()
        parent_copy = out
        psn: SchemaNode | None = None
        for i, el in enumerate(chain):
            sn = schema.lookup(psn, el.tag) if schema is not None else None
            key = id(el)
            if key not in copies:
                if i == len(chain) - 1:
                    c = copy.deepcopy(el)
                else:
                    c = etree.Element(el.tag, nsmap=el.nsmap)
                    _add_keys(c, el, sn)
                parent_copy.append(c)
                copies[key] = c
            elif i == len(chain) - 1:
                full = copy.deepcopy(el)
                old = copies[key]
                old.getparent().replace(old, full)
                copies[key] = full
            parent_copy = copies[key]
            psn = sn
    return out
