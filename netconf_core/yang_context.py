"""Build libyang contexts from the project's `yang/` directory.

Both the agent and the controller validate every datastore change with libyang before it is
committed, so they must load exactly the same module texts the server advertises.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import libyang

log = logging.getLogger(__name__)

# Modules every I2NSF NSF agent serves (RFC 9061). Features follow RFC 9061's names.
IPSEC_MODULES: tuple[str, ...] = ("ietf-i2nsf-ikec", "ietf-i2nsf-ike", "ietf-i2nsf-ikeless")


def yang_dir() -> Path:
    """Where the YANG modules live: $I2NSF_YANG_DIR, else `yang/` of the source tree, else
    `<prefix>/share/i2nsf-sdn/yang` where `pip install .` puts them (pyproject data-files)."""
    env = os.environ.get("I2NSF_YANG_DIR")
    if env:
        return Path(env)
    tree = Path(__file__).resolve().parent.parent / "yang"
    if tree.is_dir():
        return tree
    for prefix in (sys.prefix, sys.base_prefix, "/usr/local", "/usr"):
        installed = Path(prefix) / "share" / "i2nsf-sdn" / "yang"
        if installed.is_dir():
            return installed
    return tree


def search_paths(base: Path | None = None) -> list[Path]:
    base = base or yang_dir()
    return [base, base / "standard"]


@dataclass(frozen=True)
class LoadedModule:
    name: str
    revision: str | None
    namespace: str
    prefix: str
    features: tuple[str, ...]
    path: Path | None


class YangContextError(RuntimeError):
    """A module could not be found or failed to compile."""


def create_context(
    modules: Iterable[str] = IPSEC_MODULES,
    features: dict[str, Iterable[str]] | None = None,
    base: Path | None = None,
    server_modules: bool = True,
) -> libyang.Context:
    """Return a libyang context with `modules` loaded and their features enabled.

    `features` maps a module name to the features to enable; a module missing from the map
    gets all of its features ("*"), which is what an NSF that implements the whole RFC wants.
    `server_modules`: also the modules the NETCONF server implements (`SERVER_MODULES`).
    """
    paths = search_paths(base)
    for p in paths:
        if not p.is_dir():
            raise YangContextError(f"YANG search path {p} does not exist")
    ctx = libyang.Context(":".join(str(p) for p in paths))
    features = features or {}
    for name in modules:
        try:
            mod = ctx.load_module(name)
        except libyang.LibyangError as exc:
            ctx.destroy()
            raise YangContextError(f"cannot load YANG module {name!r}: {exc}") from exc
        wanted = features.get(name)
        if wanted is None:
            mod.feature_enable_all()
        else:
            from netconf_core.features import set_features

            set_features(ctx, name, wanted)
        log.debug("loaded YANG module %s", name)
    if server_modules:
        _load_server_modules(ctx)
    return ctx


# What the NETCONF server itself implements (RFC 5277, 6243, 8341, 8342/8526). Loaded with
# the context, before any data tree exists: loading a module later makes libyang compile the
# context again, which would leave every schema node and data tree made before dangling.
SERVER_MODULES: tuple[str, ...] = (
    "notifications", "nc-notifications", "ietf-netconf-with-defaults", "ietf-netconf-acm",
    "ietf-origin", "ietf-netconf-nmda",
)


def _load_server_modules(ctx: libyang.Context) -> None:
    for name in SERVER_MODULES:
        try:
            mod = ctx.get_module(name)
        except libyang.LibyangError:
            mod = None
        try:
            if mod is None:
                mod = ctx.load_module(name)
            if not mod.implemented() or name == "ietf-netconf-nmda":
                mod.feature_enable_all()
        except libyang.LibyangError as exc:
            log.warning("cannot load YANG module %s: %s", name, exc)


def module_file(name: str, revision: str | None = None, base: Path | None = None) -> Path:
    """The file holding module `name` (for get-schema), searched like libyang does."""
    for p in search_paths(base):
        candidates = sorted(p.glob(f"{name}@*.yang")) + sorted(p.glob(f"{name}.yang"))
        for c in candidates:
            if revision is None or _file_revision(c) == revision:
                return c
    wanted = f"{name}@{revision}" if revision else name
    raise FileNotFoundError(f"no YANG file for module {wanted}")


def _file_revision(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if s.startswith("revision"):
            return s.split()[1].strip('";{')
    return None
