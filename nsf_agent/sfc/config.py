"""`i2nsf-sfc-nsf` configuration XML → `SfcConfig`, and data path counters → state XML."""

from __future__ import annotations

import ipaddress
from typing import Any

from lxml import etree

from .model import (
    ANY_PORTS,
    ClassifierRule,
    Match,
    NextHop,
    PortRange,
    ProxyEntry,
    ReclassifyRule,
    SfcConfig,
    SffEntry,
)

NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"
Q = f"{{{NS}}}"
ROOT = "/i2nsf-sfc-nsf:sfc"


def _t(el: etree._Element | None, name: str, default: str | None = None) -> str | None:
    if el is None:
        return default
    v = el.findtext(Q + name)
    return v.strip() if v is not None else default


def _ports(el: etree._Element | None) -> PortRange:
    if el is None:
        return ANY_PORTS
    return PortRange(int(_t(el, "start", "0") or 0), int(_t(el, "end", "65535") or 65535))


def _ip(v: str | None) -> str | None:
    return str(ipaddress.ip_address(v)) if v else None


def parse(data: etree._Element) -> tuple[SfcConfig, dict[str, Any]]:
    """The SFC configuration in a `<data>` tree, and the fast-path settings."""
    cfg = SfcConfig()
    fast: dict[str, Any] = {"enabled": False, "interfaces": []}
    root = data.find(Q + "sfc")
    if root is None:
        return cfg, fast
    cl = root.find(Q + "classifier")
    if cl is not None:
        for r in cl.findall(Q + "rule"):
            m = r.find(Q + "match")
            path = r.find(Q + "path")
            proto = _t(m, "protocol")
            dscp = _t(m, "dscp")
            cfg.rules.append(ClassifierRule(
                name=_t(r, "name") or "", order=int(_t(r, "order") or 0),
                match=Match(
                    src=_t(m, "source-prefix"), dst=_t(m, "destination-prefix"),
                    protocol=int(proto) if proto is not None else None,
                    sport=_ports(m.find(Q + "source-ports") if m is not None else None),
                    dport=_ports(m.find(Q + "destination-ports") if m is not None else None),
                    dscp=int(dscp) if dscp is not None else None,
                    ingress=_t(m, "ingress-interface")),
                spi=int(_t(path, "spi") or 0), si=int(_t(path, "si", "255") or 255),
                first_hop=_ip(_t(path, "first-hop")) or "",
                md_type=2 if _t(path, "md-type") == "md2" else 1,
                ttl=int(_t(path, "ttl", "63") or 63)))
        for st in cl.findall(Q + "next-function"):
            cfg.steering.append(ReclassifyRule(
                result=_t(st, "sf-type") or "", spi=int(_t(st, "spi") or 0),
                si=int(_t(st, "si", "255") or 255), first_hop=_ip(_t(st, "first-hop")) or ""))
        for rc in cl.findall(Q + "reclassify"):
            cfg.reclassify.append(ReclassifyRule(
                result=_t(rc, "result") or "", spi=int(_t(rc, "spi") or 0),
                si=int(_t(rc, "si", "255") or 255), first_hop=_ip(_t(rc, "first-hop")) or ""))
    fw = root.find(Q + "forwarder")
    if fw is not None:
        cfg.sff_id = int(_t(fw, "sff-id") or 0)
        cfg.locator = _ip(_t(fw, "locator"))
        cfg.hold_packets = int(_t(fw, "hold-packets", "64") or 64)
        cfg.hold_ms = int(_t(fw, "hold-time", "500") or 500)
        for e in fw.findall(f"{Q}table/{Q}entry"):
            hops: list[NextHop] = []
            if e.find(Q + "terminate") is not None:
                hops.append(NextHop(None, "terminate"))
            for h in e.findall(Q + "next-hop"):
                hops.append(NextHop(_ip(_t(h, "locator")), _t(h, "kind", "sff") or "sff",
                                    int(_t(h, "weight", "1") or 1),
                                    _t(h, "transport", "gre") or "gre"))
            cfg.table.append(SffEntry(int(_t(e, "spi") or 0), int(_t(e, "si") or 0),
                                      tuple(hops)))
        fp = fw.find(Q + "fast-path")
        if fp is not None:
            fast["enabled"] = _t(fp, "enabled", "false") == "true"
            fast["interfaces"] = [x.text.strip() for x in fp.findall(Q + "interface") if x.text]
    px = root.find(Q + "proxies")
    if px is not None:
        for p in px.findall(Q + "proxy"):
            cfg.proxies.append(ProxyEntry(
                name=_t(p, "name") or "", spi=int(_t(p, "spi") or 0), si=int(_t(p, "si") or 0),
                to_sf=_t(p, "to-sf-interface") or "", from_sf=_t(p, "from-sf-interface") or "",
                sf_mac=(_t(p, "sf-mac") or "").lower(), result_socket=_t(p, "result-socket"),
                weight=int(_t(p, "weight", "1") or 1)))
    return cfg, fast


