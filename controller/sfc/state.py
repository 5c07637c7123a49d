"""`<sfc-state>` (i2nsf-sfc-policy operational state) from the SFC service."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from lxml import etree

from controller.sfc.model import NS

Q = f"{{{NS}}}"


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _sub(parent: etree._Element, tag: str, text: object | None = None) -> etree._Element:
    e = etree.SubElement(parent, Q + tag)
    if text is not None:
        e.text = str(text)
    return e


def state_xml(svc: Any) -> etree._Element:
    """`svc`: the SfcService (not imported: the service renders its state through here)."""
    root = etree.Element(Q + "sfc-state", nsmap={None: NS})
    r = svc.rendering
    if r is not None:
        for spi in sorted(r.paths):
            p = r.paths[spi]
            el = _sub(root, "path")
            _sub(el, "spi", spi)
            _sub(el, "chain", p.name)
            _sub(el, "kind", p.kind)
            status, err = svc.path_status.get(spi, ("pending", None))
            _sub(el, "status", status)
            if err:
                _sub(el, "error-message", err)
            _sub(el, "generation", svc.generation.get(spi, 0))
            for h in p.hops:
                he = _sub(el, "hop")
                _sub(he, "si", h.si)
                _sub(he, "sf-type", h.sf_type)
                for inst, w in h.instances:
                    ie = _sub(he, "instance")
                    _sub(ie, "name", inst.name)
                    if inst.forwarder:
                        _sub(ie, "forwarder", inst.forwarder)
                    _sub(ie, "locator", inst.locator)
                    _sub(ie, "weight", w)
    for inst in sorted(svc.catalog.instances.values(), key=lambda i: i.name):
        el = _sub(root, "instance")
        _sub(el, "name", inst.name)
        _sub(el, "sf-type", inst.sf_type)
        _sub(el, "dms", inst.dms)
        if inst.forwarder:
            _sub(el, "forwarder", inst.forwarder)
        _sub(el, "locator", inst.locator)
        _sub(el, "capacity-pps", inst.capacity_pps)
        _sub(el, "load-pps", int(inst.load.pps))
        _sub(el, "load-bps", int(inst.load.bps))
        _sub(el, "cpu-percent", f"{inst.load.cpu:.1f}")
        _sub(el, "queue-depth", inst.load.queue)
        _sub(el, "load-percent", int(inst.load_percent))
        if inst.load.time:
            wall = time.time() - (svc.clock() - inst.load.time)
            _sub(el, "last-report", iso(wall))
        _sub(el, "state", inst.state)
    if r is not None:
        for name in sorted(r.agents):
            a = r.agents[name]
            for (spi, si), hops in sorted(a.table.items()):
                el = _sub(root, "forwarding-entry")
                _sub(el, "forwarder", name)
                _sub(el, "sff-id", a.forwarder.sff_id)
                _sub(el, "spi", spi)
                _sub(el, "si", si)
                for i, h in enumerate(hops):
                    nh = _sub(el, "next-hop")
                    _sub(nh, "index", i)
                    if h.locator is not None:
                        _sub(nh, "locator", h.locator)
                        _sub(nh, "transport", h.transport)
                    _sub(nh, "kind", h.kind)
                    if h.instance:
                        _sub(nh, "instance", h.instance)
                    if h.kind != "terminate":
                        _sub(nh, "weight", h.weight)
    st = svc.stats
    s = _sub(root, "statistics")
    _sub(s, "pushes", st.pushes)
    _sub(s, "pushes-failed", st.pushes_failed)
    _sub(s, "table-misses", st.table_misses)
    _sub(s, "table-misses-answered", st.table_misses_answered)
    _sub(s, "last-miss-answer-time", st.last_miss_answer_us)
    _sub(s, "loops-reported", st.loops_reported)
    _sub(s, "scale-outs", st.scale_outs)
    _sub(s, "scale-ins", st.scale_ins)
    for ev in svc.events:
        el = _sub(root, "event")
        _sub(el, "sequence", ev.seq)
        _sub(el, "time", iso(ev.time))
        _sub(el, "kind", ev.kind)
        _sub(el, "detail", ev.detail)
        if ev.flow:
            f = _sub(el, "flow")
            for leaf, v in ev.flow.items():
                _sub(f, leaf, v)
    return root
