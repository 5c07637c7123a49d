"""Which appliers (backends) an agent runs: a registry of names → factories.

`null` stores configuration only; `xfrm` drives the kernel's IPsec databases; `userspace`
runs the userspace ESP data path (kernels without ESP); `auto` picks `xfrm` when the kernel
accepts an ESP state and `userspace` otherwise; `ike` drives strongSwan's charon (IKE case).
Other appliers (SFC) register themselves here, and `module.path:callable` names load any
other factory. A factory gets the agent's configuration (its state directory above all).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from netconf_core.applier import Applier, NullApplier

if TYPE_CHECKING:
    from nsf_agent.config import AgentConfig

log = logging.getLogger(__name__)

Factory = Callable[["AgentConfig"], Applier]


def _null(cfg: AgentConfig) -> Applier:
    return NullApplier(keep=0)


def _xfrm(cfg: AgentConfig) -> Applier:
    from nsf_agent.appliers.xfrm import XfrmApplier

    return XfrmApplier(None, state_dir=cfg.state_dir)


def _userspace(cfg: AgentConfig) -> Applier:
    from nsf_agent.appliers.userspace import UserspaceApplier

    return UserspaceApplier(cfg.state_dir)


def _auto(cfg: AgentConfig) -> Applier:
    from nsf_agent.xfrm import probe_esp

    refusal = probe_esp(None)
    if refusal is None:
        log.info("dataplane auto: the kernel has ESP, using xfrm")
        return _xfrm(cfg)
    log.warning("dataplane auto: using userspace ESP because the kernel refused an ESP "
                "state (%s)", refusal)
    return _userspace(cfg)


def _ike(cfg: AgentConfig) -> Applier:
    from nsf_agent.appliers.ike import create

    return create(cfg)


REGISTRY: dict[str, Factory] = {
    "null": _null,
    "xfrm": _xfrm,
    "userspace": _userspace,
    "auto": _auto,
    "ike": _ike,
    "sfc": lambda cfg: importlib.import_module("nsf_agent.appliers.sfc").create(cfg),
}


def register(name: str, factory: Factory) -> None:
    REGISTRY[name] = factory


def available() -> list[str]:
    return sorted(REGISTRY)


def create(name: str, cfg: AgentConfig) -> Applier:
    """An applier by registered name or `package.module:factory`."""
    if name in REGISTRY:
        return REGISTRY[name](cfg)
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(mod_name), attr)
        return factory(cfg)  # type: ignore[no-any-return]
    raise ValueError(f"unknown dataplane {name!r}; available: {', '.join(available())}")
