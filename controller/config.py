"""The controller's configuration file (TOML).

    [server]
    host = "127.0.0.1"        # northbound NETCONF over SSH listen address
    port = 8300
    state_dir = "/var/lib/i2nsf-controller"   # SQLite store, host key, datastores
    # database = "controller.db"               # relative to state_dir
    # nacm_recovery_users = ["root"]           # RFC 8341 recovery session: NACM does not apply
    # schema_location = "https://ctl.example/yang/{name}@{revision}.yang"  # yang-library

    [controller]
    rekey_grace = 2.0         # seconds old inbound SAs stay after the outbound switch
    confirm_timeout = 60      # NSF confirmed-commit timeout (seconds)
    rpc_timeout = 30
    reconnect_min = 0.5       # southbound reconnect backoff (seconds)
    reconnect_max = 30
    retry_max = 30            # failed actions retry with backoff up to this
    status_interval = 5       # seconds between readings of the NSFs' SA state (policy status)

    [restconf]                # optional: RFC 8040 northbound beside NETCONF (docs/restconf.md)
    host = "127.0.0.1"
    port = 8443               # HTTPS; a self-signed certificate is generated in state_dir
    # certificate_file = "/etc/i2nsf/restconf.crt"
    # private_key_file = "/etc/i2nsf/restconf.key"

    [metrics]                 # optional: Prometheus /metrics (docs/operations.md)
    host = "127.0.0.1"
    port = 9100

    [store]                   # optional: PostgreSQL instead of SQLite (docs/ha.md)
    backend = "postgres"      # "sqlite" (default) or "postgres"
    dsn_file = "/etc/i2nsf/controller.dsn"    # libpq DSN/URI, file mode 0600 (holds a password)

    [ha]                      # with backend = "postgres": active/standby leadership
    lease_ttl = 5.0           # seconds; a standby takes over this long after the active died
    advertise = "192.0.2.10:8300"             # named by standbys' refusals

    [[users]]                 # who may use the northbound (same format as the agent's)
    name = "admin"
    password_hash = "scrypt$..."              # i2nsf-agent hash-password
    authorized_keys = ["ssh-ed25519 AAAA..."]

The inventory, profiles and policies are not here: they are the northbound configuration
(`i2nsf-flow-policy`), edited over NETCONF (e.g. with `i2nsf-controller nsf add`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.core.engine import ServiceOptions
from controller.ha import HaConfig
from netconf_core.auth import User
from netconf_core.configfile import ConfigError, check_table, parse_users, read_toml
from netconf_core.metrics import MetricsConfig
from netconf_core.restconf import RestconfConfig


@dataclass
class ControllerConfig:
    host: str = "127.0.0.1"
    port: int = 8300
    state_dir: Path = Path("/var/lib/i2nsf-controller")
    database: Path | None = None
    nacm_recovery_users: list[str] = field(default_factory=list)
    schema_location: str | None = None  # None: schemas only by get-schema (no file:// paths)
    options: ServiceOptions = field(default_factory=ServiceOptions)
    users: list[User] = field(default_factory=list)
    restconf: RestconfConfig | None = None
    metrics: MetricsConfig | None = None
    store_backend: str = "sqlite"
    store_dsn: str | None = None  # postgres: read from [store] dsn_file (never logged)
    ha: HaConfig | None = None  # set (defaults) whenever the store is postgres

    @property
    def db_path(self) -> Path:
        return self.database or self.state_dir / "controller.db"

    @property
    def host_key_path(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"


_SERVER = {"host": str, "port": int, "state_dir": str, "database": str,
           "nacm_recovery_users": list, "schema_location": str}
_CONTROLLER = {"rekey_grace": (int, float), "confirm_timeout": int, "rpc_timeout": (int, float),
               "reconnect_min": (int, float), "reconnect_max": (int, float),
               "retry_max": (int, float), "batch_max": int,
               "status_interval": (int, float)}


def parse_config(data: dict[str, Any], base: Path) -> ControllerConfig:
    for k in data:
        if k not in ("server", "controller", "users", "restconf", "metrics", "store", "ha"):
            raise ConfigError(f"unknown section [{k}]")
    cfg = ControllerConfig()
    srv = data.get("server", {})
    check_table(srv, _SERVER, "server")
    cfg.host = srv.get("host", cfg.host)
    cfg.port = srv.get("port", cfg.port)
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"[server] port {cfg.port} out of range")
    cfg.state_dir = base / srv.get("state_dir", str(cfg.state_dir))
    if "database" in srv:
        cfg.database = cfg.state_dir / srv["database"]
    cfg.nacm_recovery_users = srv.get("nacm_recovery_users", [])
    if not all(isinstance(u, str) and u for u in cfg.nacm_recovery_users):
        raise ConfigError("[server] nacm_recovery_users must be a list of user names")
    cfg.schema_location = srv.get("schema_location")
    ctl = data.get("controller", {})
    check_table(ctl, _CONTROLLER, "controller")
    o = cfg.options
    o.grace = float(ctl.get("rekey_grace", o.grace))
    o.confirm_timeout = int(ctl.get("confirm_timeout", o.confirm_timeout))
    o.rpc_timeout = float(ctl.get("rpc_timeout", o.rpc_timeout))
    o.reconnect_min = float(ctl.get("reconnect_min", o.reconnect_min))
    o.reconnect_max = float(ctl.get("reconnect_max", o.reconnect_max))
    o.retry_max = float(ctl.get("retry_max", o.retry_max))
    o.batch_max = int(ctl.get("batch_max", o.batch_max))
    o.status_interval = float(ctl.get("status_interval", o.status_interval))
    if o.status_interval <= 0:
        raise ConfigError("[controller] status_interval must be > 0")
    cfg.users = parse_users(data.get("users", []), base)
    if "restconf" in data:
        cfg.restconf = RestconfConfig.parse(data["restconf"], base, cfg.state_dir)
    if "metrics" in data:
        cfg.metrics = MetricsConfig.parse(data["metrics"])
    _parse_store(cfg, data.get("store", {}), data.get("ha"), base)
    return cfg


def _parse_store(cfg: ControllerConfig, st: dict[str, Any], ha: dict[str, Any] | None,
                 base: Path) -> None:
    """[store] and [ha] (#21): PostgreSQL shared by active/standby instances."""
    check_table(st, {"backend": str, "dsn_file": str}, "store")
    cfg.store_backend = st.get("backend", "sqlite")
    if cfg.store_backend not in ("sqlite", "postgres"):
        raise ConfigError(f"[store] backend {cfg.store_backend!r}: expected \"sqlite\" or "
                          "\"postgres\"")
    if cfg.store_backend == "sqlite":
        if "dsn_file" in st or ha is not None:
            raise ConfigError("[store] dsn_file and [ha] need backend = \"postgres\" (SQLite "
                              "serves one instance)")
        return
    if "dsn_file" not in st:
        raise ConfigError("[store] backend = \"postgres\" needs dsn_file (a file holding "
                          "the libpq connection string)")
    path = base / st["dsn_file"]
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"[store] dsn_file {path} is readable by group or others "
                              "(it holds the database password): chmod 600 it")
        cfg.store_dsn = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"[store] dsn_file {path}: {exc.strerror}") from None
    if not cfg.store_dsn:
        raise ConfigError(f"[store] dsn_file {path} is empty")
    ha = ha or {}
    check_table(ha, {"lease_ttl": (int, float), "advertise": str, "lease_name": str}, "ha")
    h = HaConfig()
    h.lease_ttl = float(ha.get("lease_ttl", h.lease_ttl))
    if not 0.2 <= h.lease_ttl <= 600:
        raise ConfigError(f"[ha] lease_ttl {h.lease_ttl}: expected 0.2 to 600 seconds")
    h.advertise = ha.get("advertise", f"{cfg.host}:{cfg.port}")
    h.lease_name = ha.get("lease_name", h.lease_name)
    cfg.ha = h


def load_config(path: Path) -> ControllerConfig:
    return parse_config(read_toml(path), path.resolve().parent)
