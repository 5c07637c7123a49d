"""The NETCONF server: shared state of all sessions (datastores, locks, confirmed commit,
notification stream, monitoring) and the dispatch of operations.

Everything runs on one asyncio loop; the datastore calls are synchronous and fast and are made
under `ds_lock`, so two operations never interleave inside the datastores. `notify` may be
called from any thread (kernel event listeners).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from netconf_core import capabilities as caps
from netconf_core import nacm, nmda, with_defaults
from netconf_core.confirmed import DEFAULT_CONFIRM_TIMEOUT, ConfirmedCommit
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.events import NCN_NS, ConfigChangeTracker, nc_notification
from netconf_core.framing import DEFAULT_MAX_MESSAGE
from netconf_core.locks import LockManager
from netconf_core.monitoring import ServerStats, netconf_state, yang_library
from netconf_core.notifications import NotificationBus, in_loop
from netconf_core.params import local, ns_of
from netconf_core.rpc import HANDLERS, Handler
from netconf_core.schema import YangSchema
from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Protocol settings (the SSH side has its own in `ssh.SshConfig`)."""

    max_message_size: int = DEFAULT_MAX_MESSAGE
    hello_timeout: float = 60.0
    confirm_timeout: int = DEFAULT_CONFIRM_TIMEOUT
    replay_size: int = 1024
    state_dir: Path | None = None
    # Users who may neither see nor write nacm:default-deny-all nodes (key material).
    no_secrets_users: frozenset[str] = frozenset()
    # URL template ("{name}", "{revision}") announced as yang-library `location`; None:
    # no location, schemas come from get-schema only (as from Netopeer2)
    schema_location: str | None = None
    # RFC 8341 recovery session: these users bypass NACM (as root does with Netopeer2)
    nacm_recovery_users: frozenset[str] = frozenset()
    # RFC 8341 external groups per user (from the user database: `[[users]] groups`)
    user_groups: dict[str, frozenset[str]] = field(default_factory=dict)


# RFC 5277's modules: we announce :notification, so the yang-library must list them
# (libnetconf2 clients, netopeer2-cli, fail on a server that announces one without them).
NOTIFICATION_MODULES = ("notifications", "nc-notifications")


