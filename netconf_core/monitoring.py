"""RFC 6022 `ietf-netconf-monitoring` state and RFC 8525 yang-library data for `<get>`.

Clients discover our modules from these (and fetch them with `get-schema`), so the module list
here is the one libyang validates against.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import libyang
from lxml import etree

from netconf_core.locks import DATASTORES, LockManager
from netconf_core.notifications import format_time
from netconf_core.schema import ModuleInfo

NCM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
YANGLIB_NS = "urn:ietf:params:xml:ns:yang:ietf-yang-library"


@dataclass
class Counters:
    """The counters RFC 6022 keeps per session and for the whole server."""

    in_rpcs: int = 0
    in_bad_rpcs: int = 0
    out_rpc_errors: int = 0
    out_notifications: int = 0


@dataclass
class SessionInfo:
    session_id: int
    username: str
    source_host: str
    login_time: datetime
    counters: Counters = field(default_factory=Counters)


@dataclass
class ServerStats:
    start_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    in_bad_hellos: int = 0
    in_sessions: int = 0
    dropped_sessions: int = 0
    counters: Counters = field(default_factory=Counters)


def _sub(parent: etree._Element, name: str, text: object | None = None) -> etree._Element:
    el = etree.SubElement(parent, f"{{{NCM_NS}}}{name}")
    if text is not None:
        el.text = str(text)
    return el


def _ident(parent: etree._Element, name: str, identity: str) -> None:
    """An identityref leaf. Its `ncm` prefix is declared on the netconf-state root (a
    declaration on the leaf itself is dropped by lxml as redundant with the default
    namespace as soon as the tree is moved: the value would no longer resolve)."""
    el = etree.SubElement(parent, f"{{{NCM_NS}}}{name}")
    el.text = f"ncm:{identity}"


def _counters(parent: etree._Element, c: Counters) -> None:
    _sub(parent, "in-rpcs", c.in_rpcs)
    _sub(parent, "in-bad-rpcs", c.in_bad_rpcs)
    _sub(parent, "out-rpc-errors", c.out_rpc_errors)
    _sub(parent, "out-notifications", c.out_notifications)


def netconf_state(
    capabilities: Iterable[str],
    locks: LockManager,
    modules: Iterable[ModuleInfo],
    sessions: Iterable[SessionInfo],
    stats: ServerStats,
) -> etree._Element:
    """The `/ncm:netconf-state` container."""
    root = etree.Element(f"{{{NCM_NS}}}netconf-state", nsmap={None: NCM_NS, "ncm": NCM_NS})
    caps = _sub(root, "capabilities")
    for c in capabilities:
        _sub(caps, "capability", c)
    dss = _sub(root, "datastores")
    for name in DATASTORES:
        ds = _sub(dss, "datastore")
        _sub(ds, "name", name)
        lk = locks.locks.get(name)
        if lk is not None:
            locks_el = _sub(ds, "locks")
            gl = _sub(locks_el, "global-lock")
            _sub(gl, "locked-by-session", lk.session_id)
            _sub(gl, "locked-time", format_time(datetime.fromtimestamp(lk.since, UTC)))
    schemas = _sub(root, "schemas")
    for m in modules:
        sc = _sub(schemas, "schema")
        _sub(sc, "identifier", m.name)
        _sub(sc, "version", m.revision or "")
        _ident(sc, "format", "yang")
        _sub(sc, "namespace", m.namespace)
        _sub(sc, "location", "NETCONF")
    sess_el = _sub(root, "sessions")
    for s in sessions:
        se = _sub(sess_el, "session")
        _sub(se, "session-id", s.session_id)
        _ident(se, "transport", "netconf-ssh")
        _sub(se, "username", s.username)
        if s.source_host:
            _sub(se, "source-host", s.source_host)
        _sub(se, "login-time", format_time(s.login_time))
        _counters(se, s.counters)
    st = _sub(root, "statistics")
    _sub(st, "netconf-start-time", format_time(stats.start_time))
    _sub(st, "in-bad-hellos", stats.in_bad_hellos)
    _sub(st, "in-sessions", stats.in_sessions)
    _sub(st, "dropped-sessions", stats.dropped_sessions)
    _counters(st, stats.counters)
    return root


DS_NS = "urn:ietf:params:xml:ns:yang:ietf-datastores"


def yang_library(
    ctx: libyang.Context,
    content_id: str,
    location: str | None = None,
    datastores: Iterable[str] = (),
) -> list[etree._Element]:
    """libyang's RFC 8525 data for the context (`yang-library` and `modules-state`).

    libyang fills `location` (and modules-state's `schema`) with the file:// path it loaded
    each module from: a path on the agent's host that no client can use and that tells
    strangers the install layout. Those leaves are dropped; clients fetch the texts with
    get-schema, as from Netopeer2. With `location` set (a URL template with `{name}` and
    `{revision}`) each module announces that URL instead. `datastores` (e.g. "running")
    are listed under /yang-library/datastore with the complete schema (RFC 8525 §3)."""
    dnode = ctx.get_yanglib_data(content_id)
    try:
        text = dnode.print_mem("xml", with_siblings=True, pretty=False)
    finally:
        dnode.free()
    wrapper = etree.fromstring(f"<w>{text}</w>".encode())
    q = f"{{{YANGLIB_NS}}}"
    for tag in (q + "location", q + "schema"):
        for el in list(wrapper.iter(tag)):
            parent = el.getparent()
            if tag == q + "schema" and parent.tag != q + "module":
                continue  # /yang-library/schema is the schema list, not a file
            if location is None:
                parent.remove(el)
            else:
                name = parent.findtext(q + "name") or ""
                rev = parent.findtext(q + "revision") or ""
                el.text = location.format(name=name, revision=rev)
    lib = wrapper.find(q + "yang-library")
    if lib is not None:
        cid = lib.find(q + "content-id")
        for ds in datastores:
            d = etree.Element(q + "datastore", nsmap={"ds": DS_NS})
            etree.SubElement(d, q + "name").text = f"ds:{ds}"
            etree.SubElement(d, q + "schema").text = "complete"
            if cid is not None:
                cid.addprevious(d)
            else:
                lib.append(d)
    return list(wrapper)
