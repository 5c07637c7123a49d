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
from netconf_core.xpath_names import resolve


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
                    picked = etree.Element(d.tag, attrib=dict(d.attrib), nsmap=d.nsmap)
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
    """Select nodes with an XPath 1.0 expression (prefixes from the filter's namespaces;
    unprefixed names resolved as `xpath_names` says) and return them with their ancestors:
    a valid instance tree, where every list entry on the way keeps its keys."""
    ns = {k: v for k, v in nsmap.items() if k}
    expr = select.strip()
    if schema is not None:
        expr, ns = resolve(expr, ns, schema.ctx)  # absolute paths start at <data> too
    elif expr.startswith("/") and not expr.startswith("//"):
        # Absolute paths address top-level data nodes: evaluate relative to the <data> root.
        expr = "." + expr
    try:
        found = data.xpath(expr, namespaces=ns)
    except etree.XPathError as exc:
        raise RpcError(
            "application", "invalid-value", f"invalid XPath filter {select!r}: {exc}",
            info={"bad-attribute": "select", "bad-element": "filter"},
        ) from exc
    if not isinstance(found, list):
        raise RpcError(
            "application", "invalid-value",
            f"XPath filter {select!r} does not select nodes (its value is {found!r})",
            info={"bad-attribute": "select", "bad-element": "filter"},
        )
    out = _new_data()
    # original element -> its copy in `out`; keyed by the element itself (lxml proxies
    # die with their last reference and their ids are reused: an id() key mixed entries)
    copies: dict[etree._Element, etree._Element] = {data: out}
    full: set[etree._Element] = set()  # originals copied with their whole subtree
    for node in found:
        if not isinstance(node, etree._Element):
            parent = getattr(node, "getparent", lambda: None)()
            if parent is None:
                continue
            node = parent  # a text or attribute result selects its element
        if not isinstance(node.tag, str):
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
        if any(el in full for el in chain[:-1]):
            continue  # an ancestor was selected whole
        parent_copy = out
        psn: SchemaNode | None = None
        for i, el in enumerate(chain):
            sn = schema.lookup(psn, el.tag) if schema is not None else None
            last = i == len(chain) - 1
            c = copies.get(el)
            if c is None:
                c = copy.deepcopy(el) if last else _shell(el, sn)
                existing = _same_key_leaf(parent_copy, el, psn)
                if existing is not None:
                    parent_copy.replace(existing, c)
                else:
                    parent_copy.append(c)
                copies[el] = c
            elif last and el not in full:
                whole = copy.deepcopy(el)
                parent_copy.replace(c, whole)
                c = copies[el] = whole
            if last:
                full.add(el)
            parent_copy = c
            psn = sn
    return out


def _shell(el: etree._Element, sn: SchemaNode | None) -> etree._Element:
    """A copy of `el` without content; a list entry keeps its keys."""
    c = etree.Element(el.tag, attrib=dict(el.attrib), nsmap=el.nsmap)  # metadata stays
    _add_keys(c, el, sn)
    return c


def _same_key_leaf(parent_copy: etree._Element, el: etree._Element,
                   psn: SchemaNode | None) -> etree._Element | None:
    """The key leaf `_shell` already put into `parent_copy` for `el` (selected itself)."""
    if psn is None or psn.kind != "list" or el.tag not in psn.key_tags:
        return None
    return parent_copy.find(el.tag)
