"""Plugging the east-west service into the controller's server (the one hook
`controller.server` calls): its YANG module, RPCs, applier, and NSF reconnections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lxml import etree

from controller.eastwest.model import NS, check_config, parse_config
from controller.eastwest.service import EastWestService
from controller.ipsec.model import parse_config as parse_flow_config
from netconf_core.applier import ConfigChange, Notify

MODULES = ("i2nsf-east-west",)


class EastWestApplier:
    """Committed i2nsf-east-west configuration → the east-west service."""

    name = "east-west"

    def __init__(self, service: EastWestService) -> None:
        self.service = service

    def bind(self, notify: Notify) -> None:
        self.service.notify = notify

    def reconcile(self, running: etree._Element) -> None:
        self.service.apply_config(parse_config(running))

    def validate(self, change: ConfigChange) -> None:
        flow = change.scratch.get("flow.cfg") or parse_flow_config(change.new)
        cfg = parse_config(change.new)
        check_config(cfg, flow.nsfs)  # type: ignore[union-attr]
        change.scratch["ew.cfg"] = cfg

    def prepare(self, change: ConfigChange) -> None:
        if "ew.cfg" not in change.scratch:
            change.scratch["ew.cfg"] = parse_config(change.new)

    def apply(self, change: ConfigChange) -> None:
        self.service.apply_config(change.scratch["ew.cfg"])  # type: ignore[arg-type]

    def abort(self, change: ConfigChange) -> None:
        self.service.apply_config(parse_config(change.old))

    def state(self, running: etree._Element) -> list[etree._Element]:
        return self.service.state()

    def close(self) -> None:
        return None


def attach(flow: Any, server: Any, state_dir: Path) -> tuple[EastWestService, EastWestApplier]:
    """Create the service on the IPsec service `flow` and register its RPCs on `server`."""
    svc = EastWestService(flow, state_dir)
    for name, handler in (("announce", svc.rpc_announce), ("propose-sa", svc.rpc_propose),
                          ("confirm-sa", svc.rpc_confirm), ("lookup-prefix", svc.rpc_lookup),
                          ("rekey-policy", svc.rpc_rekey), ("withdraw-sa", svc.rpc_withdraw)):
        server.register_rpc(NS, name, handler)
    south = flow.south
    previous = south.on_connected

    async def on_connected(sess: Any) -> None:
        try:
            await previous(sess)
        finally:
            await svc.nsf_connected(sess.name)

    south.on_connected = on_connected
    return svc, EastWestApplier(svc)
