"""RFC 8526 NMDA operations, `get-data` and `edit-data`, over the RFC 8342 datastores.

Datastores: `running`, `candidate`, `startup` (configuration), `intended` (= running: this
server has no inactive configuration or templates) and `operational` (running's
configuration in use plus the appliers' state, the server's own state: what `<get>` shows).
In `operational`, `with-origin` annotates configuration with `or:origin` (RFC 8342 5.3.4):
`or:intended` for what running holds, `or:default` for nodes that are there because of a
YANG default (only present when with-defaults asks for them); state nodes carry none.
`origin-filter` / `negated-origin-filter` select configuration nodes by that origin.

`edit-data` is edit-config's work on running or candidate (same edit engine, validation,
appliers, NACM write checks); `operational` and `startup`/`intended` are not writable by it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lxml import etree

from netconf_core import params as P
from netconf_core import with_defaults as wd
from netconf_core.errors import NC_NS, RpcError
from netconf_core.filters import subtree_filter, xpath_filter
from netconf_core.monitoring import DS_NS
from netconf_core.schema import SchemaNode

if TYPE_CHECKING:
    from netconf_core.rpc import Body
    from netconf_core.server import NetconfServer
    from netconf_core.session import NetconfSession

NMDA_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-nmda"
ORIGIN_NS = "urn:ietf:params:xml:ns:yang:ietf-origin"
MODULES = ("ietf-origin", "ietf-netconf-nmda")
DATASTORES = ("running", "candidate", "startup", "intended", "operational")
WRITABLE = ("running", "candidate")
_ORIGIN = f"{{{ORIGIN_NS}}}origin"
_WD_TAG = "{urn:ietf:params:xml:ns:netconf:default:1.0}default"
# origin identities and their bases (RFC 8342 section 7.3)
_ORIGIN_BASES = {
    "origin": (), "intended": ("origin",), "dynamic": ("origin",), "system": ("origin",),
    "learned": ("origin",), "default": ("origin",), "unknown": ("origin",),
}


def _bad(what: str, message: str, tag: str = "invalid-value") -> RpcError:
    return RpcError("protocol", tag, message, info={"bad-element": what})


def _identity(el: etree._Element, base_ns: str, allowed: tuple[str, ...] | dict,
              what: str) -> str:
    """An identityref parameter (`ds:operational`) resolved with the element's namespace
    context; the identity's local name."""
    text = (el.text or "").strip()
    pfx, _, name = text.rpartition(":")
    ns = el.nsmap.get(pfx or None)
    if pfx and ns is None:  # libyang's JSON form: a module name as prefix
        ns = {"ietf-datastores": DS_NS, "ietf-origin": ORIGIN_NS}.get(pfx)
    if ns != base_ns or name not in allowed:
        raise _bad(what, f"{what} {text!r} is not one of "
                   f"{', '.join(sorted(allowed))} of {base_ns}")
    return name


def _datastore(p: dict[str, etree._Element], allowed: tuple[str, ...]) -> str:
    return _identity(P.require(p, "datastore", "get-data"), DS_NS, allowed, "datastore")


def op_get_data(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("datastore", "subtree-filter", "xpath-filter", "config-filter",
                        "origin-filter", "negated-origin-filter", "max-depth", "with-origin",
                        "with-defaults"), also_ns=(wd.WD_NS,), repeatable=(
                            "origin-filter", "negated-origin-filter"))
    ds = _datastore(p, DATASTORES)
    if "subtree-filter" in p and "xpath-filter" in p:
        raise _bad("xpath-filter", "give a subtree-filter or an xpath-filter, not both")
    config_filter = P.text(p.get("config-filter"))
    if config_filter not in (None, "true", "false"):
        raise _bad("config-filter", f"config-filter must be true or false, not {config_filter!r}")
    origins = p.get("origin-filter", [])  # type: ignore[var-annotated]
    negated = p.get("negated-origin-filter", [])  # type: ignore[var-annotated]
    if origins and negated:
        raise _bad("negated-origin-filter", "origin-filter and negated-origin-filter exclude "
                   "each other")
    with_origin = "with-origin" in p
    if (with_origin or origins or negated) and ds != "operational":
        what = "with-origin" if with_origin else "origin-filter"
        raise _bad(what, f"{what} applies to the operational datastore only")
    depth = _max_depth(p.get("max-depth"))
    mode = wd.mode_of(p.get("with-defaults"))
    origin_set = {_identity(o, ORIGIN_NS, _ORIGIN_BASES, "origin-filter")
                  for o in (origins or negated)}  # type: ignore[union-attr]

    if ds == "operational":
        data = _operational(srv, sess)
        # with-origin needs to know which nodes are defaults: ask libyang to tag them
        shown = mode
        if (with_origin or origin_set) and mode in ("report-all", "report-all-tagged"):
            shown = "report-all-tagged"
        data = wd.apply(srv.schema, data, shown, state=True)
    else:
        with srv.ds_lock:
            data = srv.datastores.get_config("running" if ds == "intended" else ds)
        data = wd.apply(srv.schema, data, mode, state=False)
    from netconf_core.rpc import _hide_secrets

    _hide_secrets(srv, sess, data)
    rules = srv.nacm_rules(sess)
    if rules is not None:
        srv.nacm.filter_read(rules, sess.username, data)
    if config_filter is not None:
        _config_filter(srv, data, config_filter == "true")
    if ds == "operational" and (with_origin or origin_set):
        _origins(srv, data, origin_set, bool(negated), with_origin,
                 keep_tags=mode == "report-all-tagged")
    filt = p.get("subtree-filter")
    if filt is not None:
        data = subtree_filter(data, filt, srv.schema)
    elif "xpath-filter" in p:
        xf = p["xpath-filter"]
        data = xpath_filter(data, (xf.text or "").strip(),
                            {k: v for k, v in xf.nsmap.items() if k}, srv.schema)
    if depth:
        _prune(data, depth)
    out = etree.Element(f"{{{NMDA_NS}}}data", nsmap={None: NMDA_NS, "or": ORIGIN_NS})
    for child in list(data):
        out.append(child)
    return [out]


