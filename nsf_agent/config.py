"""The agent's configuration file (TOML, read with the standard library's tomllib).

Example (`i2nsf-agent init-config` writes one):

    [server]
    host = "0.0.0.0"          # listen address
    port = 830                # NETCONF over SSH (RFC 6242)
    state_dir = "/var/lib/i2nsf-agent"   # host key, running/startup datastores
    max_message_size = 16777216
    hello_timeout = 60
    confirm_timeout = 600     # default for <confirmed-commit> without <confirm-timeout>
    replay_size = 1024        # notifications kept for replay (RFC 5277 startTime)
    # nacm_recovery_users = ["root"]   # RFC 8341 recovery session: NACM does not apply
    # schema_location = "https://nsf.example/yang/{name}@{revision}.yang"  # yang-library

    [yang]
    modules = ["ietf-i2nsf-ikec", "ietf-i2nsf-ike", "ietf-i2nsf-ikeless", "i2nsf-ike-events",
               "i2nsf-sadb"]
    # dir = "/usr/share/i2nsf/yang"
    [yang.features]
    # "ietf-i2nsf-ikec" = ["ikeless-notification"]   # missing module → all features

    [dataplane]
    appliers = ["auto"]       # xfrm if the kernel has ESP, else userspace; add "ike" for
                              # IKE; "null" stores configuration only (SAs are refused)
    # accept_unenforced = true  # accept SAs/IKE config nothing enforces (benchmarks)
    # sfc = "auto"            # SFC data plane: "auto" (tc-BPF fast path for
                              # forwarder/fast-path when the kernel takes it, else
                              # userspace only), "userspace", "bpf" (required)

    [[users]]
    name = "admin"
    password_hash = "scrypt$16384$8$1$..."   # i2nsf-agent hash-password
    authorized_keys = ["ssh-ed25519 AAAA... admin@host"]
    # authorized_keys_file = "/etc/i2nsf/admin.pub"

    [metrics]                 # optional: Prometheus /metrics over HTTP (docs/operations.md)
    host = "127.0.0.1"
    port = 9101
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netconf_core.auth import User
from netconf_core.configfile import ConfigError, check_table, parse_users, read_toml
from netconf_core.framing import DEFAULT_MAX_MESSAGE
from netconf_core.metrics import MetricsConfig
from netconf_core.yang_context import IPSEC_MODULES

DEFAULT_STATE_DIR = Path("/var/lib/i2nsf-agent")
SFC_DATAPLANES = ("auto", "userspace", "bpf")


@dataclass
class AgentConfig:
    host: str = "0.0.0.0"
    port: int = 830
    state_dir: Path = DEFAULT_STATE_DIR
    max_message_size: int = DEFAULT_MAX_MESSAGE
    hello_timeout: float = 60.0
    confirm_timeout: int = 600
    replay_size: int = 1024
    nacm_recovery_users: list[str] = field(default_factory=list)
    schema_location: str | None = None  # None: schemas only by get-schema (no file:// paths)
    yang_dir: Path | None = None
    # The RFC 9061 modules, our IKE event notifications (emitted by the `ike` applier) and
    # our SADB operations RFC 9061 lacks (allocate-spi, served by `xfrm` and `userspace`).
    modules: list[str] = field(
        default_factory=lambda: [*IPSEC_MODULES, "i2nsf-ike-events", "i2nsf-sadb",
                                 "i2nsf-controller-fence"])  # HA controllers (#21)
    features: dict[str, list[str]] = field(default_factory=dict)
    appliers: list[str] = field(default_factory=lambda: ["null"])
    # accept SAs / IKE configuration no applier enforces (store-only agents, benchmarks of
    # the NETCONF layer); otherwise such commits are refused (nsf_agent/enforce.py)
    accept_unenforced: bool = False
    # SFC data plane (issue 19): auto | userspace | bpf, see nsf_agent/appliers/sfc.py
    sfc_dataplane: str = "auto"
    users: list[User] = field(default_factory=list)
    metrics: MetricsConfig | None = None  # [metrics]: Prometheus endpoint (off when absent)


_SERVER_KEYS = {
    "host": str, "port": int, "state_dir": str, "max_message_size": int,
    "hello_timeout": (int, float), "confirm_timeout": int, "replay_size": int,
    "nacm_recovery_users": list, "schema_location": str,
}


def parse_config(data: dict[str, Any], base: Path | None = None) -> AgentConfig:
    """Build an AgentConfig from parsed TOML; relative paths are taken from `base`."""
    base = base or Path.cwd()
    for k in data:
        if k not in ("server", "yang", "dataplane", "users", "metrics"):
            raise ConfigError(f"unknown section [{k}]")
    cfg = AgentConfig()
    srv = data.get("server", {})
    check_table(srv, _SERVER_KEYS, "server")
    for k, v in srv.items():
        setattr(cfg, k, v)
    cfg.state_dir = base / Path(srv.get("state_dir", str(DEFAULT_STATE_DIR)))
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"[server] port {cfg.port} out of range")
    if not all(isinstance(u, str) and u for u in cfg.nacm_recovery_users):
        raise ConfigError("[server] nacm_recovery_users must be a list of user names")
    if cfg.max_message_size < 4096:
        raise ConfigError("[server] max_message_size must be at least 4096")
    yang = data.get("yang", {})
    check_table(yang, {"modules": list, "features": dict, "dir": str}, "yang")
    if "modules" in yang:
        cfg.modules = [str(m) for m in yang["modules"]]
    if "features" in yang:
        cfg.features = {str(k): [str(f) for f in v] for k, v in yang["features"].items()}
    if "dir" in yang:
        cfg.yang_dir = base / yang["dir"]
    dp = data.get("dataplane", {})
    check_table(dp, {"appliers": list, "accept_unenforced": bool, "sfc": str}, "dataplane")
    if "sfc" in dp:
        if dp["sfc"] not in SFC_DATAPLANES:
            raise ConfigError(f"[dataplane] sfc must be one of {', '.join(SFC_DATAPLANES)}")
        cfg.sfc_dataplane = dp["sfc"]
    if "appliers" in dp:
        cfg.appliers = [str(a) for a in dp["appliers"]]
    cfg.accept_unenforced = bool(dp.get("accept_unenforced", False))
    cfg.users = parse_users(data.get("users", []), base)
    if "metrics" in data:
        cfg.metrics = MetricsConfig.parse(data["metrics"])
    return cfg


def load_config(path: Path) -> AgentConfig:
    return parse_config(read_toml(path), path.resolve().parent)



def render_config(cfg: AgentConfig) -> str:
    """TOML text for a configuration (what `init-config` writes)."""

    def s(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "[server]",
        f"host = {s(cfg.host)}",
        f"port = {cfg.port}",
        f"state_dir = {s(str(cfg.state_dir))}",
        f"max_message_size = {cfg.max_message_size}",
        f"hello_timeout = {cfg.hello_timeout}",
        f"confirm_timeout = {cfg.confirm_timeout}",
        f"replay_size = {cfg.replay_size}",
        *(["nacm_recovery_users = [" + ", ".join(s(u) for u in cfg.nacm_recovery_users) + "]"]
          if cfg.nacm_recovery_users else []),
        *([f"schema_location = {s(cfg.schema_location)}"] if cfg.schema_location else []),
        "",
        "[yang]",
        "modules = [" + ", ".join(s(m) for m in cfg.modules) + "]",
        "",
        "[dataplane]",
        "appliers = [" + ", ".join(s(a) for a in cfg.appliers) + "]",
        *(["accept_unenforced = true"] if cfg.accept_unenforced else []),
        *([f"sfc = {s(cfg.sfc_dataplane)}"] if cfg.sfc_dataplane != "auto" else []),
    ]
    for u in cfg.users:
        lines += ["", "[[users]]", f"name = {s(u.name)}"]
        if u.password_hash:
            lines.append(f"password_hash = {s(u.password_hash)}")
        if u.authorized_keys:
            lines.append("authorized_keys = [" + ", ".join(s(k) for k in u.authorized_keys) + "]")
        if u.groups:
            lines.append("groups = [" + ", ".join(s(g) for g in u.groups) + "]")
    return "\n".join(lines) + "\n"
