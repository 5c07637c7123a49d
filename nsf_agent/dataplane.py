"""Which appliers (backends) an agent runs: a registry of names → factories.

`null` stores configuration only. Kernel/userspace/IKE/SFC appliers register themselves here
(`register("xfrm", XfrmApplier)`), and `module.path:callable` names load any other factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from netconf_core.applier import Applier, NullApplier

Factory = Callable[[], Applier]

REGISTRY: dict[str, Factory] = {"null": NullApplier}


def register(name: str, factory: Factory) -> None:
    REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(REGISTRY)


def create(name: str) -> Applier:
    """An applier by registered name or `package.module:factory`."""
    if name in REGISTRY:
        return REGISTRY[name]()
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(mod_name), attr)
        return factory()  # type: ignore[no-any-return]
    raise ValueError(f"unknown dataplane {name!r}; available: {', '.join(available())}")
