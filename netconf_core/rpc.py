"""The RFC 6241 / 5277 / 6022 operations: parameters in, datastore calls, reply body out.

A handler returns None for `<ok/>` or the elements of the reply body, and raises RpcError for
anything the client did wrong. Datastore calls are made under the server's datastore lock.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree

from netconf_core import params as P
from netconf_core import with_defaults as wd
from netconf_core.edit import apply_edit
from netconf_core.errors import NC_NS, RpcError
from netconf_core.monitoring import NCM_NS, YANGLIB_NS
from netconf_core.nacm import NACM_NS
from netconf_core.notifications import NETMOD_NOTIF_NS, NOTIF_NS, parse_time
from netconf_core.secrets_access import check_no_secrets, strip_secrets

if TYPE_CHECKING:
    from netconf_core.schema import YangSchema
    from netconf_core.server import NetconfServer
    from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)

NC = P.NC
# reply content: elements, or already serialized XML (a datastore's cached canonical text)
Body = list[etree._Element | bytes] | None
Handler = Callable[["NetconfServer", "NetconfSession", etree._Element], Body]

TEST_OPTIONS = ("test-then-set", "set", "test-only")
ERROR_OPTIONS = ("stop-on-error", "continue-on-error", "rollback-on-error")
DEFAULT_OPERATIONS = ("merge", "replace", "none")
WRITABLE = ("running", "candidate")


# -- filters ----------------------------------------------------------------------------------


def apply_filter(data: etree._Element, filt: etree._Element | None,
                 schema: YangSchema | None = None) -> etree._Element:
    """RFC 6241 section 6 subtree filter or :xpath filter on a `<data>` root; with the
    schema, list entries keep their keys and unprefixed XPath names are resolved."""
    if filt is None:
        return data
    from netconf_core.filters import subtree_filter, xpath_filter

    ftype = filt.get("type") or filt.get(NC + "type") or "subtree"
    if ftype == "subtree":
        return subtree_filter(data, filt, schema)
    if ftype == "xpath":
        select = filt.get("select") or filt.get(NC + "select")
        if select is None:
            raise RpcError(
                "protocol", "missing-attribute", "an xpath filter needs a select attribute",
                info={"bad-attribute": "select", "bad-element": "filter"},
            )
        nsmap = {k: v for k, v in filt.nsmap.items() if k is not None}
        return xpath_filter(data, select, nsmap, schema)
    raise RpcError(
        "protocol", "bad-attribute", f"unknown filter type {ftype!r}",
        info={"bad-attribute": "type", "bad-element": "filter"},
    )


# -- retrieval ----------------------------------------------------------------------------------


def op_get(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("filter", "with-defaults"), also_ns=(wd.WD_NS,))
    mode = wd.mode_of(p.get("with-defaults"))
    filt = p.get("filter")
    from netconf_core.filters import top_level_selector

    # only what the filter can select is built (a subtree filter names the top-level nodes)
    sel = top_level_selector(filt)
    with srv.ds_lock:
        data = srv.datastores.get_state(sel)
    if (sel is None or sel(f"{{{NCM_NS}}}netconf-state")) and \
            srv.schema.namespace_known(NCM_NS):
        data.append(srv.netconf_state())
    if sel is None or sel(f"{{{YANGLIB_NS}}}yang-library") or \
            sel(f"{{{YANGLIB_NS}}}modules-state"):
        data.extend(srv.yang_library())
    if (sel is None or sel(f"{{{NETMOD_NOTIF_NS}}}netconf")) and \
            srv.schema.namespace_known(NETMOD_NOTIF_NS):
        data.append(srv.bus.streams())
    rules = srv.nacm_rules(sess)
    if srv.schema.namespace_known(NACM_NS) and (sel is None or sel(f"{{{NACM_NS}}}nacm")):
        srv.nacm.add_counters(data)
    data = wd.apply(srv.schema, data, mode, state=True)
    _hide_secrets(srv, sess, data)
    if rules is not None:
        srv.nacm.filter_read(rules, sess.username, data)
    return [apply_filter(data, filt, srv.schema)]


def op_get_config(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("source", "filter", "with-defaults"), also_ns=(wd.WD_NS,))
    mode = wd.mode_of(p.get("with-defaults"))
    source = P.datastore(P.require(p, "source", "get-config"), P.DATASTORE_NAMES, "source")
    hide = sess.username in srv.config.no_secrets_users
    rules = srv.nacm_rules(sess)
    with srv.ds_lock:
        if p.get("filter") is None and not hide and mode == wd.BASIC_MODE and rules is None:
            raw = srv.datastores.config_bytes(str(source))
            if raw is not None:
                return [raw]  # no copy of the tree, no serialization
        data = srv.datastores.get_config(str(source))
    data = wd.apply(srv.schema, data, mode, state=False)
    _hide_secrets(srv, sess, data)
    if rules is not None:
        srv.nacm.filter_read(rules, sess.username, data)
    return [apply_filter(data, p.get("filter"), srv.schema)]


def _hide_secrets(srv: NetconfServer, sess: NetconfSession, data: etree._Element) -> None:
    if sess.username in srv.config.no_secrets_users:
        strip_secrets(srv.schema, data)


def _guard_secrets(srv: NetconfServer, sess: NetconfSession, config: etree._Element) -> None:
    if sess.username in srv.config.no_secrets_users:
        check_no_secrets(srv.schema, config, sess.username)


# -- editing ----------------------------------------------------------------------------------


def check_namespaces(srv: NetconfServer, config: etree._Element) -> None:
    """Top-level data nodes must belong to a module we serve (unknown-namespace)."""
    for child in config:
        if not isinstance(child.tag, str):
            continue
        ns = P.ns_of(child.tag)
        if ns == NC_NS or not srv.schema.namespace_known(ns):
            raise RpcError(
                "application", "unknown-namespace",
                f"no YANG module with namespace {ns!r} is served here",
                info={"bad-element": P.local(child.tag), "bad-namespace": ns},
            )


def op_edit_config(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(
        op, ("target", "default-operation", "test-option", "error-option", "config", "url")
    )
    target = str(P.datastore(P.require(p, "target", "edit-config"), WRITABLE, "target"))
    default_op = P.enum(
        p.get("default-operation"), DEFAULT_OPERATIONS, "merge", "default-operation"
    )
    test_opt = P.enum(p.get("test-option"), TEST_OPTIONS, "test-then-set", "test-option")
    error_opt = P.enum(p.get("error-option"), ERROR_OPTIONS, "stop-on-error", "error-option")
    if "url" in p:
        raise RpcError("protocol", "operation-not-supported", ":url is not supported",
                       info={"bad-element": "url"})
    config = P.require(p, "config", "edit-config")
    check_namespaces(srv, config)
    wd.accept_default_tags(srv.schema, config, copy=False)
    _guard_secrets(srv, sess, config)
    srv.locks.check_write(target, sess.id)
    with srv.ds_lock, srv.config_change(sess, target):
        rules = srv.nacm_rules(sess)
        if rules is not None:
            # RFC 8341 3.4.5: every node the edit creates, updates or deletes, judged on
            # the change it would make (a trial on a copy; the datastore is untouched)
            old = srv.datastores.get_config(target)
            trial = copy.deepcopy(old)
            try:
                apply_edit(srv.schema, trial, copy.deepcopy(config), default_op,
                           continue_on_error=error_opt == "continue-on-error")
            except RpcError:
                pass  # the real edit below reports it
            else:
                srv.nacm.check_write(rules, sess.username, old, trial)
        skipped = srv.datastores.edit_config(target, config, default_op, test_opt, error_opt,
                                             consume=True)
        if target == "running":
            _follow_running(srv)
    if skipped:
        # continue-on-error: the valid parts were applied, the reply reports the rest.
        first, *rest = skipped
        first.others = [*rest, *first.others]
        raise first
    return None


def op_copy_config(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("target", "source", "with-defaults"), also_ns=(wd.WD_NS,))
    mode = wd.mode_of(p.get("with-defaults"))
    target = str(P.datastore(P.require(p, "target", "copy-config"), P.DATASTORE_NAMES, "target"))
    source = P.datastore(
        P.require(p, "source", "copy-config"), P.DATASTORE_NAMES, "source", allow_config=True
    )
    if source == target:
        raise RpcError("protocol", "invalid-value", "source and target are the same datastore",
                       info={"bad-element": "target"})
    if not isinstance(source, str):
        check_namespaces(srv, source)
        wd.accept_default_tags(srv.schema, source, copy=True)
        _guard_secrets(srv, sess, source)
    elif sess.username in srv.config.no_secrets_users:
        with srv.ds_lock:
            _guard_secrets(srv, sess, srv.datastores.get_config(source))
    srv.locks.check_write(target, sess.id)
    with srv.ds_lock, srv.config_change(sess, target):
        rules = srv.nacm_rules(sess)
        if rules is not None:
            new = srv.datastores.get_config(source) if isinstance(source, str) else source
            srv.nacm.check_write(rules, sess.username, srv.datastores.get_config(target),
                                 _as_data_root(new))
        if mode != wd.BASIC_MODE:
            # RFC 6243 4.5.3: the source as that mode reports it (tags are no config)
            data = srv.datastores.get_config(source) if isinstance(source, str) else source
            source = wd.apply(srv.schema, data, "report-all" if mode == "report-all-tagged"
                              else mode, state=False)
        srv.datastores.copy_config(target, source)
        if target == "running":
            _follow_running(srv)
    return None


def _follow_running(srv: NetconfServer) -> None:
    """An unmodified candidate mirrors running (as in sysrepo/Netopeer2): a direct change of
    running must not leave a stale candidate that a later commit would write back."""
    ds = srv.datastores
    if not ds.candidate_modified:
        ds.discard_changes()


def op_delete_config(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("target",))
    target = str(P.datastore(P.require(p, "target", "delete-config"), ("startup",), "target"))
    srv.locks.check_write(target, sess.id)
    with srv.ds_lock:
        rules = srv.nacm_rules(sess)
        if rules is not None:
            srv.nacm.check_write(rules, sess.username, srv.datastores.get_config(target),
                                 etree.Element(NC + "data"))
        srv.datastores.delete_config(target)
    return None


def op_validate(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("source",))
    source = P.datastore(
        P.require(p, "source", "validate"), P.DATASTORE_NAMES, "source", allow_config=True
    )
    if not isinstance(source, str):
        check_namespaces(srv, source)
    with srv.ds_lock:
        srv.datastores.validate(source)
    return None


# -- locks and sessions -----------------------------------------------------------------------


def op_lock(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("target",))
    target = str(P.datastore(P.require(p, "target", "lock"), P.DATASTORE_NAMES, "target"))
    with srv.ds_lock:
        modified = target == "candidate" and srv.datastores.candidate_modified
    srv.locks.lock(target, sess.id, candidate_modified=modified)
    return None


def op_unlock(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("target",))
    target = str(P.datastore(P.require(p, "target", "unlock"), P.DATASTORE_NAMES, "target"))
    srv.locks.unlock(target, sess.id)
    return None


def op_close_session(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    P.children(op, ())
    sess.after_reply.append(lambda: sess.close("closed"))
    return None


def op_kill_session(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("session-id",))
    sid = P.uint(P.require(p, "session-id", "kill-session"), 0, "session-id")
    if sid == sess.id:
        raise RpcError("protocol", "invalid-value", "use close-session to end this session",
                       info={"bad-element": "session-id"})
    victim = srv.sessions.get(sid)
    if victim is None:
        raise RpcError("protocol", "invalid-value", f"no session {sid}",
                       info={"bad-element": "session-id"})
    victim.close("killed", killed_by=sess.id)
    return None


# -- candidate and confirmed commit -----------------------------------------------------------


def op_commit(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("confirmed", "confirm-timeout", "persist", "persist-id"))
    confirmed = "confirmed" in p
    if not confirmed and ("confirm-timeout" in p or "persist" in p):
        bad = "confirm-timeout" if "confirm-timeout" in p else "persist"
        raise RpcError("protocol", "invalid-value", "confirm-timeout and persist need <confirmed/>",
                       info={"bad-element": bad})
    timeout = P.uint(p.get("confirm-timeout"), srv.config.confirm_timeout, "confirm-timeout")
    persist = P.text(p.get("persist"))
    persist_id = P.text(p.get("persist-id"))
    srv.locks.check_write("running", sess.id)
    srv.locks.check_write("candidate", sess.id)
    cc = srv.confirmed
    cc.check_may_follow(sess.id, persist_id)
    pending = cc.pending is not None
    with srv.ds_lock:
        if confirmed:
            if not pending:
                cc.begin(srv.datastores.running_tree(), sess.id, persist, timeout)
            try:
                with srv.config_change(sess, "running"):
                    srv.datastores.commit()
            except BaseException:
                if not pending:
                    cc.finish()
                raise
            cc.update(persist, sess.id)
            cc.arm(asyncio.get_running_loop(), timeout)
            srv.emit_confirmed_commit(sess, "extend" if pending else "start", timeout)
        else:
            with srv.config_change(sess, "running"):
                srv.datastores.commit()
            if pending:
                cc.finish()
                srv.emit_confirmed_commit(sess, "complete", None)
    return None


def op_cancel_commit(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("persist-id",))
    persist_id = P.text(p.get("persist-id"))
    if srv.confirmed.pending is None:
        raise RpcError("protocol", "operation-failed", "no confirmed commit is pending")
    srv.confirmed.check_may_follow(sess.id, persist_id)
    srv.rollback_confirmed("cancel", sess)
    return None


def op_discard_changes(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    P.children(op, ())
    srv.locks.check_write("candidate", sess.id)
    with srv.ds_lock:
        srv.datastores.discard_changes()
    return None


# -- notifications and monitoring -------------------------------------------------------------


def op_create_subscription(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("stream", "filter", "startTime", "stopTime"), also_ns=(NC_NS,))
    stream = P.text(p.get("stream"))
    start = parse_time(P.text(p["startTime"]) or "", "startTime") if "startTime" in p else None
    stop = parse_time(P.text(p["stopTime"]) or "", "stopTime") if "stopTime" in p else None
    filt = p.get("filter")
    event_filter = None
    if filt is not None:
        # Fail now on a malformed filter rather than on the first event.
        apply_filter(etree.Element(NC + "data"), filt, srv.schema)

        def event_filter(content: etree._Element) -> etree._Element | None:
            data = etree.Element(NC + "data")
            data.append(etree.fromstring(etree.tostring(content)))
            out = apply_filter(data, filt, srv.schema)
            return out[0] if len(out) else None

        if (filt.get("type") or filt.get(NC + "type") or "subtree") == "subtree":
            # which notifications it can select at all: events nobody selects need not
            # be built (netconf-config-change costs a diff of running)
            # (a node left in the filter's own namespace matches any namespace)
            event_filter.selects = frozenset(  # type: ignore[attr-defined]
                ("" if P.ns_of(c.tag) in (NC_NS, NOTIF_NS) else P.ns_of(c.tag), P.local(c.tag))
                for c in filt if isinstance(c.tag, str))

    if srv.schema is not None and srv.schema.namespace_known(NACM_NS):
        event_filter = _nacm_filtered(srv, sess, event_filter)
    sub = srv.bus.subscribe(sess.id, sess.send_notification, stream, event_filter, start, stop)
    sess.after_reply.append(lambda: srv.bus.start(sub))
    return None


def _nacm_filtered(srv: NetconfServer, sess: NetconfSession, inner):  # type: ignore[no-untyped-def]
    """The subscription's filter behind RFC 8341's notification check, made at delivery
    with the rules then in force (a denied event is dropped and counted)."""

    def event_filter(content: etree._Element) -> etree._Element | None:
        rules = srv.nacm_rules(sess)
        if rules is not None:
            if not srv.nacm.may_notify(rules, sess.username, content):
                srv.nacm.counters.denied_notifications += 1
                return None
            data = etree.Element(NC + "data")
            data.append(copy.deepcopy(content))
            srv.nacm.filter_read(rules, sess.username, data)
            if not len(data):
                srv.nacm.counters.denied_notifications += 1
                return None
            content = data[0]
        return inner(content) if inner is not None else content

    selects = getattr(inner, "selects", None)
    if selects is not None:
        event_filter.selects = selects  # type: ignore[attr-defined]
    return event_filter


def _as_data_root(config: etree._Element) -> etree._Element:
    data = etree.Element(NC + "data")
    for c in config:
        if isinstance(c.tag, str):
            data.append(copy.deepcopy(c))
    return data


def op_get_schema(srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> Body:
    p = P.children(op, ("identifier", "version", "format"))
    ident = P.text(P.require(p, "identifier", "get-schema")) or ""
    version = P.text(p.get("version")) or None
    fmt = P.text(p.get("format"))
    if fmt is not None and fmt.rpartition(":")[2] != "yang":
        raise RpcError("application", "invalid-value", f"schema format {fmt!r} is not available",
                       info={"bad-element": "format"})
    matches = [m for m in srv.schema.module_list()
               if m.name == ident and version in (None, m.revision)]
    if not matches:
        raise RpcError("application", "invalid-value",
                       f"no schema {ident}{'@' + version if version else ''}",
                       info={"bad-element": "identifier"})
    if len({m.revision for m in matches}) > 1:
        raise RpcError("application", "operation-failed",
                       f"several revisions of {ident}; give a version",
                       app_tag="data-not-unique", info={"bad-element": "version"})
    text = srv.schema.module_text(ident, matches[0].revision)
    data = etree.Element(f"{{{NCM_NS}}}data", nsmap={None: NCM_NS})
    data.text = text
    return [data]


HANDLERS: dict[tuple[str, str], Handler] = {
    (NC_NS, "get"): op_get,
    (NC_NS, "get-config"): op_get_config,
    (NC_NS, "edit-config"): op_edit_config,
    (NC_NS, "copy-config"): op_copy_config,
    (NC_NS, "delete-config"): op_delete_config,
    (NC_NS, "validate"): op_validate,
    (NC_NS, "lock"): op_lock,
    (NC_NS, "unlock"): op_unlock,
    (NC_NS, "close-session"): op_close_session,
    (NC_NS, "kill-session"): op_kill_session,
    (NC_NS, "commit"): op_commit,
    (NC_NS, "cancel-commit"): op_cancel_commit,
    (NC_NS, "discard-changes"): op_discard_changes,
    (NOTIF_NS, "create-subscription"): op_create_subscription,
    (NCM_NS, "get-schema"): op_get_schema,
}
