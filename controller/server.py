"""The controller's northbound: the shared NETCONF server core serving `i2nsf-flow-policy`.

Configuration edits go through the ordinary datastores (candidate, confirmed commit, locks,
libyang validation); `FlowApplier` is the controller's applier: on every commit into running
it runs the checks libyang cannot do (`model.check_config`: unknown NSF, overlapping
selectors, lifetimes, ...) — a failure is the commit's rpc-error and nothing reaches an NSF —
then hands the new desired state to the `FlowService`, which provisions the NSFs
asynchronously. `get` merges the service's operational state (policy status, SAs, sessions).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from lxml import etree

from controller.config import ControllerConfig
from controller.core.inventory import NS as FP_NS
from controller.core.store import SqliteStore
from controller.core.transaction import locked
from controller.core.yang_errors import HumaneSchema
from controller.eastwest import wiring as ew_wiring
from controller.ipsec.checks import check_config, refuse_host_bits
from controller.ipsec.model import FlowConfig, parse_config
from controller.ipsec.service import FlowService
from controller.sfc import wiring as sfc_wiring
from netconf_core.applier import ConfigChange, Notify
from netconf_core.auth import UserDb
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.features import set_features
from netconf_core.metrics import (
    Metrics,
    MetricsHttp,
    flow_collector,
    start_metrics,
    stats_collector,
)
from netconf_core.restconf import RestconfServer, RestconfStateApplier
from netconf_core.server import NetconfServer, ServerConfig
from netconf_core.session import NetconfSession
from netconf_core.ssh import SshConfig, SshTransport
from netconf_core.yang_context import create_context

log = logging.getLogger(__name__)

PROTOCOL_MODULES = ("ietf-netconf", "ietf-netconf-monitoring", "ietf-netconf-notifications")
NETCONF_FEATURES = ("writable-running", "candidate", "confirmed-commit", "rollback-on-error",
                    "validate", "startup", "xpath")
MODULES = (*PROTOCOL_MODULES, "i2nsf-flow-policy", *sfc_wiring.MODULES, *ew_wiring.MODULES)
SERVICE_COUNTERS = {
    "rekeys_done": "Rekeys completed (outbound switched to the new SAs)",
    "installs_done": "Policy installs completed on both NSFs",
    "deletes_done": "Policy removals completed on both NSFs",
    "actions_done": "Provisioning actions completed",
    "resyncs": "NSF resyncs (entries rewritten from the store)",
    "notifications": "Notifications received from NSFs",
    "transactions": "Two-phase transactions started",
    "transactions_failed": "Two-phase transactions that failed (rolled back)",
}
# served when [restconf] is configured: RFC 8040 monitoring (streams, capabilities)
RESTCONF_MODULES = ("ietf-restconf", "ietf-restconf-monitoring", "ietf-yang-patch")
Q = f"{{{FP_NS}}}"


class FlowApplier:
    """Committed i2nsf-flow-policy configuration → the flow service."""

    name = "flow-policy"

    def __init__(self, service: FlowService) -> None:
        self.service = service

    def bind(self, notify: Notify) -> None:
        self.service.notify = notify

    def reconcile(self, running: etree._Element) -> None:
        cfg = parse_config(running)
        try:
            check_config(cfg)
        except RpcError as exc:  # accepted before; keep serving rather than refuse to start
            log.error("stored configuration fails a check (%s); applying it anyway",
                      exc.message)
        self.service.apply_config(cfg)

    def validate(self, change: ConfigChange) -> None:
        cfg = parse_config(change.new)
        check_config(cfg)
        self._check_nsf_removals(cfg)
        change.scratch["flow.cfg"] = cfg  # prepare gets the same change: parse once

    def _check_nsf_removals(self, cfg: FlowConfig) -> None:
        """An NSF may leave the inventory only when no policy still has entries on it that
        cannot be removed: one being removed (deleting), or one this change removes while
        the NSF is not connected. Otherwise the removal would retry forever against an
        NSF nobody manages any more (and show as a ghost in the NSF list)."""
        svc = self.service
        gone = set(svc.cfg.nsfs) - set(cfg.nsfs)
        if not gone:
            return
        removed_now = set(svc.cfg.all_policies()) - set(cfg.all_policies())
        for nsf in sorted(gone):
            sess = svc.south.sessions.get(nsf)
            connected = sess is not None and sess.state == "connected"
            busy = sorted(p for p in svc.deleting if nsf in svc._policy_nsfs(p))
            if not connected:
                busy += sorted(p for p in removed_now
                               if p not in busy and nsf in svc._policy_nsfs(p))
            if busy:
                why = "" if connected else (
                    f"; it is not connected ({sess.state if sess else 'no session'}"
                    + (f": {sess.last_error}" if sess and sess.last_error else "") + ")")
                raise RpcError(
                    "application", "in-use",
                    f"NSF {nsf} still holds entries of {', '.join(busy)}, which the "
                    f"controller must remove first{why}; remove the NSF once they are gone",
                    path=f"/i2nsf-flow-policy:flow-protection/nsfs/nsf[name='{nsf}']",
                    info={"bad-element": "nsf"})

    def prepare(self, change: ConfigChange) -> None:
        if "flow.cfg" not in change.scratch:
            change.scratch["flow.cfg"] = parse_config(change.new)

    def apply(self, change: ConfigChange) -> None:
        self.service.apply_config(change.scratch["flow.cfg"])  # type: ignore[arg-type]

    def abort(self, change: ConfigChange) -> None:
        self.service.apply_config(parse_config(change.old))

    def state(self, running: etree._Element) -> list[etree._Element]:
        return self.service.state()

    def close(self) -> None:
        return None


def _arg(op: etree._Element, name: str) -> str:
    el = op.find(Q + name)
    if el is None or not (el.text or "").strip():
        raise RpcError("protocol", "missing-element", f"{op.tag.rpartition('}')[2]} needs "
                       f"<{name}>", info={"bad-element": name})
    for child in op:
        if isinstance(child.tag, str) and child.tag != Q + name:
            raise RpcError("protocol", "unknown-element",
                           f"unexpected parameter {child.tag.rpartition('}')[2]!r}",
                           info={"bad-element": child.tag.rpartition("}")[2]})
    return (el.text or "").strip()


def _refusing_host_bits(base: Any) -> Any:
    """An edit-config/copy-config handler that first refuses prefixes with host bits in the
    `<config>` as sent (#13.5: they were silently truncated)."""

    def handler(srv: Any, sess: Any, op: etree._Element) -> Any:
        config = next(op.iter(f"{{{NC_NS}}}config"), None)
        refuse_host_bits(config)
        return base(srv, sess, op)

    return handler


class ControllerServer:
    """Store + flow service + NETCONF server + SSH; `start`/`stop` on a running loop."""

    def __init__(self, config: ControllerConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.ha: Any = None  # controller.ha.HaControl with a PostgreSQL store (#21)
        if config.store_backend == "postgres":
            from controller.core.store_pg import PgStore
            from controller.ha import HaControl

            assert config.store_dsn is not None and config.ha is not None
            self.store: Any = PgStore(config.store_dsn)
            self.ha = HaControl(config.ha, config.store_dsn, self.store, self._activate,
                                self._follow_shared_config)
        else:
            self.store = SqliteStore(config.db_path)
        self.service = FlowService(self.store, config.options, state_dir=config.state_dir)
        self.server: NetconfServer | None = None
        self.ssh: SshTransport | None = None
        self.datastores: Datastores | None = None
        self.restconf: RestconfServer | None = None
        self.metrics: Metrics | None = None
        self._metrics_http: MetricsHttp | None = None

    async def start(self) -> None:
        rc_cfg = self.config.restconf
        ctx = create_context((*MODULES, *(RESTCONF_MODULES if rc_cfg else ())))
        set_features(ctx, "ietf-netconf", list(NETCONF_FEATURES))
        schema = HumaneSchema(ctx)  # libyang errors rephrased for operators (#13.5)
        nc_dir = self.config.state_dir / "netconf"
        nc_dir.mkdir(exist_ok=True)
        server = NetconfServer(schema, ServerConfig(
            state_dir=nc_dir,
            no_secrets_users=frozenset(u.name for u in self.config.users if not u.read_secrets),
            nacm_recovery_users=frozenset(self.config.nacm_recovery_users),
            user_groups={u.name: frozenset(u.groups) for u in self.config.users},
            schema_location=self.config.schema_location,
        ))
        server.bind_loop(asyncio.get_running_loop())
        for op in ("edit-config", "copy-config"):  # before libyang canonicalizes prefixes
            server.handlers[(NC_NS, op)] = _refusing_host_bits(server.handlers[(NC_NS, op)])
        server.register_rpc(FP_NS, "rekey-policy", self._rekey_policy)
        server.register_rpc(FP_NS, "resync-nsf", self._resync_nsf)
        server.register_rpc(FP_NS, "rotate-ca", self._rotate_ca)
        server.register_rpc(FP_NS, "rotate-nsf-certificate", self._rotate_nsf_certificate)
        server.register_rpc(FP_NS, "export-road-warrior", self._export_road_warrior)
        applier = FlowApplier(self.service)
        applier.bind(server.notify)
        self.sfc, sfc_applier = sfc_wiring.attach(self.service, server, locked)
        sfc_applier.bind(server.notify)
        self.eastwest, ew_applier = ew_wiring.attach(self.service, server, self.config.state_dir)
        ew_applier.bind(server.notify)
        if self.ha is None:
            self.service.load()
            self.service.start()
            self.sfc.start()
            self.eastwest.start()
        appliers: list[Any] = [applier, sfc_applier, ew_applier]
        if rc_cfg is not None:
            self.restconf = RestconfServer(server, UserDb(self.config.users), rc_cfg)
            appliers.append(RestconfStateApplier(self.restconf.base_url,
                                                 lambda: server.bus.log_created))
        if self.ha is not None:  # a standby until elected: see controller/ha.py
            appliers.append(self.ha.publisher)
            self.ha.guard_handlers(server.handlers)
            self.ha.install_shared_config(nc_dir)
        self._schema, self._appliers, self._nc_dir = schema, appliers, nc_dir
        self.datastores = Datastores(schema, appliers, nc_dir)
        server.attach(self.datastores)
        if self.ha is None:
            self.datastores.reconcile()
        self.server = server
        self.ssh = SshTransport(server, UserDb(self.config.users), SshConfig(
            host=self.config.host, port=self.config.port,
            host_key_path=self.config.host_key_path))
        await self.ssh.start()
        if self.restconf is not None:
            await self.restconf.start()
        if self.config.metrics is not None:
            self.metrics, self._metrics_http = await start_metrics(
                "i2nsf_controller", self.config.metrics, lambda: self.server, flow_collector)
            self.metrics.register(stats_collector("i2nsf_controller", lambda: self.service.stats,
                                                  SERVICE_COUNTERS))
            self.service.metrics = self.metrics
        if self.ha is not None:
            self.ha.start()
        log.info("controller ready: NETCONF on %s port %d, store %s", self.config.host,
                 self.port, self.store.path)

    def _rebuild_datastores(self) -> bool:
        """Datastores from the configuration the active published (HA); False: none yet.
        Building them runs no applier: nothing reaches NSFs or the store."""
        assert self.server is not None
        text = self.ha.shared_config()
        if text is None:
            return False
        if self.datastores is not None:
            self.datastores.close()
        self.ha.write_shared_config(self._nc_dir, text)
        self.datastores = Datastores(self._schema, self._appliers, self._nc_dir)
        self.server.attach(self.datastores)
        return True

    def _follow_shared_config(self) -> None:
        """Standby: the active published another configuration; serve it."""
        if self.server is not None:
            with self.server.ds_lock:
                self._rebuild_datastores()

    async def _activate(self, epoch: int) -> None:
        """Elected (controller/ha.py): take the published configuration and start the
        services as a restarted controller would; every NSF transaction carries `epoch`."""
        assert self.server is not None
        self.service.ha_epoch = self.ha.current_epoch  # SFC transacts through it too
        with self.server.ds_lock:
            self._rebuild_datastores()
            self.service.load()
            self.service.start()
            self.sfc.start()
            self.eastwest.start()
            self.datastores.reconcile()

    @property
    def port(self) -> int:
        assert self.ssh is not None
        return self.ssh.port

    async def stop(self) -> None:
        if self.ha is not None:
            await self.ha.stop()
        if self._metrics_http is not None:
            await self._metrics_http.stop()
        if self.restconf is not None:
            await self.restconf.stop()
        if self.ssh is not None:
            await self.ssh.stop()
        if getattr(self, "sfc", None) is not None:
            await self.sfc.stop()
        if getattr(self, "eastwest", None) is not None:
            await self.eastwest.stop()
        await self.service.stop()
        self.store.close()

    # ---- RPCs of i2nsf-flow-policy ----------------------------------------------------------

    def _rekey_policy(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element
                      ) -> list[etree._Element]:
        policy = _arg(op, "policy")
        try:
            gen = self.service.request_rekey(policy)
        except KeyError:
            raise RpcError("application", "invalid-value", f"no policy {policy!r}",
                           info={"bad-element": "policy"}) from None
        except ValueError as exc:
            raise RpcError("application", "operation-failed", str(exc)) from None
        out = etree.Element(Q + "generation", nsmap={None: FP_NS})
        out.text = str(gen)
        return [out]

    def _resync_nsf(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element
                    ) -> None:
        nsf = _arg(op, "nsf")
        s = self.service.south.sessions.get(nsf)
        if s is None:
            raise RpcError("application", "invalid-value", f"no NSF {nsf!r} in the inventory",
                           info={"bad-element": "nsf"})
        if s.state != "connected":
            s.kick()  # reconnecting resyncs anyway
            raise RpcError("application", "resource-denied",
                           f"NSF {nsf} is not connected ({s.state}: "
                           f"{s.last_error or 'no session'}); reconnecting")

        async def run() -> None:
            try:
                await self.service.resync(nsf, force=True)
            except Exception as exc:
                log.warning("NSF %s: resync failed: %s", nsf, exc)

        self.service._spawn(run())
        return None

    # ---- IKE case: credentials ------------------------------------------------------------

    def _serial(self, serial: int) -> list[etree._Element]:
        out = etree.Element(Q + "serial", nsmap={None: FP_NS})
        out.text = f"{serial:x}"
        return [out]

    def _rotate_ca(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element
                   ) -> list[etree._Element]:
        return self._serial(self.service.ike.rotate_ca().serial_number)

    def _rotate_nsf_certificate(self, srv: NetconfServer, sess: NetconfSession,
                                op: etree._Element) -> list[etree._Element]:
        nsf = _arg(op, "nsf")
        try:
            cert = self.service.ike.rotate_nsf(nsf)
        except KeyError:
            raise RpcError("application", "invalid-value", f"no NSF {nsf!r} in the inventory",
                           info={"bad-element": "nsf"}) from None
        except ValueError as exc:
            raise RpcError("application", "operation-failed", str(exc)) from None
        return self._serial(cert.serial_number)

    def _export_road_warrior(self, srv: NetconfServer, sess: NetconfSession,
                             op: etree._Element) -> list[etree._Element]:
        name = _arg(op, "name")
        try:
            bundle = self.service.ike.road_warrior_bundle(name)
        except KeyError:
            raise RpcError("application", "invalid-value", f"no road warrior {name!r}",
                           info={"bad-element": "name"}) from None
        log.info("road warrior %s: credential bundle exported to %s", name,
                 getattr(sess, "username", "?"))
        out = []
        for k, v in bundle.items():
            e = etree.Element(Q + k, nsmap={None: FP_NS})
            e.text = v
            out.append(e)
        return out