def _sub(parent: etree._Element, name: str, text: object | None = None) -> etree._Element:
    el = etree.SubElement(parent, Q + name)
    if text is not None:
        el.text = str(text)
    return el


def _counts(parent: etree._Element, packets: int, nbytes: int) -> None:
    st = _sub(parent, "statistics")
    _sub(st, "packets", packets)
    _sub(st, "bytes", nbytes)


def state(cfg: SfcConfig, stats: dict[str, Any]) -> etree._Element:
    """The config false nodes of `sfc` for a `get` reply (keys + counters only)."""
    root = etree.Element(Q + "sfc", nsmap={None: NS})
    c = stats.get("counters", {})
    cl = _sub(root, "classifier")
    rules = stats.get("rules", {})
    for r in cfg.rules:
        el = _sub(cl, "rule")
        _sub(el, "name", r.name)
        pk, by = rules.get(r.name, [0, 0])
        _counts(el, pk, by)
    rcs = stats.get("reclassify", {})
    for rc in cfg.reclassify:
        el = _sub(cl, "reclassify")
        _sub(el, "result", rc.result)
        pk, by = rcs.get(rc.result, [0, 0])
        _counts(el, pk, by)
    sts = stats.get("steering", {})
    for st in cfg.steering:
        el = _sub(cl, "next-function")
        _sub(el, "sf-type", st.result)
        pk, by = sts.get(st.result, [0, 0])
        _counts(el, pk, by)
    cst = _sub(cl, "statistics")
    _sub(cst, "unmatched", c.get("unmatched", 0))
    _sub(cst, "reclassify-unknown", c.get("reclassify-unknown", 0))
    _sub(cst, "next-function-unknown", c.get("next-function-unknown", 0))
    if cfg.sff_id:
        fw = _sub(root, "forwarder")
        tab = _sub(fw, "table")
        ents = {(e[0], e[1]): e for e in stats.get("entries", [])}
        for e in cfg.table:
            el = _sub(tab, "entry")
            _sub(el, "spi", e.spi)
            _sub(el, "si", e.si)
            got = ents.get((e.spi, e.si), [e.spi, e.si, 0, 0, [0] * len(e.next_hops)])
            for h, n in zip(e.next_hops, got[4], strict=False):
                if h.kind == "terminate":
                    continue
                nh = _sub(el, "next-hop")
                _sub(nh, "locator", h.locator)
                _sub(nh, "packets", n)
            _counts(el, got[2], got[3])
        fst = _sub(fw, "statistics")
        for k in ("received", "forwarded", "delivered"):
            _sub(fst, k, c.get(k, 0))
        _sub(fst, "held", stats.get("held", 0))
        _sub(fst, "table-misses", c.get("table-misses", 0))
        for reason, n in sorted(stats.get("drops", {}).items()):
            d = _sub(fst, "drop")
            _sub(d, "reason", reason)
            _sub(d, "packets", n)
    if cfg.proxies:
        pxs = _sub(root, "proxies")
        ps = stats.get("proxies", {})
        for p in cfg.proxies:
            el = _sub(pxs, "proxy")
            _sub(el, "name", p.name)
            s = ps.get(p.name, {})
            st = _sub(el, "statistics")
            for k in ("to-sf", "from-sf", "results", "flows"):
                _sub(st, k, s.get(k, 0))
    return root


def notification(ev: dict[str, Any]) -> etree._Element | None:
    """A data path event as a YANG notification element (None for unknown events)."""
    kind = ev.get("event")
    if kind in ("sff-table-miss", "sff-loop-detected", "sff-ttl-expired"):
        n = etree.Element(Q + kind, nsmap={None: NS})
        if ev.get("sff-id"):
            _sub(n, "sff-id", ev["sff-id"])
        _sub(n, "spi", ev["spi"])
        _sub(n, "si", ev["si"])
        for t in ev.get("trace", []) if kind == "sff-loop-detected" else []:
            _sub(n, "trace", t)
        return n
    if kind == "inspection-result":
        n = etree.Element(Q + kind, nsmap={None: NS})
        for k, leaf in (("proxy", "proxy"), ("instance", "instance"), ("sf-type", "type")):
            if ev.get(k):
                _sub(n, leaf, ev[k])
        _sub(n, "sid", max(0, min(int(ev.get("sid") or 0), 2**32 - 1)))
        if ev.get("msg"):
            _sub(n, "msg", ev["msg"])
        fl = ev.get("flow") or {}
        if fl:
            f = _sub(n, "flow")
            for src, dst in (("src", "source"), ("dst", "destination"), ("proto", "protocol"),
                             ("sport", "source-port"), ("dport", "destination-port")):
                if fl.get(src) is not None:
                    _sub(f, dst, fl[src])
        if ev.get("verdict") in ("alert", "drop", "pass"):
            _sub(n, "verdict", ev["verdict"])
        act = ev.get("action")
        if isinstance(act, dict):
            if "reclassify" in act:
                _sub(n, "reclassify", act["reclassify"])
            elif "next-function" in act:
                _sub(n, "next-function", act["next-function"])
        return n
    return None
