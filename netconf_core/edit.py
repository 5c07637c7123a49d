"""RFC 6241 `<edit-config>` semantics on lxml trees, reproducing sysrepo's edit_diff.c rules.

The edit is applied to a copy of the target tree; the caller validates the result with libyang
and swaps it in only when everything holds, so a failed edit never changes a datastore.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from lxml import etree

from netconf_core.dependencies import prefix_free
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YANG_NS, SchemaNode, YangSchema

OPERATION = f"{{{NC_NS}}}operation"
INSERT = f"{{{YANG_NS}}}insert"
KEY_ATTR = f"{{{YANG_NS}}}key"
VALUE_ATTR = f"{{{YANG_NS}}}value"
OPERATIONS = ("merge", "replace", "create", "delete", "remove", "none")
DEFAULT_OPERATIONS = ("merge", "replace", "none")


@dataclass
class EditResult:
    """Errors collected under continue-on-error (empty otherwise: errors raise), and where
    the edit changed the tree, so that libyang need not re-parse what did not change:
    `units` are list entries of the new tree (with their data paths) whose content is new
    or changed, `deleted` the data paths of removed list entries. `whole` says the changes
    cannot be described that way (top-level nodes, ordering by insert, anydata).
    `values`: for the units (by id of their element) whose only change is the value of
    leaves that existed already, those leaves' data paths and new texts (libyang can change
    just these values in place)."""

    errors: list[RpcError] = field(default_factory=list)
    units: list[tuple[etree._Element, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    whole: bool = False
    parents: dict[str, str] = field(default_factory=dict)  # unit path → its parent's path
    values: dict[int, list[tuple[str, str]]] = field(default_factory=dict)


def apply_edit(
    schema: YangSchema,
    target: etree._Element,
    config: etree._Element,
    default_operation: str = "merge",
    continue_on_error: bool = False,
    consume: bool = False,
) -> EditResult:
    """Apply the children of `config` to the `<data>` root `target` in place. `consume`:
    `config` is discarded afterwards (the parsed request), so new subtrees may be moved
    into `target` instead of copied."""
    if default_operation not in DEFAULT_OPERATIONS:
        raise RpcError(
            "protocol", "invalid-value", f"bad default-operation {default_operation!r}",
            path="/rpc/edit-config/default-operation",
        )
    ed = _Editor(schema, continue_on_error)
    ed.consume = consume
    ed.edit_children(target, config, None, default_operation, "")
    values = {u: v for u, v in ed.values.items() if u not in ed.structural}
    return EditResult(ed.errors, ed.units, ed.deleted, ed.whole, ed.parents, values)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _ns(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def _text(el: etree._Element) -> str:
    return (el.text or "").strip()


class _Editor:
    def __init__(self, schema: YangSchema, continue_on_error: bool) -> None:
        self.schema = schema
        self.continue_on_error = continue_on_error
        self.errors: list[RpcError] = []
        # (parent element, list tag) → {key values: entry}; built once per parent so that an
        # edit of n entries costs O(n), not O(n²). Holding the parent proxy keeps id() stable.
        self._lists: dict[tuple[int, str], tuple[etree._Element, dict]] = {}
        # change tracking (see EditResult); `_unit` is the list entry being edited
        self.units: list[tuple[etree._Element, str]] = []
        self.deleted: list[str] = []
        self.whole = False
        self.parents: dict[str, str] = {}
        self._unit: list[tuple[etree._Element, str]] = []
        self.consume = False
        # leaf value changes per unit (id of its element), and the units that changed in
        # any other way (see EditResult.values)
        self.values: dict[int, list[tuple[str, str]]] = {}
        self.structural: set[int] = set()

    def _touch(self) -> None:
        """Something inside the list entry being edited changed."""
        if self._unit:
            unit = self._unit[-1]
            self.units.append(unit)
            self.structural.add(id(unit[0]))
        else:
            self.whole = True

    def _value_changed(self, sn: SchemaNode, path: str, text: str | None) -> None:
        """The existing leaf at `path` took the value `text`."""
        if not self._unit or not self.schema.value_in_place(sn):
            self._touch()
            return
        unit = self._unit[-1]
        self.units.append(unit)
        self.values.setdefault(id(unit[0]), []).append((path, text or ""))

    def _changed(self, node: etree._Element, sn: SchemaNode, parent_sn: SchemaNode | None,
                 path: str, parent_path: str) -> None:
        """`node` (in the new tree) was created or replaced."""
        if sn.kind == "list" and parent_sn is not None:
            self.units.append((node, path))
            self.parents[path] = parent_path
            self.structural.add(id(node))
        else:
            self._touch()

    def _list_index(self, target: etree._Element, sn: SchemaNode) -> dict:
        k = (id(target), sn.tag)
        hit = self._lists.get(k)
        if hit is None:
            idx: dict = {}
            key_tags = sn.key_tags
            for cand in target.iterchildren(sn.tag):
                kt = _key_tuple(cand, key_tags)
                if kt is not None:
                    idx.setdefault(kt, cand)
            hit = self._lists[k] = (target, idx)
        return hit[1]

    def _indexed(self, target: etree._Element, sn: SchemaNode, node: etree._Element) -> None:
        if sn.kind == "list":
            kt = _key_tuple(node, sn.key_tags)
            if kt is not None:
                self._list_index(target, sn)[kt] = node

    def _unindexed(self, target: etree._Element, sn: SchemaNode, node: etree._Element) -> None:
        if sn.kind == "list":
            kt = _key_tuple(node, sn.key_tags)
            idx = self._list_index(target, sn)
            if kt is not None and idx.get(kt) is node:
                del idx[kt]

    # The path we report in <error-path>: /prefix:name[key='v']/... built from module names.
    def _path(self, parent_path: str, sn: SchemaNode, edit: etree._Element | None) -> str:
        seg = f"{parent_path}/{sn.module}:{sn.name}"
        if sn.kind == "list" and edit is not None:
            for k in sn.keys:
                kel = edit.find(f"{{{sn.namespace}}}{k}")
                if kel is not None:
                    seg += f"[{k}={self._quote(_text(kel))}]"
        elif sn.kind == "leaf-list" and edit is not None:
            seg += f"[.={self._quote(_text(edit))}]"
        return seg

    def _quote(self, v: str) -> str:
        if "'" not in v:
            return f"'{v}'"
        if '"' not in v:
            return f'"{v}"'
        self.whole = True  # no XPath literal holds both quotes: not addressable by path
        return f"'{v}'"

    def edit_children(
        self,
        target: etree._Element,
        edit_parent: etree._Element,
        parent_sn: SchemaNode | None,
        parent_op: str,
        parent_path: str,
    ) -> None:
        if parent_op == "merge":
            self._merge_children(target, edit_parent, parent_sn, parent_path)
            return
        # a list copy: under `consume` the loop moves children out of `edit_parent`
        for edit in list(edit_parent) if self.consume else edit_parent:
            if not isinstance(edit.tag, str):  # comments, processing instructions
                continue
            try:
                self.edit_node(target, edit, parent_sn, parent_op, parent_path)
            except RpcError as err:
                if not self.continue_on_error:
                    raise
                self.errors.append(err)

    def _merge_children(
        self,
        target: etree._Element,
        edit_parent: etree._Element,
        parent_sn: SchemaNode | None,
        parent_path: str,
    ) -> None:
        """`edit_children` under operation merge, the common case (an SA re-keyed: new
        values for leaves of an existing entry). Leaves and containers that exist already
        and carry no attributes are merged here; every other node, and every error, goes
        through `edit_node`, which would treat these the same way, only slower."""
        lookup = self.schema.lookup
        keys, key_ns = ((parent_sn.keys, parent_sn.namespace)
                        if parent_sn is not None and parent_sn.kind == "list" else ((), ""))
        for edit in list(edit_parent) if self.consume else edit_parent:
            tag = edit.tag
            if not isinstance(tag, str):  # comments, processing instructions
                continue
            sn = lookup(parent_sn, tag) if tag[:1] == "{" else None
            existing = None
            if sn is not None and sn.config and sn.kind in ("leaf", "container") \
                    and not edit.keys():
                existing = next(target.iterchildren(tag), None)
            if existing is not None and sn is not None:
                if sn.kind == "container":
                    self._merge_children(existing, edit, sn,
                                         f"{parent_path}/{sn.module}:{sn.name}")
                    continue
                if sn.name not in keys or sn.namespace != key_ns:
                    if existing.text != edit.text:
                        if ":" in (edit.text or "") and self._prefixed(sn):
                            self._set_prefixed_value(existing, edit)
                            self._touch()
                            continue
                        existing.text = edit.text
                        self._value_changed(sn, f"{parent_path}/{sn.module}:{sn.name}",
                                            edit.text)
                    continue
                if _text(existing) == _text(edit):
                    continue  # the key of the entry it identifies
            try:
                self.edit_node(target, edit, parent_sn, "merge", parent_path)
            except RpcError as err:
                if not self.continue_on_error:
                    raise
                self.errors.append(err)

    def _schema_for(
        self, edit: etree._Element, parent_sn: SchemaNode | None, parent_path: str
    ) -> SchemaNode:
        tag = edit.tag
        sn = self.schema.lookup(parent_sn, tag) if tag[:1] == "{" else None
        if sn is not None and sn.config:
            return sn
        ns = _ns(tag)
        if not ns or not self.schema.namespace_known(ns):
            raise RpcError(
                "application", "unknown-namespace",
                f"unknown namespace {ns!r} for element {_local(tag)!r}",
                path=f"{parent_path}/{_local(tag)}",
                info={"bad-element": _local(tag), "bad-namespace": ns},
            )
        sn = self.schema.lookup(parent_sn, tag)
        if sn is None:
            raise RpcError(
                "application", "unknown-element",
                f"unknown element {_local(tag)!r} in namespace {ns}",
                path=f"{parent_path}/{_local(tag)}",
                info={"bad-element": _local(tag)},
            )
        if not sn.config:
            raise RpcError(
                "application", "invalid-value",
                f"{sn.name!r} is state data (config false) and cannot be edited",
                path=self._path(parent_path, sn, edit),
            )
        return sn

    def _operation(self, edit: etree._Element, parent_op: str, path: str) -> str:
        op = edit.get(OPERATION)
        if op is None:
            return parent_op
        if op not in OPERATIONS:
            raise RpcError(
                "protocol", "bad-attribute", f"unknown operation {op!r}", path=path,
                info={"bad-attribute": "operation", "bad-element": _local(edit.tag)},
            )
        if parent_op in ("delete", "remove") and op not in ("delete", "remove"):
            raise RpcError(
                "protocol", "operation-not-supported",
                f"operation {op!r} inside a {parent_op!r} subtree", path=path,
            )
        return op

    def find_existing(
        self, target: etree._Element, edit: etree._Element, sn: SchemaNode, path: str
    ) -> etree._Element | None:
        tag = sn.tag
        if sn.kind == "list":
            return self._list_index(target, sn).get(tuple(self.list_keys(edit, sn, path)))
        if sn.kind == "leaf-list":
            value = _text(edit)
            for cand in target.iterchildren(tag):
                if _text(cand) == value:
                    return cand
            return None
        return next(target.iterchildren(tag), None)

    def list_keys(self, edit: etree._Element, sn: SchemaNode, path: str) -> list[str]:
        vals = []
        for kn, kt in zip(sn.keys, sn.key_tags, strict=True):
            kels = list(edit.iterchildren(kt))
            if not kels:
                raise RpcError(
                    "protocol", "missing-element",
                    f"list {sn.name!r} entry is missing its key {kn!r}", path=path,
                    info={"bad-element": kn},
                )
            if len(kels) > 1:
                raise RpcError(
                    "protocol", "bad-element", f"key {kn!r} given twice", path=path,
                    info={"bad-element": kn},
                )
            vals.append(_text(kels[0]))
        return vals

    def edit_node(
        self,
        target: etree._Element,
        edit: etree._Element,
        parent_sn: SchemaNode | None,
        parent_op: str,
        parent_path: str,
    ) -> None:
        sn = self._schema_for(edit, parent_sn, parent_path)
        path = self._path(parent_path, sn, edit)
        op = self._operation(edit, parent_op, path)
        existing = self.find_existing(target, edit, sn, path)

        if parent_sn is not None and parent_sn.kind == "list" and sn.name in parent_sn.keys \
                and sn.namespace == parent_sn.namespace:
            # Keys identify the entry; they are written when the entry is created.
            if op in ("delete", "remove", "replace", "create") and edit.get(OPERATION):
                raise RpcError(
                    "protocol", "bad-attribute",
                    f"operation {op!r} is not allowed on list key {sn.name!r}", path=path,
                    info={"bad-attribute": "operation", "bad-element": sn.name},
                )
            if existing is not None and _text(existing) != _text(edit):
                raise RpcError(
                    "application", "invalid-value", "list key value cannot change", path=path
                )
            return

        if op == "delete":
            if existing is None:
                raise RpcError(
                    "application", "data-missing",
                    f"cannot delete {sn.name!r}: it does not exist", path=path,
                )
            self._unindexed(target, sn, existing)
            target.remove(existing)
            self._removed(sn, parent_sn, path)
            return
        if op == "remove":
            if existing is not None:
                self._unindexed(target, sn, existing)
                target.remove(existing)
                self._removed(sn, parent_sn, path)
            return
        if op == "create" and existing is not None:
            raise RpcError(
                "application", "data-exists",
                f"cannot create {sn.name!r}: it already exists", path=path,
            )
        if op == "replace" and existing is not None:
            node = self._new_node(sn, edit)
            existing.addprevious(node)
            target.remove(existing)
            self._indexed(target, sn, node)
            self._maybe_move(target, node, edit, sn, path, replaced=True)
            self._changed(node, sn, parent_sn, path, parent_path)
            self._fill(node, edit, sn, "replace", path)
            return

        # merge / create / replace-of-missing / none
        if existing is None and op != "none" and not _has_edit_attributes(edit):
            # Nothing to merge with and no nested operations: the subtree is the result.
            # libyang's strict parse of the whole tree then checks every node in it.
            scope = edit.nsmap  # before the move: the prefixes its values may use
            node = edit if self.consume else copy.deepcopy(edit)
            node.attrib.pop(OPERATION, None)
            self._insert(target, node, edit, sn, path)
            self._keep_value_prefixes(node, scope)
            self._indexed(target, sn, node)
            self._changed(node, sn, parent_sn, path, parent_path)
            return
        if existing is None:
            if op == "none" and (
                sn.kind in ("leaf", "leaf-list") or not self._needs_creation(edit, sn)
            ):
                raise RpcError(
                    "application", "data-missing", f"{sn.name!r} does not exist", path=path
                )
            node = self._new_node(sn, edit)
            self._insert(target, node, edit, sn, path)
            self._indexed(target, sn, node)
            self._changed(node, sn, parent_sn, path, parent_path)
            self._fill(node, edit, sn, op, path)
            return

        # existing node, merge or none (or create handled above)
        if sn.kind == "leaf":
            if op != "none" and existing.text != edit.text:
                if ":" in (edit.text or "") and self._prefixed(sn):
                    self._set_prefixed_value(existing, edit)
                else:
                    existing.text = edit.text
                self._touch()
            return
        if sn.kind == "leaf-list":
            if op != "none":
                self._maybe_move(target, existing, edit, sn, path, replaced=False)
            return
        if sn.kind in ("anydata", "anyxml"):
            if op != "none":
                new = self._copy_plain(edit)
                existing.addprevious(new)
                target.remove(existing)
                self.whole = True
            return
        if sn.kind == "list" and op != "none":
            self._maybe_move(target, existing, edit, sn, path, replaced=False)
        unit = sn.kind == "list" and parent_sn is not None
        if unit:
            self._unit.append((existing, path))
            self.parents[path] = parent_path
        try:
            self.edit_children(existing, edit, sn, op, path)
        finally:
            if unit:
                self._unit.pop()

    def _removed(self, sn: SchemaNode, parent_sn: SchemaNode | None, path: str) -> None:
        if sn.kind == "list" and parent_sn is not None:
            self.deleted.append(path)
        else:
            self._touch()

    def _needs_creation(self, edit: etree._Element, sn: SchemaNode) -> bool:
        """Under operation 'none' a missing interior node is created only when a descendant
        asks to create something (as sysrepo does)."""
        for el in edit.iter():
            op = el.get(OPERATION) if isinstance(el.tag, str) else None
            if op in ("merge", "replace", "create"):
                return True
        return False

    def _keep_value_prefixes(self, node: etree._Element, scope: dict[str | None, str]
                             ) -> None:
        """Values may use prefixes declared on the edit's ancestors (an identityref
        `x:aes-gcm`, an instance-identifier `/x:top/x:item[x:name='a']`: RFC 7950 9.10.3,
        9.13.2). lxml keeps only the declarations tags use when it moves an element (and
        drops one whose URI is in scope under another prefix), so a leaf whose value uses
        such a prefix is made again in place, declaring it (`SubElement` keeps it)."""
        cands = {p: u for p, u in scope.items()
                 if p is not None and u not in (NC_NS, YANG_NS)
                 and self.schema.namespace_known(u)}
        if not cands:
            return
        for el in [e for e in node.iter() if isinstance(e.tag, str) and not len(e)
                   and e.text and ":" in e.text]:
            t = el.text or ""
            need = {p: u for p, u in cands.items() if p + ":" in t and el.nsmap.get(p) != u}
            if need:
                self._redeclare(el, need)

    @staticmethod
    def _redeclare(el: etree._Element, nsmap: dict[str, str], text: str | None = None
                   ) -> etree._Element:
        """`el` made again as the last child of its parent (leaf order carries no meaning)
        with `nsmap` declared on it and `text` (default: its own)."""
        parent = el.getparent()
        assert parent is not None
        new = etree.SubElement(parent, el.tag, attrib=dict(el.attrib), nsmap=nsmap)
        new.text = el.text if text is None else text
        parent.remove(el)
        return new

    def _set_prefixed_value(self, existing: etree._Element, edit: etree._Element) -> None:
        """An existing identityref / instance-identifier leaf takes the edit's value with
        the prefixes in scope in the edit."""
        t = edit.text or ""
        need = {p: u for p, u in edit.nsmap.items() if p is not None and p + ":" in t}
        self._redeclare(existing, need, t)

    def _prefixed(self, sn: SchemaNode) -> bool:
        """Whether the leaf's values may hold XML prefixes."""
        if sn.prefixed is None:
            sn.prefixed = sn.snode is not None and not prefix_free(sn.snode.type())
        return sn.prefixed

    def _new_node(self, sn: SchemaNode, edit: etree._Element) -> etree._Element:
        if sn.kind in ("anydata", "anyxml", "leaf", "leaf-list"):
            # A deep copy keeps the namespace declarations that identityref or
            # instance-identifier values may rely on (see `_keep_value_prefixes`).
            node = self._copy_plain(edit)
            if sn.kind != "anydata" and sn.kind != "anyxml":
                for child in list(node):
                    node.remove(child)
            return node
        node = etree.Element(sn.tag, nsmap={None: sn.namespace})
        if sn.kind == "list":
            for kn in sn.keys:
                kel = edit.find(f"{{{sn.namespace}}}{kn}")
                assert kel is not None  # checked in list_keys
                node.append(self._copy_plain(kel))
        return node

    def _fill(self, node: etree._Element, edit: etree._Element, sn: SchemaNode, op: str,
              path: str) -> None:
        """Populate a node that did not exist (or was replaced) from the edit content."""
        if sn.kind in ("container", "list"):
            child_op = "merge" if op in ("none", "create", "replace") else op
            unit = sn.kind == "list"
            if unit:
                self._unit.append((node, path))
            try:
                self.edit_children(node, edit, sn, child_op, path)
            finally:
                if unit:
                    self._unit.pop()

    def _copy_plain(self, edit: etree._Element) -> etree._Element:
        node = copy.deepcopy(edit)
        for el in node.iter():
            if isinstance(el.tag, str):
                for a in (OPERATION, INSERT, KEY_ATTR, VALUE_ATTR):
                    el.attrib.pop(a, None)
        return node

    # ---- ordering (ordered-by user lists and leaf-lists, RFC 7950 sections 7.7.9/7.8.6) ----

    def _insert(self, target: etree._Element, node: etree._Element, edit: etree._Element,
                sn: SchemaNode, path: str) -> None:
        insert = edit.get(INSERT)
        if insert is not None and not sn.user_ordered:
            raise RpcError(
                "protocol", "bad-attribute",
                f"'insert' on {sn.name!r}, which is not ordered-by user",
                path=path, info={"bad-attribute": "insert", "bad-element": sn.name},
            )
        if insert is not None:
            self.whole = True  # positions: libyang re-reads the whole tree
        if insert in (None, "last"):
            # Only the order among instances of one list or leaf-list carries meaning (the
            # stored tree is re-printed in schema order), so appending is "last".
            target.append(node)
            return
        if insert == "first":
            first = target.find(sn.tag)
            if first is not None:
                first.addprevious(node)
            else:
                target.append(node)
            return
        if insert in ("before", "after"):
            anchor = self._anchor(target, edit, sn, path)
            if anchor is node:
                raise RpcError("protocol", "bad-attribute", "an entry cannot move relative "
                               "to itself", path=path, info={"bad-attribute": "insert"})
            if insert == "before":
                anchor.addprevious(node)
            else:
                anchor.addnext(node)
            return
        raise RpcError(
            "protocol", "bad-attribute", f"bad insert value {insert!r}", path=path,
            info={"bad-attribute": "insert", "bad-element": sn.name},
        )

    def _maybe_move(self, target: etree._Element, node: etree._Element, edit: etree._Element,
                    sn: SchemaNode, path: str, replaced: bool) -> None:
        if edit.get(INSERT) is None:
            return
        self.whole = True
        target.remove(node)
        self._insert(target, node, edit, sn, path)

    def _anchor(self, target: etree._Element, edit: etree._Element, sn: SchemaNode,
                path: str) -> etree._Element:
        if sn.kind == "list":
            ref = edit.get(KEY_ATTR)
            if ref is None:
                raise RpcError("protocol", "missing-attribute", "insert before/after needs a "
                               "'key' attribute", path=path,
                               info={"bad-attribute": "key", "bad-element": sn.name})
            want = _parse_key_predicates(ref)
            if set(want) != set(sn.keys):
                raise RpcError("protocol", "bad-attribute", f"key attribute {ref!r} must name "
                               f"every key of {sn.name!r}", path=path,
                               info={"bad-attribute": "key", "bad-element": sn.name})
            anchor = self._list_index(target, sn).get(tuple(want[k] for k in sn.keys))
            if anchor is not None:
                return anchor
        else:
            ref = edit.get(VALUE_ATTR)
            if ref is None:
                raise RpcError("protocol", "missing-attribute", "insert before/after needs a "
                               "'value' attribute", path=path,
                               info={"bad-attribute": "value", "bad-element": sn.name})
            for cand in target.iterchildren(sn.tag):
                if _text(cand) == ref:
                    return cand
        # RFC 7950 section 15.7
        raise RpcError(
            "protocol", "bad-attribute", f"insert anchor {ref!r} does not exist", path=path,
            app_tag="missing-instance",
            info={"bad-attribute": "key" if sn.kind == "list" else "value",
                  "bad-element": sn.name},
        )


