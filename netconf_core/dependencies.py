"""Which leaves no constraint of the schema depends on, so that an edit changing only their
values needs no more than libyang's check of each new value.

A valid tree stays valid when the value of a leaf changes, provided the new value is valid
for the leaf's type and nothing else reads that value: no `when` or `must` condition, no
`unique` statement, no leafref path (structural rules — keys, mandatory, min/max-elements,
choices — do not look at values). libyang's `lyd_change_term` checks the value against its
type; this module finds the leaves nothing reads. The analysis is by name and errs on the
safe side: any name an expression mentions counts as read wherever it occurs, and an
expression that could read a value without naming it (wildcards, `//`, axes, the string
value of a parent or of a container, `deref()`) makes every leaf count as read.
"""

from __future__ import annotations

import re

import libyang
from _libyang import ffi  # type: ignore[import-not-found]
from libyang.util import c2str, ly_array_iter

_PREFIXED = (libyang.Type.IDENT, libyang.Type.INST, libyang.Type.LEAFREF)
_NAME = re.compile(r"[A-Za-z_][\w.-]*(?::[A-Za-z_][\w.-]*)?")
_LITERAL = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_OPAQUE = ("*", "//", "::", "deref(")
_DOTS = re.compile(r"\.\.|\.|\[|\]|@")


def prefix_free(t: libyang.Type) -> bool:
    """No identityref, instance-identifier or leafref anywhere in the type: a value's text
    means the same in XML and in libyang's JSON-style value API, and its validity does not
    depend on other nodes."""
    base = t.base()
    if base == libyang.Type.UNION:
        return all(prefix_free(m) for m in t.union_types())
    return base not in _PREFIXED


def _leafref_paths(t: libyang.Type) -> list[str]:
    if t.base() == libyang.Type.UNION:
        return [p for m in t.union_types() for p in _leafref_paths(m)]
    path = t.leafref_path() if t.base() == libyang.Type.LEAFREF else None
    return [path] if path else []


def expression_names(expr: str, owner_is_leaf: bool) -> set[str] | None:
    """The local names an XPath expression mentions, or None when it may read a value
    without naming its node. `owner_is_leaf`: the expression belongs to a leaf, whose own
    value `.` then means (that leaf is never changed in place: it has a condition)."""
    text = _LITERAL.sub("''", expr).replace("current()", "@")
    if any(tok in text for tok in _OPAQUE):
        return None
    names = {m.rpartition(":")[2] for m in _NAME.findall(text)}
    if names & {"node", "text", "comment", "processing-instruction"}:
        return None
    shape = _NUMBER.sub("0", _NAME.sub("N", text))
    depth = 0
    for m in _DOTS.finditer(shape):
        tok = m.group()
        if tok in "[]":
            depth += 1 if tok == "[" else -1
            continue
        if shape[m.end():].lstrip()[:1] == "/":
            continue  # a step on the way to a named node
        if tok == "..":
            return None  # the string value of a parent: every leaf below it
        if (tok == "@" or depth == 0) and not owner_is_leaf:
            return None  # the string value of the container or list itself
    return names


def referenced_names(ctx: libyang.Context) -> frozenset[str] | None:
    """The local names of every data node a `when` or `must` condition, a `unique`
    statement or a leafref path of the context's implemented modules refers to; None when
    one of them may refer to values without naming them."""
    names: set[str] = set()
    for mod in ctx:
        if not mod.implemented():
            continue
        for top in mod.children():
            for sn in top.iter_tree(full=True):
                nodetype = sn.nodetype()
                is_leaf = nodetype in (libyang.SNode.LEAF, libyang.SNode.LEAFLIST)
                exprs = [*sn.when_conditions(), *sn.must_conditions()]
                if is_leaf:
                    exprs += _leafref_paths(sn.type())
                elif nodetype == libyang.SNode.LIST:
                    uniques = ffi.cast("struct lysc_node_list *", sn.cdata).uniques
                    if uniques != ffi.NULL:
                        for unique in ly_array_iter(uniques):
                            for leaf in ly_array_iter(unique):
                                names.add(c2str(ffi.cast("struct lysc_node *", leaf).name))
                for expr in exprs:
                    found = expression_names(expr, is_leaf)
                    if found is None:
                        return None
                    names |= found
    return frozenset(names)


def has_conditions(sn: libyang.SNode) -> bool:
    return any(True for _ in sn.when_conditions()) or any(True for _ in sn.must_conditions())
