"""i2nsf-dms XML in and out: RPC input (already checked and defaulted by libyang) to the
functions' Spec, and the state tree and notifications from the DMS's instances."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lxml import etree

from netconf_core.errors import RpcError
from nsf_agent.functions.spec import AntiSpoofing, Ddos, Firewall, FwRule, Spec

if TYPE_CHECKING:
    from nsf_agent.dms.manager import Instance

NS = "urn:i2nsf-sdn:yang:i2nsf-dms"
Q = f"{{{NS}}}"
CAT_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"
MODULES = ("i2nsf-sfc-catalog", "i2nsf-dms")
RULE_CONTAINERS = ("firewall", "anti-spoofing", "ddos", "signatures")
ALLOWED = {"firewall": {"firewall"}, "anti-spoofing": {"anti-spoofing"}, "ddos": {"ddos"},
           "ids": {"signatures"}, "ips": {"signatures"}, "dpi": {"signatures"},
           "forward": set()}

CAPABILITIES = {
    "firewall": ["ipv4", "ipv6", "stateful-filtering", "five-tuple-filtering"],
    "anti-spoofing": ["ipv4", "ipv6", "source-validation"],
    "ddos": ["ipv4", "ipv6", "rate-limiting", "syn-flood-protection",
             "reclassification-request"],
    "ids": ["ipv4", "ipv6", "payload-signatures", "http-host", "tls-sni", "dns-query",
            "reclassification-request", "next-function-request"],
    "ips": ["ipv4", "ipv6", "payload-signatures", "http-host", "tls-sni", "dns-query",
            "reclassification-request", "next-function-request"],
    "dpi": ["ipv4", "ipv6", "application-identification", "payload-signatures", "http-host",
            "tls-sni", "dns-query", "reclassification-request", "next-function-request"],
    "forward": ["ipv4", "ipv6"],
}
DESCRIPTIONS = {
    "firewall": "stateful 5-tuple filter (nftables, ct state); drops reported via NFLOG",
    "anti-spoofing": "ingress filtering, martians, bogons as blackhole routes (nftables fib)",
    "ddos": "per-source packet and SYN rate limits (nftables dynamic sets)",
    "ids": "payload signatures (Suricata subset, Hyperscan) on NFQUEUE; alerts only",
    "ips": "payload signatures (Suricata subset, Hyperscan) on NFQUEUE; drop rules drop",
    "dpi": "application identification (HTTP Host, TLS SNI, DNS qname) and signatures",
    "forward": "plain forwarding (no inspection): the baseline",
}


def _text(el: etree._Element | None, name: str) -> str | None:
    if el is None:
        return None
    v = el.findtext(Q + name)
    return v if v is not None else None


def _bool(el: etree._Element, name: str, default: bool) -> bool:
    v = _text(el, name)
    return default if v is None else v == "true"


def _list(el: etree._Element | None, name: str) -> list[str]:
    return [] if el is None else [e.text or "" for e in el.findall(Q + name)]


def spec_from_input(sf_type: str, given: etree._Element, inp: etree._Element) -> Spec:
    """`given` is the rpc as the client sent it (which rule containers it has), `inp` the
    same with libyang's defaults."""
    present = {local for local in RULE_CONTAINERS
               if given.find(Q + local) is not None}
    extra = present - ALLOWED[sf_type]
    if extra:
        what = sorted(extra)[0]
        raise RpcError("application", "invalid-value",
                       f"an instance of type {sf_type} takes no {what} rules",
                       path=f"/i2nsf-dms:{etree.QName(given).localname}/{what}",
                       info={"bad-element": what})
    spec = Spec(type=sf_type)
    fw = inp.find(Q + "firewall")
    if fw is not None and sf_type == "firewall":
        rules = []
        for r in fw.findall(Q + "rule"):
            proto = _text(r, "protocol")
            rules.append(FwRule(
                seq=int(_text(r, "seq") or 0), action=_text(r, "action") or "drop",
                name=_text(r, "name") or "", source_prefix=_text(r, "source-prefix"),
                destination_prefix=_text(r, "destination-prefix"),
                protocol=int(proto) if proto is not None else None,
                source_port=_text(r, "source-port"),
                destination_port=_text(r, "destination-port"),
                ct_state=_list(r, "ct-state"), report=_bool(r, "report", True)))
        spec.firewall = Firewall(_text(fw, "default-action") or "drop",
                                 _bool(fw, "accept-established", True), rules)
    a = inp.find(Q + "anti-spoofing")
    if a is not None:
        spec.anti_spoofing = AntiSpoofing(_list(a, "allowed-source-prefix"),
                                          _list(a, "bogon-prefix"),
                                          _bool(a, "drop-martians", True))
    d = inp.find(Q + "ddos")
    if d is not None:
        dd = Ddos()
        spec.ddos = Ddos(
            int(_text(d, "per-source-pps") or dd.per_source_pps),
            int(_text(d, "per-source-burst") or dd.per_source_burst),
            int(_text(d, "syn-per-source-pps") or dd.syn_per_source_pps),
            int(_text(d, "syn-burst") or dd.syn_burst),
            _list(d, "exempt-prefix"), _text(d, "reclassify"))
    spec.signatures = _text(inp, "signatures") or ""
    return spec


