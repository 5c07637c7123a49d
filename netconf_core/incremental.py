"""Build the libyang tree of an edited datastore from the previous one instead of parsing the
whole new tree again: take the old tree (in place, or a copy made in C), swap in the list
entries the edit changed (`EditResult.units`), drop the removed ones, then validate the
complete result. An entry whose only change is new values for leaves it had already (a
re-key: SPI and keys) gets just those values changed in place; when that is all the edit
did, and no constraint reads those leaves (`YangSchema.value_in_place`), libyang's check
of each new value is the whole validation: the rest of the valid tree cannot have changed
its verdict.

Parsing costs about twice as much as validating, and most edits touch a few list entries of
a big tree (a rekey: two SAD entries out of hundreds), so this is where a commit's time
went. Validation stays full-tree (must/when/leafref/mandatory/unique across the whole
datastore). Anything this cannot mirror exactly returns None and the caller parses the
whole tree as before; that path also produces every error message, so errors are
identical whichever way a tree was built.
"""

from __future__ import annotations

import logging
import re
from typing import NamedTuple

import cffi
import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from lxml import etree

from netconf_core.edit import EditResult

log = logging.getLogger(__name__)

# The Python binding exposes neither lyd_insert_before nor lyd_change_term; call them from
# the same library.
_abi = cffi.FFI()
_abi.cdef("int lyd_insert_before(void *sibling, void *node);"
          "int lyd_change_term(void *term, const char *val_str);")
try:
    _ly = _abi.dlopen("libyang.so.2")
except OSError:  # pragma: no cover - the binding itself links against it
    _ly = None


def _ptr(node: object) -> object:
    return _abi.cast("void *", int(ffi.cast("uintptr_t", node)))


def _find(first: object, path: str) -> object | None:
    out = ffi.new("struct lyd_node **")
    if lib.lyd_find_path(first, path.encode(), 0, out) != lib.LY_SUCCESS:
        return None
    return out[0]


def _attached(el: etree._Element, root: etree._Element) -> bool:
    return any(anc is root for anc in el.iterancestors())


class Rebuilt(NamedTuple):
    """The validated tree; `values_only`: the edit changed nothing but leaf values (checked
    one by one, see the module docstring); `verbatim`: moreover each to its canonical text,
    none needing an escape, so the edited XML tree serializes exactly as libyang prints the
    new tree if the XML tree it was edited from did."""

    dn: libyang.DNode
    values_only: bool
    verbatim: bool


def mirrorable(edit: EditResult) -> bool:
    """Can `rebuild` derive the new tree from the old one for this edit? (False: parse.)"""
    return _ly is not None and not edit.whole and bool(edit.units or edit.deleted)


def rebuild(ctx: libyang.Context, base: libyang.DNode | None, new_root: etree._Element,
            edit: EditResult, in_place: bool = False) -> Rebuilt | None:
    """The validated libyang tree of `new_root` (a `<data>` root), derived from `base` (the
    validated tree of the datastore the edit was applied to), or None to make the caller
    parse the whole tree.

    `in_place`: change `base` itself instead of a copy (no copy of the whole tree, and no
    old tree to free afterwards). `base` is then consumed whatever the outcome: it becomes
    the returned tree, or it is freed. Copies keep libyang's node flags, so validation
    treats the copied nodes as the validated nodes they are (as in place): only the new
    entries go through the checks that concern new nodes alone (duplicate instances);
    everything else (when, must, leafref, mandatory, unique, min/max) is still checked on
    the complete tree — unless the edit only changed values nothing depends on (see the
    module docstring)."""
    if base is None or not mirrorable(edit):
        return None
    if in_place:
        first = base.cdata
    else:
        dup_p = ffi.new("struct lyd_node **")
        if lib.lyd_dup_siblings(base.cdata, ffi.NULL,
                                lib.LYD_DUP_RECURSIVE | lib.LYD_DUP_WITH_FLAGS,
                                dup_p) != lib.LY_SUCCESS:
            return None
        first = dup_p[0]
    ok = False
    try:
        mirrored = _mirror(ctx, first, new_root, edit)
        if mirrored is not None and mirrored[0]:
            ok = True
            return Rebuilt(libyang.DNode.new(ctx, first), True, mirrored[1])
        if mirrored is not None:
            tree = ffi.new("struct lyd_node **")
            tree[0] = first
            lib.ly_err_clean(ctx.cdata, ffi.NULL)
            if lib.lyd_validate_all(tree, ctx.cdata, lib.LYD_VALIDATE_NO_STATE, ffi.NULL) \
                    == lib.LY_SUCCESS and tree[0] != ffi.NULL:
                first = tree[0]
                ok = True
                return Rebuilt(libyang.DNode.new(ctx, first), False, False)
            first = tree[0] if tree[0] != ffi.NULL else first
        lib.ly_err_clean(ctx.cdata, ffi.NULL)  # the full parse that follows reports errors
        return None
    finally:
        if not ok and first != ffi.NULL:
            lib.lyd_free_all(first)


