"""What the agent's and the controller's TOML configuration files have in common: strict
tables (unknown keys and wrong types are errors, not silently ignored) and [[users]]
(`read_secrets = false` hides key material from a user: see netconf_core.secrets_access)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from netconf_core.auth import User


class ConfigError(ValueError):
    """The configuration file is missing something or has a wrong value."""


def check_table(table: dict[str, Any], allowed: dict[str, Any], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table")
    for k, v in table.items():
        if k not in allowed:
            raise ConfigError(f"[{where}] unknown key {k!r}")
        if not isinstance(v, allowed[k]) or isinstance(v, bool) != (allowed[k] is bool):
            raise ConfigError(f"[{where}] {k} has the wrong type ({type(v).__name__})")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def parse_users(entries: list[dict[str, Any]], base: Path) -> list[User]:
    """[[users]]: name plus a password hash and/or OpenSSH public keys (inline or a file
    relative to the configuration file)."""
    users = []
    for i, u in enumerate(entries):
        check_table(
            u,
            {"name": str, "password_hash": str, "authorized_keys": list,
             "authorized_keys_file": str, "read_secrets": bool, "groups": list},
            f"users #{i + 1}",
        )
        if "name" not in u:
            raise ConfigError(f"[[users]] #{i + 1} has no name")
        keys = [str(k) for k in u.get("authorized_keys", [])]
        if "authorized_keys_file" in u:
            path = base / u["authorized_keys_file"]
            try:
                keys += [
                    ln.strip() for ln in path.read_text().splitlines()
                    if ln.strip() and not ln.lstrip().startswith("#")
                ]
            except OSError as exc:
                raise ConfigError(f"user {u['name']}: cannot read {path}: {exc}") from exc
        if "password_hash" not in u and not keys:
            raise ConfigError(f"user {u['name']} has neither password_hash nor keys")
        groups = u.get("groups", [])
        if not all(isinstance(g, str) and g for g in groups):
            raise ConfigError(f"user {u['name']}: groups must be a list of group names")
        users.append(User(u["name"], u.get("password_hash"), keys,
                          read_secrets=u.get("read_secrets", True), groups=list(groups)))
    return users
