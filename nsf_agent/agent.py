"""Wiring of one NSF agent: YANG context → NETCONF server → appliers → datastores → SSH."""

from __future__ import annotations

import asyncio
import logging
import os

from netconf_core.applier import Applier
from netconf_core.auth import UserDb
from netconf_core.datastore import Datastores
from netconf_core.features import set_features
from netconf_core.metrics import Metrics, MetricsHttp, sa_collector, start_metrics
from netconf_core.schema import YangSchema
from netconf_core.server import NetconfServer, ServerConfig
from netconf_core.ssh import SshConfig, SshTransport
from netconf_core.yang_context import create_context
from nsf_agent import dataplane, fence, sadb
from nsf_agent.config import AgentConfig
from nsf_agent.enforce import EnforcementGuard
from nsf_agent.restart import BootRecord, StatusApplier

log = logging.getLogger(__name__)

# What the NETCONF layer itself needs from YANG: ietf-netconf (with exactly the features
# we advertise as capabilities), monitoring (RFC 6022) and base notifications (RFC 6470).
PROTOCOL_MODULES = ("ietf-netconf", "ietf-netconf-monitoring", "ietf-netconf-notifications")
NETCONF_FEATURES = (
    "writable-running", "candidate", "confirmed-commit", "rollback-on-error",
    "validate", "startup", "xpath",
)


class Agent:
    """Start/stop an agent from an AgentConfig (used by the CLI and by tests)."""

    def __init__(self, config: AgentConfig, appliers: list[Applier] | None = None) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.appliers = appliers if appliers is not None else [
            dataplane.create(name, config) for name in config.appliers
        ]
        # Appliers chosen by name in the configuration: refuse what none of them enforces
        # (issue 13.4). Callers that pass appliers (tests, embedding) choose for themselves.
        self.guard = (EnforcementGuard(self.appliers)
                      if appliers is None and not config.accept_unenforced else None)
        self.server: NetconfServer | None = None
        self.ssh: SshTransport | None = None
        self.datastores: Datastores | None = None
        self.boot: BootRecord | None = None
        self.status: StatusApplier | None = None
        self.metrics: Metrics | None = None
        self._metrics_http: MetricsHttp | None = None

    async def start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cfg.state_dir, 0o700)
        features: dict[str, list[str]] = {"ietf-netconf": list(NETCONF_FEATURES)}
        features.update(cfg.features)
        modules = [*PROTOCOL_MODULES, *(m for m in cfg.modules if m not in PROTOCOL_MODULES)]
        ctx = create_context(modules, {}, cfg.yang_dir)  # every feature on, then narrow:
        for mod_name, feats in features.items():
            set_features(ctx, mod_name, feats)
        schema = YangSchema(ctx)
        server = NetconfServer(
            schema,
            ServerConfig(
                max_message_size=cfg.max_message_size,
                hello_timeout=cfg.hello_timeout,
                confirm_timeout=cfg.confirm_timeout,
                replay_size=cfg.replay_size,
                state_dir=cfg.state_dir,
                no_secrets_users=frozenset(u.name for u in cfg.users if not u.read_secrets),
                nacm_recovery_users=frozenset(cfg.nacm_recovery_users),
                user_groups={u.name: frozenset(u.groups) for u in cfg.users},
                schema_location=cfg.schema_location,
            ),
        )
        server.bind_loop(asyncio.get_running_loop())
        self._register_rpcs(server, schema)
        # How the previous run ended; marked unclean until stop() (issue 13: a controller
        # must learn of a crash and of the SAs it cost, see nsf_agent/restart.py)
        self.boot = BootRecord(cfg.state_dir)
        appliers = ([self.guard] if self.guard is not None else []) + list(self.appliers)
        for a in self.appliers:  # i2nsf-sadb state only where clients can make sense of it
            if hasattr(a, "sadb_state"):
                a.sadb_state = schema.namespace_known(sadb.NS)
        if schema.namespace_known(fence.NS):  # controller HA fencing (#21)
            appliers.insert(0, fence.FenceGuard())  # type: ignore[arg-type]
        if schema.namespace_known(sadb.NS):
            self.status = StatusApplier(self.boot, self.appliers)
            appliers.append(self.status)  # type: ignore[arg-type]
        for a in appliers:
            a.bind(server.notify)
        self.datastores = Datastores(schema, appliers, cfg.state_dir)
        server.attach(self.datastores)
        self.datastores.reconcile()
        if self.status is not None and (self.boot.info.previous_stop != "first-start"
                                        or self.status.rekey_required()):
            # (kept in the replay buffer; the controller also reads nsf-status on connect)
            server.notify(self.status.notification())
        self.server = server
        self.ssh = SshTransport(
            server,
            UserDb(cfg.users),
            SshConfig(
                host=cfg.host, port=cfg.port,
                host_key_path=cfg.state_dir / "ssh_host_ed25519_key",
            ),
        )
        await self.ssh.start()
        if cfg.metrics is not None:
            self.metrics, self._metrics_http = await start_metrics(
                "i2nsf_agent", cfg.metrics, lambda: self.server, sa_collector)
        log.info(
            "agent ready: %d modules, appliers %s, state in %s",
            len(schema.module_list()), ",".join(a.name for a in self.appliers), cfg.state_dir,
        )

    def _register_rpcs(self, server: NetconfServer, schema: YangSchema) -> None:
        """Serve the RPCs appliers implement (`rpcs()` → {(namespace, name): handler}), e.g.
        i2nsf-sadb:allocate-spi; only those whose module is loaded, so that the schema the
        clients see and the operations served agree."""
        for a in self.appliers:
            rpcs = getattr(a, "rpcs", None)
            if not callable(rpcs):
                continue
            for (ns, name), handler in rpcs().items():
                if not schema.namespace_known(ns):
                    log.info("applier %s: rpc %s not served, its module (%s) is not loaded",
                             a.name, name, ns)
                    continue
                if (ns, name) in server.handlers:
                    log.warning("applier %s: rpc %s was already served by another applier; "
                                "%s now serves it", a.name, name, a.name)
                server.register_rpc(ns, name, handler)

    @property
    def port(self) -> int:
        assert self.ssh is not None
        return self.ssh.port

    async def stop(self) -> None:
        if self._metrics_http is not None:
            await self._metrics_http.stop()
        if self.ssh is not None:
            await self.ssh.stop()
        for a in self.appliers:
            try:
                a.close()
            except Exception:
                log.exception("applier %s failed to close", a.name)
        if self.datastores is not None:
            self.datastores.close()
        if self.boot is not None:
            self.boot.clean_stop()