def _parse_key_predicates(ref: str) -> dict[str, str]:
    """`[name='a'][x="b"]` → {'name': 'a', 'x': 'b'} (prefixes dropped)."""
    out = {}
    for m in re.finditer(r"\[\s*([\w.:-]+)\s*=\s*(?:'([^']*)'|\"([^\"]*)\")\s*\]", ref):
        name = m.group(1).rpartition(":")[2]
        out[name] = m.group(2) if m.group(2) is not None else m.group(3)
    if not out:
        raise RpcError("protocol", "bad-attribute", f"cannot parse key attribute {ref!r}",
                       info={"bad-attribute": "key"})
    return out


_EDIT_ATTRS = etree.XPath(
    "boolean(descendant::*/@nc:operation | descendant-or-self::*/@yang:insert)",
    namespaces={"nc": NC_NS, "yang": YANG_NS},
)


def _has_edit_attributes(edit: etree._Element) -> bool:
    return bool(_EDIT_ATTRS(edit))


def _key_tuple(entry: etree._Element, key_tags: tuple[str, ...]) -> tuple[str, ...] | None:
    vals = []
    for kt in key_tags:
        k = next(entry.iterchildren(kt), None)
        if k is None:
            return None
        vals.append((k.text or "").strip())
    return tuple(vals)
