"""The DMS's configuration file (TOML).

    [server]
    host = "0.0.0.0"
    port = 8300
    state_dir = "/var/lib/i2nsf-dms"     # host key, journal, instance files, sockets

    [dms]
    name = "dms-1"                       # as registered with the Catalog Manager
    host = "nsf-a"                       # the NSF agent whose SFC proxy reaches the instances
    host_netns = "agent"                 # namespace of the host-side links (absent: the DMS's)
    locator = "192.0.2.1"                # the proxy's address SFFs send NSH/GRE to
    netns_prefix = "i2nsf-sf-"           # instance namespaces are <prefix><instance name>
    max_instances = 16
    load_interval = 5.0                  # seconds between load reports
    auto_restart = false                 # restart a failed instance (at most 3 times a minute)
    start_timeout = 20.0                 # seconds a function may take to load its rules

    [dms.capacity]                       # packets/s one instance of a type is rated for
    ids = 30000

    [controller]                         # absent: no registration
    address = "192.0.2.100"
    port = 830
    username = "dms"
    password_file = "/etc/i2nsf/dms.pw"  # or private_key_file
    host_key = "ssh-ed25519 AAAA..."     # the controller's host key (verified, required)

    [[users]]                            # who may use the DMS's NETCONF server
    name = "admin"
    password_hash = "scrypt$..."
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netconf_core.auth import User
from netconf_core.configfile import ConfigError, check_table, parse_users, read_toml
from nsf_agent.functions.rules import SF_TYPES

DEFAULT_STATE_DIR = Path("/var/lib/i2nsf-dms")
# Rated packets/s per instance (docs/security-functions.md has what was measured).
DEFAULT_CAPACITY = {"firewall": 300000, "anti-spoofing": 300000, "ddos": 300000,
                    "ids": 20000, "ips": 20000, "dpi": 20000, "forward": 300000}


@dataclass
class ControllerLink:
    address: str
    port: int = 830
    username: str = "dms"
    password: str | None = None
    password_file: Path | None = None
    private_key_file: Path | None = None
    host_key: str = ""  # "type base64" (as in known_hosts without the host name)

    def read_password(self) -> str | None:
        if self.password is not None:
            return self.password
        if self.password_file is not None:
            try:
                return self.password_file.read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise ConfigError(f"cannot read {self.password_file}: {exc}") from exc
        return None


@dataclass
class DmsConfig:
    host: str = "0.0.0.0"
    port: int = 8300
    state_dir: Path = DEFAULT_STATE_DIR
    name: str = "dms"
    agent_host: str | None = None
    host_netns: str | None = None
    locator: str = "127.0.0.1"
    netns_prefix: str = "i2nsf-sf-"
    max_instances: int = 16
    load_interval: float = 5.0
    capacity: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CAPACITY))
    controller: ControllerLink | None = None
    users: list[User] = field(default_factory=list)
    ready_timeout: float = 20.0  # seconds a new process may take to install its rules
    auto_restart: bool = False
    restart_limit: int = 3  # automatic restarts of one instance per minute


def parse_config(data: dict[str, Any], base: Path | None = None) -> DmsConfig:
    base = base or Path.cwd()
    for k in data:
        if k not in ("server", "dms", "controller", "users"):
            raise ConfigError(f"unknown section [{k}]")
    cfg = DmsConfig()
    srv = data.get("server", {})
    check_table(srv, {"host": str, "port": int, "state_dir": str}, "server")
    cfg.host = srv.get("host", cfg.host)
    cfg.port = srv.get("port", cfg.port)
    cfg.state_dir = base / srv.get("state_dir", str(DEFAULT_STATE_DIR))
    d = data.get("dms", {})
    check_table(d, {"name": str, "host": str, "host_netns": str, "locator": str,
                    "netns_prefix": str, "max_instances": int,
                    "load_interval": (int, float), "capacity": dict, "auto_restart": bool,
                    "start_timeout": (int, float)},
                "dms")
    cfg.name = d.get("name", cfg.name)
    cfg.agent_host = d.get("host")
    cfg.host_netns = d.get("host_netns")
    cfg.locator = d.get("locator", cfg.locator)
    cfg.netns_prefix = d.get("netns_prefix", cfg.netns_prefix)
    cfg.max_instances = d.get("max_instances", cfg.max_instances)
    cfg.load_interval = float(d.get("load_interval", cfg.load_interval))
    cfg.auto_restart = d.get("auto_restart", cfg.auto_restart)
    cfg.ready_timeout = float(d.get("start_timeout", cfg.ready_timeout))
    for t, v in d.get("capacity", {}).items():
        if t not in SF_TYPES or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"[dms.capacity] {t} = {v!r}: a function type and a positive "
                              "packets/s")
        cfg.capacity[t] = v
    if cfg.load_interval <= 0 or cfg.max_instances < 0:
        raise ConfigError("[dms] load_interval must be > 0 and max_instances >= 0")
    c = data.get("controller")
    if c is not None:
        check_table(c, {"address": str, "port": int, "username": str, "password_file": str,
                        "private_key_file": str, "host_key": str}, "controller")
        if "address" not in c or "host_key" not in c:
            raise ConfigError("[controller] needs address and host_key (the controller's "
                              "host key is always verified)")
        cfg.controller = ControllerLink(
            c["address"], c.get("port", 830), c.get("username", "dms"),
            password_file=base / c["password_file"] if "password_file" in c else None,
            private_key_file=base / c["private_key_file"] if "private_key_file" in c else None,
            host_key=c["host_key"])
    cfg.users = parse_users(data.get("users", []), base)
    return cfg


def load_config(path: Path) -> DmsConfig:
    return parse_config(read_toml(path), path.resolve().parent)
