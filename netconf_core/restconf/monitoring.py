"""`ietf-restconf-monitoring` (RFC 8040 section 9): the capabilities and event streams of
the RESTCONF server, as operational state of the NETCONF server it shares datastores with
(so `get` over NETCONF shows it too)."""

from __future__ import annotations

from collections.abc import Callable

from lxml import etree

from netconf_core.applier import StateOnlyApplier
from netconf_core.notifications import STREAM, format_time

RCMON_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf-monitoring"
CAPABILITIES = (
    "urn:ietf:params:restconf:capability:depth:1.0",
    "urn:ietf:params:restconf:capability:fields:1.0",
    # every value is in the datastore as the client sent it or libyang's default is implied
    "urn:ietf:params:restconf:capability:defaults:1.0?basic-mode=explicit",
    "urn:ietf:params:restconf:capability:replay:1.0",
    "urn:ietf:params:restconf:capability:with-defaults:1.0",
    "urn:ietf:params:restconf:capability:yang-patch:1.0",
)


class RestconfStateApplier(StateOnlyApplier):
    """Contributes `restconf-state` to `get`; takes no part in commits."""

    name = "restconf-state"

    def __init__(self, base_url: Callable[[], str], log_created: Callable[[], object]) -> None:
        self.base_url = base_url
        self.log_created = log_created

    def state(self, running: etree._Element) -> list[etree._Element]:
        q = f"{{{RCMON_NS}}}"
        root = etree.Element(q + "restconf-state", nsmap={None: RCMON_NS})
        caps = etree.SubElement(root, q + "capabilities")
        for c in CAPABILITIES:
            etree.SubElement(caps, q + "capability").text = c
        streams = etree.SubElement(root, q + "streams")
        st = etree.SubElement(streams, q + "stream")
        etree.SubElement(st, q + "name").text = STREAM
        etree.SubElement(st, q + "description").text = (
            "the server's notifications (RFC 5277 NETCONF stream)")
        etree.SubElement(st, q + "replay-support").text = "true"
        created = self.log_created()
        etree.SubElement(st, q + "replay-log-creation-time").text = format_time(created)  # type: ignore[arg-type]
        base = self.base_url()
        for enc in ("xml", "json"):
            acc = etree.SubElement(st, q + "access")
            etree.SubElement(acc, q + "encoding").text = enc
            etree.SubElement(acc, q + "location").text = f"{base}/streams/{STREAM}/{enc}"
        return [root]
