"""The YANG schema as the NETCONF server needs it: node lookup for edit-config (keys, list
ordering, config/state), full-tree validation with RFC-shaped errors, diffs, notifications.

libyang parses and validates; it does not apply NETCONF edits, so the datastore layer walks
XML with the help of the lookups here and hands complete trees back to libyang.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from libyang.util import c2str
from lxml import etree

from netconf_core.dependencies import has_conditions, prefix_free, referenced_names
from netconf_core.errors import NC_NS, YANG_NS, RpcError, qualify_path, register_module

log = logging.getLogger(__name__)

# libyang records the data path of an error only when its log callback is installed. Its
# messages can quote rejected values (possibly key material), so the Python "libyang" logger
# that receives them is muted: errors reach the client as rpc-errors, never the log.
libyang.configure_logging(True, logging.ERROR)
_ly_logger = logging.getLogger("libyang")
_ly_logger.propagate = False
_ly_logger.setLevel(logging.CRITICAL + 1)

# YANG_NS (errors): yang:operation, yang:insert, yang:key, ... and RFC 7950 error-info


@dataclass
class SchemaNode:
    """What the edit engine must know about one data node of the schema."""

    name: str
    namespace: str
    module: str
    kind: str  # container | list | leaf | leaf-list | anydata | anyxml
    config: bool
    keys: tuple[str, ...] = ()
    user_ordered: bool = False
    presence: bool = False
    # RFC 8341 nacm:default-deny-all (key material): hidden from users without the right.
    deny_all: bool = False
    deny_write: bool = False  # nacm:default-deny-write
    snode: libyang.SNode | None = field(default=None, repr=False)
    in_place: bool | None = field(default=None, repr=False)  # see YangSchema.value_in_place
    prefixed: bool | None = field(default=None, repr=False)  # values may hold XML prefixes
    _children: dict[tuple[str, str], SchemaNode] | None = field(default=None, repr=False)
    _tags: dict[str, SchemaNode | None] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def tag(self) -> str:
        return f"{{{self.namespace}}}{self.name}"

    @functools.cached_property
    def key_tags(self) -> tuple[str, ...]:
        """The element tags of the list keys (keys share the list's namespace)."""
        return tuple(f"{{{self.namespace}}}{k}" for k in self.keys)



@dataclass(frozen=True)
class ModuleInfo:
    name: str
    revision: str | None
    namespace: str
    prefix: str
    features: tuple[str, ...]
    implemented: bool
    filepath: str | None


_KIND = {
    libyang.SNode.CONTAINER: "container",
    libyang.SNode.LIST: "list",
    libyang.SNode.LEAF: "leaf",
    libyang.SNode.LEAFLIST: "leaf-list",
}


class YangSchema:
    """Wraps one libyang context. Not thread-safe: the server serialises datastore work."""

    def __init__(self, ctx: libyang.Context) -> None:
        self.ctx = ctx
        self._top: dict[tuple[str, str], SchemaNode] | None = None
        self._top_tags: dict[str, SchemaNode | None] = {}
        self._modules_by_ns: dict[str, libyang.Module] = {}
        for mod in ctx:
            self._modules_by_ns[c2str(mod.cdata.ns)] = mod
            register_module(mod.name(), c2str(mod.cdata.ns))

    def load_modules(self, names: tuple[str, ...]) -> None:
        """Load (implement) modules the server itself needs, when their files are found and
        `create_context` has not loaded them already (it does: a load here compiles the
        context again, so it must come before any data tree or lookup)."""
        for name in names:
            try:
                mod = self.ctx.get_module(name)
                if mod.implemented():
                    continue
                mod.feature_enable_all()  # lys_set_implemented: imported → implemented
                self._reset_caches()
                continue
            except libyang.LibyangError:
                pass
            try:
                mod = self.ctx.load_module(name)
                mod.feature_enable_all()  # the server implements all of these modules
            except libyang.LibyangError as exc:
                log.warning("cannot load YANG module %s: %s", name, exc)
                continue
            self._modules_by_ns[c2str(mod.cdata.ns)] = mod
            register_module(mod.name(), c2str(mod.cdata.ns))
            self._reset_caches()

    def _reset_caches(self) -> None:
        """The context was compiled again: no schema node found before may be kept."""
        self._top = None
        self._top_tags.clear()
        self.__dict__.pop("_referenced", None)

    # ---- schema lookup -------------------------------------------------------------------

    @functools.cached_property
    def _referenced(self) -> frozenset[str] | None:
        return referenced_names(self.ctx)

    def value_in_place(self, sn: SchemaNode) -> bool:
        """Can this leaf's value change in a valid libyang tree (`lyd_change_term`, which
        checks the value against the type) and leave the tree valid with no further check?
        Yes if nothing depends on the value (see `dependencies`) and its text means the
        same in XML and in libyang's value API."""
        if sn.in_place is None:
            referenced = self._referenced
            sn.in_place = (sn.kind == "leaf" and sn.snode is not None
                           and referenced is not None and sn.name not in referenced
                           and not has_conditions(sn.snode)
                           and prefix_free(sn.snode.type()))
        return sn.in_place

    def namespace_known(self, ns: str) -> bool:
        return ns in self._modules_by_ns or ns == NC_NS

    def top(self, namespace: str, name: str) -> SchemaNode | None:
        if self._top is None:
            self._top = {}
            for mod in self.ctx:
                if not mod.implemented():
                    continue
                for sn in mod.children(types=_DATA_TYPES):
                    node = self._make(sn)
                    self._top[(node.namespace, node.name)] = node
        return self._top.get((namespace, name))

    def child(self, parent: SchemaNode, namespace: str, name: str) -> SchemaNode | None:
        if parent._children is None:
            parent._children = {}
            if parent.snode is not None and parent.kind in ("container", "list"):
                for sn in parent.snode.children(types=_DATA_TYPES):
                    node = self._make(sn)
                    parent._children[(node.namespace, node.name)] = node
        return parent._children.get((namespace, name))

    def lookup(self, parent: SchemaNode | None, tag: str) -> SchemaNode | None:
        """The schema node of element `tag` ('{ns}name') under `parent` (None: top level);
        memoised per parent, as the edit engine asks this for every node of every edit."""
        cache = self._top_tags if parent is None else parent._tags
        try:
            return cache[tag]
        except KeyError:
            pass
        ns, _, name = tag[1:].partition("}")
        sn = self.top(ns, name) if parent is None else self.child(parent, ns, name)
        if len(cache) < 4096:
            cache[tag] = sn
        return sn

    def _make(self, sn: libyang.SNode) -> SchemaNode:
        nodetype = sn.nodetype()
        kind = _KIND.get(nodetype, "anydata")
        mod = sn.module()
        keys: tuple[str, ...] = ()
        user_ordered = False
        presence = False
        if kind == "list":
            keys = tuple(k.name() for k in sn.keys())  # noqa: SIM118
            user_ordered = sn.ordered()
        elif kind == "leaf-list":
            user_ordered = sn.ordered()
        elif kind == "container":
            presence = bool(sn.presence()) if hasattr(sn, "presence") else False
        nacm_ext = {e.name() for e in sn.extensions()
                    if e.module().name() == "ietf-netconf-acm"}
        deny_all = "default-deny-all" in nacm_ext
        return SchemaNode(
            name=sn.name(),
            namespace=c2str(mod.cdata.ns),
            module=mod.name(),
            kind=kind,
            config=not sn.config_false(),
            keys=keys,
            user_ordered=user_ordered,
            presence=presence,
            deny_all=deny_all,
            deny_write="default-deny-write" in nacm_ext,
            snode=sn,
        )

    def rpc_denies_all(self, namespace: str, name: str) -> bool:
        """Whether the rpc `name` of the module with `namespace` is nacm:default-deny-all."""
        mod = self._modules_by_ns.get(namespace)
        if mod is None:
            return False
        for sn in mod.children(types=(libyang.SNode.RPC,)):
            if sn.name() == name:
                return any(e.name() == "default-deny-all"
                           and e.module().name() == "ietf-netconf-acm"
                           for e in sn.extensions())
        return False

    # ---- modules -------------------------------------------------------------------------

    def module_list(self) -> list[ModuleInfo]:
        out = []
        for mod in self.ctx:
            revs = [r.date() for r in mod.revisions()]
            feats = tuple(f.name() for f in mod.features() if f.state())
            out.append(
                ModuleInfo(
                    name=mod.name(),
                    revision=revs[0] if revs else None,
                    namespace=c2str(mod.cdata.ns),
                    prefix=mod.prefix(),
                    features=feats,
                    implemented=mod.implemented(),
                    filepath=mod.filepath(),
                )
            )
        return out

    def module_text(self, name: str, revision: str | None = None) -> str:
        """The YANG text of a loaded module, for `get-schema`."""
        for info in self.module_list():
            if info.name == name and (revision in (None, "", info.revision)):
                if info.filepath and Path(info.filepath).is_file():
                    return Path(info.filepath).read_text(encoding="utf-8")
                mod = self.ctx.get_module(name)
                text = mod.print("yang", libyang.IOType.MEMORY)
                return str(text)
        raise KeyError(f"{name}@{revision}" if revision else name)

    # ---- validation ----------------------------------------------------------------------

    def parse_config(
        self, data_root: etree._Element, validate: bool = True
    ) -> libyang.DNode | None:
        """Parse a `<data>` root's children as configuration; raise RpcError on any problem.

        Returns the libyang tree (caller frees it) or None for an empty datastore."""
        return self.parse_config_xml(_children_xml(data_root), validate)

    def parse_config_xml(self, xml: bytes, validate: bool = True) -> libyang.DNode | None:
        """The same for the serialized children of a `<data>` root."""
        flags = lib.LYD_PARSE_STRICT | lib.LYD_PARSE_NO_STATE
        if not validate:
            flags |= lib.LYD_PARSE_ONLY
        vflags = lib.LYD_VALIDATE_NO_STATE
        return self._parse(xml, flags, vflags)

    def validate_config(self, data_root: etree._Element, validate: bool = True) -> None:
        tree = self.parse_config(data_root, validate=validate)
        if tree is not None:
            tree.free()

    def _parse(self, xml: bytes, flags: int, vflags: int) -> libyang.DNode | None:
        in_p = ffi.new("struct ly_in **")
        buf = ffi.new("char[]", xml)
        if lib.ly_in_new_memory(buf, in_p) != lib.LY_SUCCESS:
            raise RpcError("application", "operation-failed", "cannot read data")
        out = ffi.new("struct lyd_node **")
        lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
        try:
            ret = lib.lyd_parse_data(
                self.ctx.cdata, ffi.NULL, in_p[0], lib.LYD_XML, flags, vflags, out
            )
        finally:
            lib.ly_in_free(in_p[0], 0)
        if ret != lib.LY_SUCCESS:
            if out[0] != ffi.NULL:
                lib.lyd_free_all(out[0])
            raise self._errors_to_rpc_error()
        if out[0] == ffi.NULL:
            return None
        dnode = libyang.DNode.new(self.ctx, out[0])
        return dnode

    def _errors_to_rpc_error(self) -> RpcError:
        errs: list[RpcError] = []
        item = lib.ly_err_first(self.ctx.cdata)
        while item != ffi.NULL:
            if item.level == lib.LY_LLERR:
                msg = c2str(item.msg) or "validation failed"
                path = _clean_path(c2str(item.path)) if item.path != ffi.NULL else None
                apptag = c2str(item.apptag) if item.apptag != ffi.NULL else None
                errs.append(map_libyang_error(msg, path, apptag))
            item = item.next
        lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
        if not errs:
            return RpcError("application", "operation-failed", "data validation failed")
        first, *rest = errs
        first.others = rest
        return first

    def diff(self, old: etree._Element, new: etree._Element) -> etree._Element | None:
        """libyang's diff of two `<data>` roots, as XML under a `<data>` root (None if equal)."""
        a = self.parse_config(old, validate=False)
        b = self.parse_config(new, validate=False)
        try:
            return self.diff_trees(a, b)
        finally:
            if a is not None:
                a.free()
            if b is not None:
                b.free()

    def diff_trees(
        self, a: libyang.DNode | None, b: libyang.DNode | None
    ) -> etree._Element | None:
        """The same for two already parsed libyang trees (no parsing: cheap)."""
        if a is None and b is None:
            return None
        out = ffi.new("struct lyd_node **")
        ret = lib.lyd_diff_siblings(
            a.cdata if a is not None else ffi.NULL,
            b.cdata if b is not None else ffi.NULL,
            0,
            out,
        )
        if ret != lib.LY_SUCCESS:
            raise self._errors_to_rpc_error()
        if out[0] == ffi.NULL:
            return None
        d = libyang.DNode.new(self.ctx, out[0])
        try:
            text = print_xml(d)
        finally:
            lib.lyd_free_all(out[0])
        return etree.fromstring(b'<data xmlns="' + NC_NS.encode() + b'">' + text + b"</data>")

    def validate_notification(self, elem: etree._Element) -> None:
        """Check that `elem` is a valid instance of a YANG notification (raise RpcError)."""
        xml = etree.tostring(elem)
        in_p = ffi.new("struct ly_in **")
        buf = ffi.new("char[]", xml)
        lib.ly_in_new_memory(buf, in_p)
        tree = ffi.new("struct lyd_node **")
        op = ffi.new("struct lyd_node **")
        lib.ly_err_clean(self.ctx.cdata, ffi.NULL)
        try:
            ret = lib.lyd_parse_op(
                self.ctx.cdata, ffi.NULL, in_p[0], lib.LYD_XML, lib.LYD_TYPE_NOTIF_YANG, tree, op
            )
        finally:
            lib.ly_in_free(in_p[0], 0)
        if tree[0] != ffi.NULL:
            lib.lyd_free_all(tree[0])
        if ret != lib.LY_SUCCESS:
            raise self._errors_to_rpc_error()


_DATA_TYPES = (
    libyang.SNode.CONTAINER,
    libyang.SNode.LIST,
    libyang.SNode.LEAF,
    libyang.SNode.LEAFLIST,
    lib.LYS_ANYDATA,
    lib.LYS_ANYXML,
)


def print_xml(dn: libyang.DNode) -> bytes:
    """A libyang tree and its siblings as compact XML bytes (b"" when nothing prints):
    straight from libyang's buffer, without the binding's decode to str (a copy of every
    character of a big datastore)."""
    buf = ffi.new("char **")
    if lib.lyd_print_mem(buf, dn.cdata, lib.LYD_XML,
                         lib.LYD_PRINT_WITHSIBLINGS | lib.LYD_PRINT_SHRINK) != lib.LY_SUCCESS:
        raise dn.context.error("cannot print data")
    if buf[0] == ffi.NULL:
        return b""
    try:
        return ffi.string(buf[0])
    finally:
        lib.free(buf[0])


def _children_xml(root: etree._Element) -> bytes:
    return b"".join(etree.tostring(c) for c in root)


_LOCATION = re.compile(r'(?:Data|Schema) location "([^"]*)"')


def _clean_path(raw: str | None) -> str | None:
    """libyang says 'Data location "/a:b/c", line number 3.'; error-path wants '/a:b/c'."""
    if not raw:
        return None
    m = _LOCATION.search(raw)
    return m.group(1) if m else raw


_UNIQUE = re.compile(r'Unique data leaf\(s\) "([^"]*)" not satisfied in "([^"]*)" and "([^"]*)"')
_CHOICE = re.compile(r'Mandatory choice "([^"]*)"')
_UNKNOWN = re.compile(r'(?:Node|Element|Data node) "([^"]+)" not found')


def map_libyang_error(msg: str, path: str | None, apptag: str | None) -> RpcError:
    """Map a libyang validation message to RFC 6241 / RFC 7950 section 15 error tags, with
    the error-info RFC 7950 asks for (`non-unique`, `missing-choice`, `bad-element`)."""
    low = msg.lower()
    etype = "application"
    m = _CHOICE.search(msg)
    if m is not None and (apptag in (None, "missing-choice")):
        # section 15.6: error-path names the element holding the choice, error-info its name
        parent = path.rsplit("/", 1)[0] if path and path.endswith("/" + m.group(1)) else path
        return RpcError(etype, "data-missing", msg, path=parent or path,
                        app_tag="missing-choice",
                        info_xml=[_yang_info("missing-choice", m.group(1))])
    m = _UNIQUE.search(msg)
    if m is not None:
        # section 15.1: one <non-unique> per leaf of the unique statement, in the entry
        # that broke it
        entry = m.group(3)
        return RpcError(etype, "operation-failed", msg, path=path or entry,
                        app_tag="data-not-unique",
                        info_xml=[_yang_info("non-unique", f"{entry}/{leaf}", path=True)
                                  for leaf in m.group(1).split()])
    if apptag in ("instance-required", "missing-choice"):
        return RpcError(etype, "data-missing", msg, path=path, app_tag=apptag)
    if apptag:  # must-violation, too-many-elements, ... or a must's own error-app-tag
        return RpcError(etype, "operation-failed", msg, path=path, app_tag=apptag)
    info: dict[str, str] = {}
    if "mandatory node" in low:
        tag, app = "data-missing", None
    elif "leafref" in low or "instance-identifier" in low or "require-instance" in low:
        tag, app = "data-missing", "instance-required"
    elif "must condition" in low:
        tag, app = "operation-failed", "must-violation"
    elif "too many" in low:
        tag, app = "operation-failed", "too-many-elements"
    elif "too few" in low:
        tag, app = "operation-failed", "too-few-elements"
    elif "is missing its key" in low or "missing key" in low:
        tag, app = "missing-element", None
    elif any(w in low for w in ("not found", "unknown element", "no module", "when condition")):
        tag, app = "unknown-element", None
        m = _UNKNOWN.search(msg)
        if m is not None:
            info["bad-element"] = m.group(1).rpartition(":")[2]
    elif "duplicate instance" in low:
        tag, app = "operation-failed", "data-not-unique"
    else:
        tag, app = "invalid-value", None
        node = _last_node(path)
        if node:  # the element whose value is wrong (RFC 6241 appendix A; as Netopeer2)
            info["bad-element"] = node
    return RpcError(etype, tag, msg, path=path, app_tag=apptag or app, info=info)


def _last_node(path: str | None) -> str | None:
    """The name of the last node of a data path (`/m:a/b[k='x/y']/c` → `c`)."""
    if not path:
        return None
    depth, quote, start = 0, "", 0
    for i, ch in enumerate(path):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "/" and depth == 0:
            start = i + 1
    last = path[start:].split("[", 1)[0]
    return last.rpartition(":")[2] or None


def _yang_info(name: str, text: str, path: bool = False) -> etree._Element:
    """An RFC 7950 section 15 error-info element (YANG namespace); an instance-identifier
    value gets its prefixes declared."""
    nsmap: dict[str | None, str] = {None: YANG_NS}
    if path:
        text, prefixes = qualify_path(text)
        nsmap.update(prefixes)
    el = etree.Element(f"{{{YANG_NS}}}{name}", nsmap=nsmap)
    el.text = text
    return el