def _mirror(ctx: libyang.Context, first: object, root: etree._Element,
            edit: EditResult) -> tuple[bool, bool] | None:
    """Apply the recorded changes to the tree whose first top-level node is `first` (never
    itself removed: only list entries below top level are). None: cannot mirror; else
    (values_only, verbatim) as in `Rebuilt`."""
    values_only = verbatim = not edit.deleted
    for path in edit.deleted:
        node = _find(first, path)
        if node is not None:
            if node.parent == ffi.NULL:
                return None
            lib.lyd_free_tree(node)
    seen: set[int] = set()
    units = []
    for el, path in edit.units:
        if id(el) not in seen:
            seen.add(id(el))
            units.append((el, path))
    # entries parsed again as a whole (those inside them need nothing more)
    whole = seen.difference(edit.values)
    parents: dict[str, object] = {}  # parent path → node (units are never each other's)
    # New entries (nothing to replace) for one parent are parsed in one go: a parse call
    # costs more than the few entries of a typical unit.
    batch: list[bytes] = []
    batch_parent: object = None
    for el, path in units:
        if any(id(a) in whole for a in el.iterancestors()) or not _attached(el, root):
            continue  # inside another changed entry, or removed again later in the edit
        values = edit.values.get(id(el))
        if values is not None:
            exact = _change_values(first, values)
            if exact is None:
                return None
            verbatim = verbatim and exact
            continue
        values_only = verbatim = False
        ppath = edit.parents.get(path)
        if ppath is None:
            return None
        parent = parents.get(ppath)
        if parent is None:
            parent = parents[ppath] = _find(first, ppath)
        if parent is None:
            return None
        old = _find(first, path)
        if old is None:
            if batch and batch_parent != parent:
                if not _parse_under(ctx, batch_parent, b"".join(batch)):
                    return None
                batch.clear()
            batch.append(etree.tostring(el))
            batch_parent = parent
            continue
        if batch:
            if not _parse_under(ctx, batch_parent, b"".join(batch)):
                return None
            batch.clear()
        if not _replace(ctx, first, el, path, parent, old):
            return None
    if batch and not _parse_under(ctx, batch_parent, b"".join(batch)):
        return None
    return values_only, verbatim


def _change_values(first: object, values: list[tuple[str, str]]) -> bool | None:
    """Give existing leaves new values (data path, value text); libyang checks each value
    against its type here and the whole tree is validated afterwards. None: cannot; else
    whether every text was libyang's canonical form and prints the same from lxml and
    libyang (ASCII, nothing to escape)."""
    verbatim = True
    for path, text in values:
        node = _find(first, path)
        if node is None:
            return None
        raw = text.encode()
        if _ly.lyd_change_term(_ptr(node), raw) not in _CHANGED:
            return None
        if verbatim and (not text.isascii() or _ESCAPED.search(text)
                         or ffi.string(lib.lyd_get_value(node)) != raw):
            verbatim = False
    return verbatim


_CHANGED = (lib.LY_SUCCESS, lib.LY_EEXIST, lib.LY_ENOT)
_ESCAPED = re.compile(r"[&<>\"'\r]")


def _parse_under(ctx: libyang.Context, parent: object, xml: bytes) -> bool:
    """Parse `xml` (sibling data nodes) as new children of `parent`."""
    in_p = ffi.new("struct ly_in **")
    buf = ffi.new("char[]", xml)
    if lib.ly_in_new_memory(buf, in_p) != lib.LY_SUCCESS:
        return False
    try:
        ret = lib.lyd_parse_data(
            ctx.cdata, parent, in_p[0], lib.LYD_XML,
            lib.LYD_PARSE_STRICT | lib.LYD_PARSE_NO_STATE | lib.LYD_PARSE_ONLY, 0,
            ffi.new("struct lyd_node **"),
        )
    finally:
        lib.ly_in_free(in_p[0], 0)
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    return ret == lib.LY_SUCCESS


def _replace(ctx: libyang.Context, first: object, el: etree._Element, path: str,
             parent: object, old: object) -> bool:
    """Put the entry `el` in place of `old` (same key) at the same position."""
    if old.parent != parent:  # type: ignore[attr-defined]
        return False
    after = old.next  # type: ignore[attr-defined]
    lib.lyd_free_tree(old)
    if not _parse_under(ctx, parent, etree.tostring(el)):
        return False
    if after != ffi.NULL:
        new = _find(first, path)
        if new is None or new == after:
            return False
        if new.next != after and _ly.lyd_insert_before(_ptr(after), _ptr(new)) != 0:
            return False
    return True
