"""Agent configuration (`i2nsf-sfc-nsf`) from a rendering, and the make-before-break steps.

Every push replaces the agent's whole `sfc` container (what the controller holds is the
whole truth; an agent that restarted or missed a push gets consistent again with the same
edit). A change that is more than new weights goes in up to three all-or-nothing steps over
all classifiers and SFFs (seed §7.1): (1) the new paths' SFF entries and proxies are added
next to the old ones, (2) the classifiers switch to the new paths, (3) entries only the old
paths used are removed. No packet meets a half-installed path: before (2) nothing carries
the new SPIs, after (2) the old SPIs' entries are still there for packets in flight.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree

from controller.sfc.model import PortRange
from controller.sfc.paths import AgentPlan, ClassifierRule, NextHop, ProxyPlan, Rendering

NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
Q = f"{{{NS}}}"


@dataclass
class AgentConfig:
    """What one agent holds: classifier part and forwarder part, separately switchable."""

    sff_id: int
    locator: str
    rules: list[ClassifierRule] = field(default_factory=list)
    reclass: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # result → path
    table: dict[tuple[int, int], tuple[NextHop, ...]] = field(default_factory=dict)
    proxies: dict[str, ProxyPlan] = field(default_factory=dict)
    # NSF-triggered steering (classifier/next-function): SF type → path, switched with the
    # classifier part (it points at paths like re-classification does)
    steering: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def key(self) -> tuple[object, ...]:
        return (self.sff_id, self.locator, tuple(self.rules), tuple(sorted(self.reclass.items())),
                tuple(sorted(self.table.items())), tuple(sorted(self.proxies.items())),
                tuple(sorted(self.steering.items())))


def agent_config(a: AgentPlan) -> AgentConfig:
    loc = str(a.forwarder.locator)
    reclass: dict[str, tuple[int, int, str]] = {}
    for e in a.reclass:
        reclass.setdefault(e.result, (e.spi, e.si, loc))
    steering = {t: (spi, si, loc) for t, (spi, si) in a.steering.items()}
    return AgentConfig(a.forwarder.sff_id, loc, list(a.rules), reclass, dict(a.table),
                       dict(a.proxies), steering)


def configs(r: Rendering) -> dict[str, AgentConfig]:
    return {n: agent_config(a) for n, a in r.agents.items()}


def _union(old: AgentConfig | None, new: AgentConfig, classifier_from: AgentConfig | None,
           live: set[str] | None = None) -> AgentConfig:
    """New forwarding state plus the old entries still in use, and the classifier part of
    `classifier_from` (None: the agent is new, no classifier yet). Old proxies of instances
    that are gone (`live`: the instances that exist) are not kept: their interfaces are."""
    table = dict(old.table) if old else {}
    table.update(new.table)
    proxies = {k: p for k, p in (old.proxies.items() if old else ())
               if live is None or p.instance in live}
    # several instances may serve one (SPI, SI) and one instance several hops, so an old
    # entry stays next to the new ones unless the new state has it under another name (one
    # instance twice for one (SPI, SI) is refused by the agent); the entry holding an
    # instance's result socket is always named after the instance, so a socket never moves
    # between entries
    taken = {(p.instance, p.spi, p.si) for p in new.proxies.values()}
    kept: dict[str, ProxyPlan] = {}
    for k, p in proxies.items():
        if (p.instance, p.spi, p.si) in taken:
            continue
        if k in new.proxies:
            # the instance's main entry moves to another hop: its old hop stays served
            # until clean-up by an entry of its own (no socket: the main entry keeps it)
            k = f"{p.instance}-{p.spi}-{p.si}"
            p = replace(p, name=k, report_socket=None)
        kept[k] = p
    proxies = kept
    proxies.update(new.proxies)
    c = classifier_from
    return AgentConfig(new.sff_id, new.locator, list(c.rules) if c else [],
                       dict(c.reclass) if c else {}, table, proxies,
                       dict(c.steering) if c else {})


def _hold_new_sff_hops(old: AgentConfig | None, c: AgentConfig) -> AgentConfig:
    """`c` with every existing entry that gains a next-hop SFF kept as it was in `old`: the
    SFF sent to must hold its own new entries (a proxy for the new instance) before anyone
    sends to it, else it forwards by its old entry (seen: a new instance on E, C switched
    first, E still sent the flows back towards F: 8 to 13 packets lost per moved flow)."""
    if old is None:
        return c
    table = dict(c.table)
    held = False
    for k, hops in c.table.items():
        was = old.table.get(k)
        if was is None:
            continue
        before = {h.locator for h in was if h.kind == "sff"}
        if any(h.kind == "sff" and h.locator not in before for h in hops):
            table[k] = was
            held = True
    if not held:
        return c
    return AgentConfig(c.sff_id, c.locator, list(c.rules), dict(c.reclass), table,
                       dict(c.proxies), dict(c.steering))


def steps(old: dict[str, AgentConfig], new: dict[str, AgentConfig],
          live: set[str] | None = None) -> list[dict[str, AgentConfig | None]]:
    """The sequence of whole-agent states to push (None: remove the agent's SFC config).
    Each step is one transaction over the agents whose state it changes."""
    if all(old.get(n) is not None and old[n].key() == c.key() for n, c in new.items()) and (
            set(old) <= set(new)):
        return []
    # only weights/next-hop sets of existing entries changed, classifiers untouched and no
    # entry added or removed: one step
    simple = set(old) == set(new) and all(
        set(old[n].table) == set(new[n].table) and old[n].rules == new[n].rules
        and old[n].reclass == new[n].reclass and set(old[n].proxies) == set(new[n].proxies)
        and old[n].steering == new[n].steering
        for n in new)
    if simple:
        first = {n: _hold_new_sff_hops(old.get(n), c) for n, c in new.items()}
        held = {n: c for n, c in first.items() if c.key() != old[n].key()}
        if all(first[n] is c for n, c in new.items()) or not held:
            return [dict(new)]
        # the SFFs gaining traffic first, then those sending to them
        rest = {n: c for n, c in new.items() if c.key() != first[n].key()}
        return [held, rest] if rest else [held]
    out: list[dict[str, AgentConfig | None]] = []
    install = {n: _hold_new_sff_hops(old.get(n), _union(old.get(n), c, old.get(n), live))
               for n, c in new.items()}
    switch = {n: _union(old.get(n), c, c, live) for n, c in new.items()}
    cleanup: dict[str, AgentConfig | None] = dict(new)
    for n in old:
        if n not in new:
            cleanup[n] = None
    prev: dict[str, tuple[object, ...] | None] = {
        n: (c.key() if c is not None else None) for n, c in old.items()}
    for step in (install, switch, cleanup):
        changed: dict[str, AgentConfig | None] = {
            n: c for n, c in step.items()
            if (c.key() if c is not None else None) != prev.get(n)}
        if changed:
            out.append(changed)
            prev.update({n: (c.key() if c is not None else None) for n, c in changed.items()})
    return out


# ---- XML ------------------------------------------------------------------------------------

def _sub(parent: etree._Element, tag: str, text: object | None = None) -> etree._Element:
    e = etree.SubElement(parent, Q + tag)
    if text is not None:
        e.text = str(text)
    return e


def config_xml(c: AgentConfig | None) -> etree._Element:
    """`<config>` replacing the agent's `sfc` container (or deleting it for None)."""
    cfg = etree.Element(f"{{{NC_NS}}}config", nsmap={"nc": NC_NS})
    sfc = etree.SubElement(cfg, Q + "sfc", nsmap={None: NS})
    if c is None:
        sfc.set(f"{{{NC_NS}}}operation", "remove")
        return cfg
    sfc.set(f"{{{NC_NS}}}operation", "replace")
    if c.rules or c.reclass or c.steering:
        cl = _sub(sfc, "classifier")
        for r in c.rules:
            el = _sub(cl, "rule")
            _sub(el, "name", r.name)
            _sub(el, "order", r.order)
            m = _sub(el, "match")
            if r.ingress is not None:
                _sub(m, "ingress-interface", r.ingress)
            if r.src is not None:
                _sub(m, "source-prefix", r.src)
            if r.dst is not None:
                _sub(m, "destination-prefix", r.dst)
            if r.protocol is not None:
                _sub(m, "protocol", r.protocol)
            for tag, pr in (("source-ports", r.sport), ("destination-ports", r.dport)):
                if pr is not None:
                    p = _sub(m, tag)
                    _sub(p, "start", pr.start)
                    _sub(p, "end", pr.end)
            path = _sub(el, "path")
            _sub(path, "spi", r.spi)
            _sub(path, "si", r.si)
            _sub(path, "first-hop", r.first_hop)
        for result, (spi, si, first) in sorted(c.reclass.items()):
            el = _sub(cl, "reclassify")
            _sub(el, "result", result)
            _sub(el, "spi", spi)
            _sub(el, "si", si)
            _sub(el, "first-hop", first)
        for sf_type, (spi, si, first) in sorted(c.steering.items()):
            el = _sub(cl, "next-function")
            _sub(el, "sf-type", sf_type)
            _sub(el, "spi", spi)
            _sub(el, "si", si)
            _sub(el, "first-hop", first)
    fw = _sub(sfc, "forwarder")
    _sub(fw, "sff-id", c.sff_id)
    _sub(fw, "locator", c.locator)
    table = _sub(fw, "table")
    for (spi, si), hops in sorted(c.table.items()):
        e = _sub(table, "entry")
        _sub(e, "spi", spi)
        _sub(e, "si", si)
        if hops and hops[0].kind == "terminate":
            _sub(e, "terminate")
            continue
        if any(h.weight > 0 for h in hops):  # draining (weight 0): no new flows
            hops = tuple(h for h in hops if h.weight > 0)
        merged: dict[str, NextHop] = {}
        for h in hops:  # the agent keys next hops by locator: one per locator
            k = str(h.locator)
            if k in merged:
                h = NextHop(h.kind, h.locator, merged[k].weight + h.weight, None, h.transport)
            merged[k] = h
        for h in merged.values():
            nh = _sub(e, "next-hop")
            _sub(nh, "locator", h.locator)
            _sub(nh, "kind", h.kind)
            _sub(nh, "weight", max(1, h.weight))
    if c.proxies:
        px = _sub(sfc, "proxies")
        for p in sorted(c.proxies.values(), key=lambda p: p.name):
            el = _sub(px, "proxy")
            _sub(el, "name", p.name)
            _sub(el, "spi", p.spi)
            _sub(el, "si", p.si)
            _sub(el, "to-sf-interface", p.to_sf)
            _sub(el, "from-sf-interface", p.from_sf)
            _sub(el, "sf-mac", p.sf_mac)
            _sub(el, "weight", max(1, p.weight))
            if p.report_socket:
                _sub(el, "result-socket", p.report_socket)
    return cfg


def entry_xml(sff_id: int, locator: str, spi: int, si: int, hops: tuple[NextHop, ...]
              ) -> etree._Element:
    """A `<config>` merging one forwarding entry (the answer to a table miss)."""
    c = AgentConfig(sff_id, locator, table={(spi, si): hops})
    cfg = config_xml(c)
    sfc = cfg[0]
    del sfc.attrib[f"{{{NC_NS}}}operation"]
    return cfg


# ---- persistence (what each agent was given, so a restarted controller plans from it) ------

def to_json(c: AgentConfig) -> dict[str, Any]:
    def pr(p: PortRange | None) -> list[int] | None:
        return None if p is None else [p.start, p.end]

    return {
        "sff_id": c.sff_id, "locator": c.locator,
        "rules": [{"name": r.name, "order": r.order, "spi": r.spi, "si": r.si,
                   "first_hop": str(r.first_hop), "ingress": r.ingress,
                   "src": None if r.src is None else str(r.src),
                   "dst": None if r.dst is None else str(r.dst), "protocol": r.protocol,
                   "sport": pr(r.sport), "dport": pr(r.dport)} for r in c.rules],
        "reclass": {k: list(v) for k, v in c.reclass.items()},
        "table": [[spi, si, [[h.kind, None if h.locator is None else str(h.locator), h.weight,
                              h.instance, h.transport] for h in hops]]
                  for (spi, si), hops in sorted(c.table.items())],
        "proxies": [[p.name, p.spi, p.si, p.instance, p.to_sf, p.from_sf, p.sf_mac,
                     p.report_socket, p.weight] for p in c.proxies.values()],
        "steering": {k: list(v) for k, v in c.steering.items()},
    }


def from_json(d: dict[str, Any]) -> AgentConfig:
    def ip(v: str | None) -> Any:
        return None if v is None else ipaddress.ip_address(v)

    def net(v: str | None) -> Any:
        return None if v is None else ipaddress.ip_network(v)

    def pr(v: list[int] | None) -> PortRange | None:
        return None if v is None else PortRange(v[0], v[1])

    return AgentConfig(
        int(d["sff_id"]), str(d["locator"]),
        [ClassifierRule(r["name"], r["order"], r["spi"], r["si"], ip(r["first_hop"]),
                        r.get("ingress"), net(r["src"]), net(r["dst"]), r["protocol"],
                        pr(r["sport"]), pr(r["dport"])) for r in d["rules"]],
        {k: (v[0], v[1], v[2]) for k, v in d["reclass"].items()},
        {(spi, si): tuple(NextHop(h[0], ip(h[1]), h[2], h[3], h[4]) for h in hops)
         for spi, si, hops in d["table"]},
        {p[0]: ProxyPlan(*p) for p in d["proxies"]},
        {k: (v[0], v[1], v[2]) for k, v in d.get("steering", {}).items()})
