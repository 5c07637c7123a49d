"""Plugging the SFC service into the controller's server and IPsec service (shared
southbound sessions, per-NSF locks and transaction journal; notifications and reconnections
fanned out to both)."""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from controller.sfc.northbound import MODULES, CatalogRpcs, SfcPolicyApplier
from controller.sfc.service import SfcService

log = logging.getLogger(__name__)

__all__ = ["MODULES", "attach"]


def attach(flow: Any, server: Any, locked: Any) -> tuple[SfcService, SfcPolicyApplier]:
    """Create the SFC service on top of the IPsec service `flow` (before any NSF session
    exists) and register its RPCs on the NETCONF `server`. Returns the service (start and
    stop it with the controller) and its applier (give it to the Datastores)."""
    south = flow.south
    sfc = SfcService(flow.store, lambda: south.sessions, transact=flow._transact,
                     locked=locked, rpc_timeout=flow.opts.rpc_timeout)
    flow_notification = south.on_notification
    flow_connected = south.on_connected

    def on_notification(nsf: str, n: etree._Element) -> None:
        if not sfc.on_notification(nsf, n):
            flow_notification(nsf, n)

    async def on_connected(sess: Any) -> None:
        try:
            await flow_connected(sess)
        finally:
            await sfc.resync_agent(sess.name)

    south.on_notification = on_notification
    south.on_connected = on_connected
    CatalogRpcs(sfc).register(server)
    sfc.load()
    return sfc, SfcPolicyApplier(sfc)
