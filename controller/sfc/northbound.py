"""The SFC part of the controller's northbound: the `i2nsf-sfc-policy` applier (commits →
SFC service; the Policy Manager's checks are the commit's rpc-errors), the
`i2nsf-sfc-catalog` RPCs the DMSs call, `resync-sfc`, and the operational state of both.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from lxml import etree

from controller.sfc.catalog import CatalogError, Instance
from controller.sfc.model import NS as SFCP_NS
from controller.sfc.model import SfcConfig, parse_config
from controller.sfc.service import SfcService
from controller.sfc.state import iso
from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

CAT_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"
CQ = f"{{{CAT_NS}}}"
MODULES = ("i2nsf-sfc-policy", "i2nsf-sfc-catalog")
INVENTORY_NS = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"


def inventory_names(root: etree._Element) -> set[str]:
    """NSF names of the inventory in a config tree (i2nsf-flow-policy's nsf list)."""
    q = f"{{{INVENTORY_NS}}}"
    return {(e.text or "").strip() for e in root.iterfind(
        f".//{q}flow-protection/{q}nsfs/{q}nsf/{q}name")}


class SfcPolicyApplier:
    """Committed i2nsf-sfc-policy configuration → the SFC service."""

    name = "sfc-policy"

    def __init__(self, service: SfcService,
                 inventory: Callable[[etree._Element], set[str]] = inventory_names) -> None:
        self.service = service
        self.inventory = inventory

    def bind(self, notify: Notify) -> None:
        self.service.notify = notify

    def _check(self, root: etree._Element) -> SfcConfig:
        cfg = parse_config(root)
        known = self.inventory(root)
        for f in cfg.forwarders.values():
            if f.name not in known:
                raise RpcError("application", "invalid-value",
                               f"forwarder {f.name}: no NSF of that name in the inventory",
                               path=f"/i2nsf-sfc-policy:sfc/forwarders/forwarder"
                                    f"[name='{f.name}']")
        from controller.sfc import paths

        paths.compile(cfg, self.service.catalog, paths.SpiAllocator(
            self.service.spis.assigned))
        return cfg

    def reconcile(self, running: etree._Element) -> None:
        try:
            cfg = self._check(running)
        except RpcError as exc:  # accepted before (the catalog may have changed since)
            log.error("stored SFC configuration fails a check (%s); applying it anyway",
                      exc.message)
            cfg = parse_config(running)
        self.service.apply_config(cfg)

    def validate(self, change: ConfigChange) -> None:
        change.scratch["sfc.cfg"] = self._check(change.new)

    def prepare(self, change: ConfigChange) -> None:
        if "sfc.cfg" not in change.scratch:
            change.scratch["sfc.cfg"] = parse_config(change.new)

    def apply(self, change: ConfigChange) -> None:
        self.service.apply_config(change.scratch["sfc.cfg"])  # type: ignore[arg-type]

    def abort(self, change: ConfigChange) -> None:
        self.service.apply_config(parse_config(change.old))

    def state(self, running: etree._Element) -> list[etree._Element]:
        return [*self.service.state(), catalog_state(self.service)]

    def close(self) -> None:
        return None


# ---- i2nsf-sfc-catalog RPCs ------------------------------------------------------------------

def _leaf(op: etree._Element, path: str, mandatory: bool = False) -> str | None:
    el = op.find(path)
    v = None if el is None else (el.text or "").strip()
    if mandatory and not v:
        name = path.rpartition("}")[2]
        raise RpcError("protocol", "missing-element", f"{op.tag.rpartition('}')[2]} needs "
                       f"<{name}>", info={"bad-element": name})
    return v


def _num(v: str | None, what: str, default: float = 0.0) -> float:
    if v is None or v == "":
        return default
    try:
        x = float(v)
    except ValueError:
        raise RpcError("application", "invalid-value", f"{what}: {v!r} is not a number",
                       info={"bad-element": what}) from None
    if x < 0:
        raise RpcError("application", "invalid-value", f"{what} cannot be negative",
                       info={"bad-element": what})
    return x


def _catalog_error(exc: CatalogError) -> RpcError:
    return RpcError("application", exc.tag, str(exc))


def parse_registration(op: etree._Element) -> Instance:
    name = _leaf(op, CQ + "name", True) or ""
    sf_type = _leaf(op, CQ + "type", True) or ""
    dms = _leaf(op, CQ + "dms", True) or ""
    addr = _leaf(op, f"{CQ}locator/{CQ}address", True) or ""
    try:
        locator = ipaddress.ip_address(addr)
    except ValueError:
        raise RpcError("application", "invalid-value", f"locator address {addr!r} is not an "
                       "IP address", info={"bad-element": "address"}) from None
    cap = _num(_leaf(op, CQ + "capacity", True), "capacity")
    nsh_aware = op.find(CQ + "interfaces") is None
    return Instance(
        name=name, sf_type=sf_type, dms=dms, locator=locator, capacity_pps=int(cap),
        forwarder=_leaf(op, CQ + "host"),
        transport=_leaf(op, f"{CQ}locator/{CQ}transport") or "gre",
        capabilities=tuple((e.text or "").strip() for e in op.iterfind(CQ + "capability")),
        to_sf=_leaf(op, f"{CQ}interfaces/{CQ}to-sf"),
        from_sf=_leaf(op, f"{CQ}interfaces/{CQ}from-sf"),
        sf_mac=_leaf(op, f"{CQ}interfaces/{CQ}sf-mac"),
        report_socket=_leaf(op, CQ + "report-socket"), nsh_aware=nsh_aware)


class CatalogRpcs:
    """The handlers the northbound server registers (netconf_core Handler signature)."""

    def __init__(self, service: SfcService) -> None:
        self.service = service

    def register(self, server: object) -> None:
        reg = server.register_rpc  # type: ignore[attr-defined]
        reg(CAT_NS, "register-instance", self.register_instance)
        reg(CAT_NS, "unregister-instance", self.unregister_instance)
        reg(CAT_NS, "report-load", self.report_load)
        reg(SFCP_NS, "resync-sfc", self.resync_sfc)

    def register_instance(self, srv: object, sess: object, op: etree._Element) -> None:
        inst = parse_registration(op)
        try:
            self.service.register(inst)
        except CatalogError as exc:
            raise _catalog_error(exc) from None

    def unregister_instance(self, srv: object, sess: object, op: etree._Element) -> None:
        name = _leaf(op, CQ + "name", True) or ""
        dms = _leaf(op, CQ + "dms", True)
        reason = _leaf(op, CQ + "reason") or "removed"
        if reason not in ("removed", "failed"):
            raise RpcError("application", "invalid-value", f"reason {reason!r} is not "
                           "'removed' or 'failed'", info={"bad-element": "reason"})
        try:
            self.service.unregister(name, dms, reason)
        except CatalogError as exc:
            raise _catalog_error(exc) from None

    def report_load(self, srv: object, sess: object, op: etree._Element) -> None:
        dms = _leaf(op, CQ + "dms", True) or ""
        loads = []
        for e in op.iterfind(CQ + "instance"):
            name = _leaf(e, CQ + "name", True) or ""
            loads.append((name, _num(_leaf(e, CQ + "packets-per-second"), "packets-per-second"),
                          _num(_leaf(e, CQ + "bytes-per-second"), "bytes-per-second"),
                          _num(_leaf(e, CQ + "cpu-percent"), "cpu-percent"),
                          int(_num(_leaf(e, CQ + "queue-depth"), "queue-depth"))))
        if not loads:
            raise RpcError("protocol", "missing-element", "report-load needs <instance>",
                           info={"bad-element": "instance"})
        try:
            self.service.report_load(dms, loads)
        except CatalogError as exc:
            raise _catalog_error(exc) from None

    def resync_sfc(self, srv: object, sess: object, op: etree._Element) -> None:
        self.service.withdrawn.clear()
        self.service._spawn(self.service.reconcile(force=True))


def catalog_state(svc: SfcService) -> etree._Element:
    """`<catalog>` of i2nsf-sfc-catalog."""
    root = etree.Element(CQ + "catalog", nsmap={None: CAT_NS})
    import time as _t

    def sub(p: etree._Element, tag: str, text: object | None = None) -> etree._Element:
        e = etree.SubElement(p, CQ + tag)
        if text is not None:
            e.text = str(text)
        return e

    for i in sorted(svc.catalog.instances.values(), key=lambda i: i.name):
        el = sub(root, "instance")
        sub(el, "name", i.name)
        sub(el, "type", i.sf_type)
        sub(el, "dms", i.dms)
        if i.forwarder:
            sub(el, "host", i.forwarder)
        loc = sub(el, "locator")
        sub(loc, "address", i.locator)
        sub(loc, "transport", i.transport)
        if i.to_sf and i.from_sf:
            itf = sub(el, "interfaces")
            sub(itf, "to-sf", i.to_sf)
            sub(itf, "from-sf", i.from_sf)
            if i.sf_mac:
                sub(itf, "sf-mac", i.sf_mac)
        if i.report_socket:
            sub(el, "report-socket", i.report_socket)
        sub(el, "capacity", i.capacity_pps)
        for c in i.capabilities:
            sub(el, "capability", c)
        wall = _t.time() - (svc.clock() - i.registered)
        sub(el, "registered", iso(wall))
        ld = sub(el, "load")
        sub(ld, "packets-per-second", int(i.load.pps))
        sub(ld, "bytes-per-second", int(i.load.bps))
        sub(ld, "cpu-percent", f"{i.load.cpu:.2f}")
        sub(ld, "queue-depth", i.load.queue)
        if i.load.time:
            sub(ld, "reported", iso(_t.time() - (svc.clock() - i.load.time)))
    return root