def _leaf(parent: etree._Element, name: str, value: object) -> None:
    if value is None or value == "":
        return
    if isinstance(value, bool):
        value = "true" if value else "false"
    etree.SubElement(parent, Q + name).text = str(value)


def _time(t: datetime | None) -> str | None:
    return t.isoformat().replace("+00:00", "Z") if t else None


def load_leaves(parent: etree._Element, load: dict[str, Any]) -> None:
    _leaf(parent, "packets-per-second", int(load.get("pps", 0)))
    _leaf(parent, "bytes-per-second", int(load.get("bps", 0)))
    _leaf(parent, "cpu-percent", f"{float(load.get('cpu', 0.0)):.2f}")
    _leaf(parent, "queue-depth", int(load.get("queue_depth", 0)))
    for k in ("packets", "bytes", "dropped", "alerts"):
        _leaf(parent, k, int(load.get(k, 0)))


def state(name: str, cap: tuple[int, int], capacity: dict[str, int],
          controller: dict[str, object] | None, instances: Iterable[Instance]
          ) -> etree._Element:
    root = etree.Element(Q + "dms", nsmap={None: NS})
    _leaf(root, "name", name)
    c = etree.SubElement(root, Q + "capacity")
    _leaf(c, "max-instances", cap[0])
    _leaf(c, "instances", cap[1])
    _leaf(c, "available", max(0, cap[0] - cap[1]))
    if controller is not None:
        ctl = etree.SubElement(root, Q + "controller")
        for k in ("address", "connected", "last-error"):
            _leaf(ctl, k, controller.get(k))
    for t in CAPABILITIES:
        it = etree.SubElement(root, Q + "instance-type")
        _leaf(it, "type", t)
        _leaf(it, "description", DESCRIPTIONS[t])
        _leaf(it, "capacity", capacity[t])
        for cp in CAPABILITIES[t]:
            _leaf(it, "capability", cp)
    for inst in instances:
        e = etree.SubElement(root, Q + "instance")
        _leaf(e, "name", inst.name)
        _leaf(e, "type", inst.type)
        _leaf(e, "state", inst.state)
        _leaf(e, "namespace", inst.netns)
        _leaf(e, "to-sf", inst.to_sf)
        _leaf(e, "from-sf", inst.from_sf)
        _leaf(e, "sf-mac", inst.sf_mac)
        _leaf(e, "host-mac", inst.host_mac)
        _leaf(e, "pid", inst.pid if inst.state == "running" else None)
        _leaf(e, "started", _time(inst.started))
        _leaf(e, "restarts", inst.restarts)
        _leaf(e, "last-error", inst.last_error)
        _leaf(e, "registered", inst.registered)
        load_leaves(etree.SubElement(e, Q + "load"), inst.load)
        for cname, (pk, by) in sorted(inst.load.get("counters", {}).items()):
            ce = etree.SubElement(e, Q + "counter")
            _leaf(ce, "name", cname)
            _leaf(ce, "packets", int(pk))
            _leaf(ce, "bytes", int(by))
    return root


def instance_failed(name: str, sf_type: str, reason: str) -> etree._Element:
    n = etree.Element(Q + "instance-failed", nsmap={None: NS})
    _leaf(n, "name", name)
    _leaf(n, "type", sf_type)
    _leaf(n, "reason", reason)
    return n


def instance_load(name: str, load: dict[str, Any]) -> etree._Element:
    n = etree.Element(Q + "instance-load", nsmap={None: NS})
    _leaf(n, "name", name)
    load_leaves(n, load)
    return n


def inspection_alert(msg: dict[str, Any]) -> etree._Element:
    n = etree.Element(Q + "inspection-alert", nsmap={None: NS})
    _leaf(n, "instance", msg.get("instance"))
    _leaf(n, "type", msg.get("type"))
    _leaf(n, "sid", int(msg.get("sid") or 0))
    _leaf(n, "msg", msg.get("msg"))
    flow = msg.get("flow") or {}
    f = etree.SubElement(n, Q + "flow")
    for key, leaf in (("src", "source-address"), ("dst", "destination-address"),
                      ("proto", "protocol")):
        _leaf(f, leaf, flow.get(key))
    if flow.get("proto") in (6, 17, 132):
        _leaf(f, "source-port", flow.get("sport"))
        _leaf(f, "destination-port", flow.get("dport"))
    _leaf(n, "verdict", msg.get("verdict"))
    action = msg.get("action") or {}
    _leaf(n, "reclassify", action.get("reclassify"))
    _leaf(n, "next-function", action.get("next-function"))
    app = msg.get("app") or {}
    _leaf(n, "application", app.get("protocol"))
    _leaf(n, "server-name", app.get("name"))
    return n