def _operational(srv: NetconfServer, sess: NetconfSession) -> etree._Element:
    """What `<get>` returns: running's configuration, applier and server state."""
    from netconf_core.rpc import op_get

    body = op_get(srv, sess, etree.Element(f"{{{NC_NS}}}get"))
    assert body is not None
    first = body[0]
    return first if isinstance(first, etree._Element) else etree.fromstring(first)


def _max_depth(el: etree._Element | None) -> int:
    v = P.text(el)
    if v is None or v == "unbounded":
        return 0
    try:
        n = int(v)
    except ValueError:
        n = 0
    if not 1 <= n <= 65535:
        raise _bad("max-depth", f"max-depth must be 1..65535 or unbounded, not {v!r}")
    return n


def _prune(parent: etree._Element, depth: int) -> None:
    for child in parent:
        if not isinstance(child.tag, str):
            continue
        if depth == 1:
            for c in list(child):
                child.remove(c)
            if len(child) == 0 and child.text and child.text.strip() == "":
                child.text = None
        else:
            _prune(child, depth - 1)


def _config_filter(srv: NetconfServer, data: etree._Element, config: bool) -> None:
    """Keep only config true (or only config false) nodes and the path to them."""

    def keep(el: etree._Element, psn: SchemaNode | None) -> bool:
        sn = srv.schema.lookup(psn, el.tag)
        if sn is None:
            return not config
        if sn.kind in ("leaf", "leaf-list", "anydata", "anyxml"):
            return sn.config == config
        if not sn.config:  # everything below a config false node is state
            return not config
        kept = False
        for child in list(el):
            if not isinstance(child.tag, str):
                continue
            if sn.kind == "list" and child.tag in sn.key_tags:
                continue  # keys stay with a kept entry
            if keep(child, sn):
                kept = True
            else:
                el.remove(child)
        return kept or (config and sn.kind == "container" and sn.presence)

    for child in list(data):
        if isinstance(child.tag, str) and not keep(child, None):
            data.remove(child)


def _derived(name: str, wanted: set[str]) -> bool:
    return name in wanted or any(_derived(b, wanted) for b in _ORIGIN_BASES.get(name, ()))


def _origins(srv: NetconfServer, data: etree._Element, wanted: set[str], negated: bool,
             annotate: bool, keep_tags: bool) -> None:
    """Annotate configuration with or:origin (where it differs from the parent's) and drop
    configuration nodes the origin filter does not select."""

    def walk(el: etree._Element, psn: SchemaNode | None, parent_origin: str | None) -> bool:
        sn = srv.schema.lookup(psn, el.tag)
        if sn is None or not sn.config:
            return True  # state data has no origin; filters leave it alone
        origin = "default" if el.get(_WD_TAG) == "true" else "intended"
        if not keep_tags:
            el.attrib.pop(_WD_TAG, None)
        if sn.kind in ("container", "list"):
            kept = False
            for child in list(el):
                if not isinstance(child.tag, str):
                    continue
                if sn.kind == "list" and child.tag in sn.key_tags:
                    continue
                if walk(child, sn, origin):
                    kept = True
                else:
                    el.remove(child)
            if wanted and not kept and not _selected(origin):
                return False
        elif wanted and not _selected(origin):
            return False
        if annotate and origin != parent_origin:
            el.set(_ORIGIN, f"or:{origin}")
        return True

    def _selected(origin: str) -> bool:
        return _derived(origin, wanted) != negated

    for child in list(data):
        if isinstance(child.tag, str) and not walk(child, None, None):
            data.remove(child)


def op_edit_data(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("datastore", "default-operation", "config", "url"))
    ds = _identity(P.require(p, "datastore", "edit-data"), DS_NS, DATASTORES, "datastore")
    if ds not in WRITABLE:
        raise _bad("datastore", f"edit-data cannot write the {ds} datastore (use running "
                   "or candidate)")
    if "url" in p:
        raise _bad("url", ":url is not supported", "operation-not-supported")
    config = P.require(p, "config", "edit-data")
    # the same request as edit-config, made of the same parts
    q = f"{{{NC_NS}}}"
    edit = etree.Element(q + "edit-config", nsmap={None: NC_NS})
    etree.SubElement(etree.SubElement(edit, q + "target"), q + ds)
    if "default-operation" in p:
        etree.SubElement(edit, q + "default-operation").text = P.text(p["default-operation"])
    # the prefixes in scope at <config> stay in scope (values may use them)
    nc_config = etree.SubElement(edit, q + "config", nsmap={**config.nsmap, None: NC_NS})
    for child in list(config):
        if isinstance(child.tag, str):
            nc_config.append(child)
    from netconf_core.rpc import op_edit_config

    return op_edit_config(srv, sess, edit)


HANDLERS = {
    (NMDA_NS, "get-data"): op_get_data,
    (NMDA_NS, "edit-data"): op_edit_data,
}