class NetconfServer:
    def __init__(self, schema: YangSchema, config: ServerConfig | None = None) -> None:
        self.schema = schema
        schema.load_modules((*NOTIFICATION_MODULES, with_defaults.MODULE, nacm.MODULE,
                             *nmda.MODULES))
        self.config = config or ServerConfig()
        self.nacm = nacm.Nacm(schema, self.config.nacm_recovery_users,
                              self.config.user_groups)
        self._datastores: Datastores | None = None
        self.ds_lock = threading.RLock()
        self.locks = LockManager()
        self.bus = NotificationBus(self.config.replay_size)
        self.confirmed = ConfirmedCommit(self.config.state_dir, self._confirm_timeout_expired)
        self.stats = ServerStats()
        self.sessions: dict[int, NetconfSession] = {}
        self._ids = itertools.count(1)
        self.handlers: dict[tuple[str, str], Handler] = dict(HANDLERS)
        self.nmda = schema.namespace_known(nmda.NMDA_NS)
        if self.nmda:
            self.handlers.update(nmda.HANDLERS)
        self._secret_rpcs: set[tuple[str, str]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changes = ConfigChangeTracker(self)
        self.capabilities = self._build_capabilities()
        self._yanglib: list[bytes] | None = None

    # -- wiring --------------------------------------------------------------------------------

    @property
    def datastores(self) -> Datastores:
        if self._datastores is None:
            raise RpcError("application", "resource-denied", "datastores are not ready yet")
        return self._datastores

    def attach(self, datastores: Datastores) -> None:
        """Use these datastores; first undo a confirmed commit interrupted by a restart."""
        self._datastores = datastores
        # netconf-config-change needs the diff of every change: keep the old trees for it
        datastores.keep_diff_trees = lambda: self.bus.wants(NCN_NS, "netconf-config-change")
        snapshot = self.confirmed.leftover_snapshot()
        if snapshot is not None:
            log.warning("restoring running from an unconfirmed commit before the restart")
            with self.ds_lock:
                datastores.restore_running(snapshot)
            self.confirmed.clear_leftover()

    def register_rpc(self, namespace: str, name: str, handler: Handler) -> None:
        """Serve a YANG-defined rpc of one of our modules (e.g. the controller's). An rpc
        marked nacm:default-deny-all (it hands out secrets) is refused to users without
        `read_secrets`."""
        self.handlers[(namespace, name)] = handler
        if self.schema.rpc_denies_all(namespace, name):
            self._secret_rpcs.add((namespace, name))

    def _build_capabilities(self) -> list[str]:
        module_caps = [
            caps.module_capability(m.namespace, m.name, m.revision, m.features)
            for m in self.schema.module_list()
            if m.implemented
        ]
        self.module_set_id = caps.module_set_id(module_caps)
        protocol = list(caps.PROTOCOL_CAPABILITIES)
        if self.schema.namespace_known(with_defaults.WD_NS):
            protocol.append(with_defaults.CAPABILITY)
        if self.schema.namespace_known(nmda.NMDA_NS):
            # RFC 8526 section 2: NMDA servers announce yang-library 1.1
            protocol.append(caps.yang_library_11_capability(self.module_set_id))
        return [
            *protocol,
            caps.yang_library_capability(self.module_set_id),
            *module_caps,
        ]

    def hello_message(self, session_id: int) -> bytes:
        """Our `<hello>`, always in 1.0 framing (RFC 6242 section 4.1)."""
        q = f"{{{NC_NS}}}"
        hello = etree.Element(q + "hello", nsmap={None: NC_NS})
        cl = etree.SubElement(hello, q + "capabilities")
        for c in self.capabilities:
            etree.SubElement(cl, q + "capability").text = c
        etree.SubElement(hello, q + "session-id").text = str(session_id)
        return etree.tostring(hello, xml_declaration=True, encoding="UTF-8") + b"]]>]]>"

    # -- sessions ------------------------------------------------------------------------------

    def new_session(self, username: str, source_host: str, write, close) -> NetconfSession:  # type: ignore[no-untyped-def]
        sid = next(self._ids)
        sess = NetconfSession(self, sid, username, source_host, write, close)
        self.sessions[sid] = sess
        self.stats.in_sessions += 1
        return sess

    def session_opened(self, sess: NetconfSession) -> None:
        self.emit(nc_notification("netconf-session-start", _user_info(sess)))

    def session_ended(self, sess: NetconfSession, reason: str, killed_by: int | None) -> None:
        """Release everything the session held (locks, subscription, confirmed commit)."""
        if self.sessions.pop(sess.id, None) is None:
            return
        if reason in ("dropped", "timeout", "bad-hello"):
            self.stats.dropped_sessions += 1
        self.bus.unsubscribe(sess.id)
        released = self.locks.release_all(sess.id)
        if "candidate" in released and self._datastores is not None:
            # Changes abandoned by the session that held the candidate lock are discarded.
            with self.ds_lock:
                self._datastores.discard_changes()
        if self.confirmed.owned_by(sess.id):
            log.warning("session %d ended with its confirmed commit unconfirmed", sess.id)
            self.rollback_confirmed("cancel", None)
        log.info("session %d ended (%s)", sess.id, reason)
        if sess.opened:  # session-end only pairs with a session-start
            fields = _user_info(sess)
            if killed_by is not None:
                fields.append(("killed-by", str(killed_by)))
            fields.append(("termination-reason", reason))
            self.emit(nc_notification("netconf-session-end", fields))

    # -- dispatch ------------------------------------------------------------------------------

    def dispatch(self, sess: NetconfSession, rpc: etree._Element
                 ) -> list[etree._Element | bytes] | None:
        ops = [c for c in rpc if isinstance(c.tag, str)]
        if not ops:
            raise RpcError("protocol", "missing-element", "<rpc> names no operation",
                           info={"bad-element": "rpc"})
        if len(ops) > 1:
            raise RpcError("protocol", "bad-element", "<rpc> holds more than one operation",
                           info={"bad-element": local(ops[1].tag)})
        op = ops[0]
        ns, name = ns_of(op.tag), local(op.tag)
        handler = self.handlers.get((ns, name))
        if handler is None:
            if ns != NC_NS and not self.schema.namespace_known(ns) and not any(
                k[0] == ns for k in self.handlers
            ):
                raise RpcError("protocol", "unknown-namespace",
                               f"operation {name!r} is in an unknown namespace {ns!r}",
                               info={"bad-element": name, "bad-namespace": ns})
            raise RpcError("protocol", "operation-not-supported",
                           f"operation {name!r} is not supported",
                           info={"bad-element": name})
        rules = self.nacm_rules(sess)
        if rules is not None and not self.nacm.may_exec(rules, sess.username, ns, name):
            self.nacm.counters.denied_operations += 1
            raise RpcError("protocol", "access-denied",
                           f'Executing the operation is denied because "{sess.username}" '
                           "NACM authorization failed.",  # Netopeer2's words
                           path=f"/{_module_of(self.schema, ns)}:{name}",
                           info={"bad-element": name})
        if (ns, name) in self._secret_rpcs and sess.username in self.config.no_secrets_users:
            raise RpcError("application", "access-denied",
                           f"user {sess.username!r} may not call {name!r} (it returns secrets)",
                           info={"bad-element": name})
        return handler(self, sess, op)

    def nacm_rules(self, sess: NetconfSession) -> nacm.Config | None:
        """The NACM configuration that applies to this session (None: no access control)."""
        if self._datastores is None:
            return None
        with self.ds_lock:
            return self.nacm.applies(self._datastores.running_tree(), sess.username)

    # -- confirmed commit ----------------------------------------------------------------------

    def _confirm_timeout_expired(self) -> None:
        log.warning("confirmed commit timed out; restoring the previous running configuration")
        self.rollback_confirmed("timeout", None)

    def rollback_confirmed(self, event: str, sess: NetconfSession | None) -> None:
        """Restore running from the confirmed commit's snapshot (cancel, timeout, session
        loss); the candidate is reset to the restored running."""
        pending = self.confirmed.pending
        if pending is None:
            return
        with self.ds_lock, self.config_change(sess, "running"):
            self.datastores.restore_running(pending.snapshot)
        self.confirmed.finish()
        self.emit_confirmed_commit(sess, event, None)

    def emit_confirmed_commit(
        self, sess: NetconfSession | None, event: str, timeout: int | None
    ) -> None:
        fields: list[tuple[str, str]] = _user_info(sess) if sess is not None else []
        fields.append(("confirm-event", event))
        if timeout is not None:
            fields.append(("timeout", str(timeout)))
        self.emit(nc_notification("netconf-confirmed-commit", fields))

    def config_change(
        self, sess: NetconfSession | None, target: str
    ) -> contextlib.AbstractContextManager[None]:
        """Context for a datastore change: emits netconf-config-change for running when
        some subscription can receive it (the diff costs, so only then)."""
        if target != "running" or not self.bus.wants(NCN_NS, "netconf-config-change"):
            return contextlib.nullcontext()
        return self._changes.track(sess)

    # -- notifications -------------------------------------------------------------------------

    def notify(self, elem: etree._Element) -> None:
        """Emit a notification defined in our YANG modules (the applier API). Safe to call from
        any thread; an invalid notification is logged and dropped, never sent."""
        loop = self.loop
        if loop is not None and loop.is_running() and not in_loop(loop):
            loop.call_soon_threadsafe(self._notify_checked, elem)
        else:
            self._notify_checked(elem)

    def _notify_checked(self, elem: etree._Element) -> None:
        try:
            self.schema.validate_notification(elem)
        except RpcError as err:
            log.error("dropping invalid notification %s: %s", elem.tag, err.message)
            return
        self.bus.publish(elem)

    def emit(self, elem: etree._Element | None) -> None:
        """Server-internal events (RFC 6470), validated like applier ones when the module
        is loaded."""
        if elem is None or not self.schema.namespace_known(ns_of(elem.tag)):
            return
        self._notify_checked(elem)

    # -- state for <get> -------------------------------------------------------------------------

    def netconf_state(self) -> etree._Element:
        return netconf_state(
            self.capabilities,
            self.locks,
            self.schema.module_list(),
            [s.info for s in self.sessions.values() if s.state == "open"],
            self.stats,
        )

    def yang_library(self) -> list[etree._Element]:
        if self._yanglib is None:
            self._yanglib = [
                etree.tostring(e) for e in yang_library(
                    self.schema.ctx, self.module_set_id, self.config.schema_location,
                    ("running", "candidate", "startup", "intended", "operational")
                    if self.nmda else ("running", "candidate", "startup"))
            ]
        return [etree.fromstring(b) for b in self._yanglib]

    # -- lifecycle -------------------------------------------------------------------------------

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def close_all(self) -> None:
        for sess in list(self.sessions.values()):
            sess.close("other")



def _module_of(schema: YangSchema, ns: str) -> str:
    mod = schema._modules_by_ns.get(ns)
    return mod.name() if mod is not None else "ietf-netconf"


def _user_info(sess: NetconfSession | None) -> list[tuple[str, str]]:
    if sess is None:
        return []
    out = [("username", sess.username), ("session-id", str(sess.id))]
    if sess.source_host:
        out.append(("source-host", sess.source_host))
    return out
