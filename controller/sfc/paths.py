"""SFC Policy Manager, translation half (seed §4.1): SFC policies + catalog → paths,
classifier rules and per-SFF forwarding tables, for every agent at once.

Each chain is one service function path: its SPI (configured, or allocated and kept across
restarts by `SpiAllocator`), SI 255 at the first function, one less per hop, and after the
last function an entry that ends the path. For every hop, every forwarder gets an entry
(seed §3, SF forwarding table): a forwarder serving instances of the hop's type sends to
them (proxy/SF next hops weighted by spare capacity, draining instances at weight 0: only
flows already on them), any other forwarder sends to the forwarders that do (weighted by the
sum of their instances' weights). A packet handed to another SFF therefore always lands
where an instance is local: no forwarding loop between SFFs by construction.

Types marked `steering-target` get a one-hop path too (NSF-triggered steering, seed §6): a
forwarder that receives a next-function request for the type rewrites the packet onto it.

`compile` refuses what cannot work, with the reason, before anything is pushed: unknown
type, a chain no instance can serve now or later (no instance and no DMS that makes them),
SPI exhaustion, cyclic or ambiguous re-classification rules, policies without classifier.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from controller.sfc.catalog import CatalogManager, Instance
from controller.sfc.model import (
    SI_INITIAL,
    Forwarder,
    IpAddr,
    IpNet,
    Match,
    PortRange,
    ReclassRule,
    SfcConfig,
)
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

Kind = Literal["sff", "sf", "proxy", "terminate"]
MAX_WEIGHT = 100
# Can several proxy entries of one agent share an SF's interfaces (one instance on several
# paths)? Yes since the agent's proxy restores by the flow state of the entry that handed the
# flow over (92cf068); except for types that re-classify (see _share_instances).
SHARED_PROXIES = True


def _bad(msg: str, path: str | None = None) -> RpcError:
    return RpcError("application", "invalid-value", msg, path=path)


@dataclass(frozen=True, order=True)
class NextHop:
    kind: Kind
    locator: IpAddr | None = None
    weight: int = 1
    instance: str | None = None  # the instance (its proxy entry) reached
    transport: str = "gre"


@dataclass(frozen=True)
class HopPlan:
    si: int
    sf_type: str
    instances: tuple[tuple[Instance, int], ...]  # (instance, weight)


@dataclass(frozen=True)
class PathPlan:
    spi: int
    name: str  # chain name, or the type of a steering path
    kind: Literal["chain", "steering"]
    hops: tuple[HopPlan, ...]
    ready: bool  # every hop has an instance: classifiers may use it

    @property
    def end_si(self) -> int:
        return SI_INITIAL - len(self.hops)


@dataclass(frozen=True)
class ClassifierRule:
    name: str
    order: int
    spi: int
    si: int
    first_hop: IpAddr
    ingress: str | None = None
    src: IpNet | None = None
    dst: IpNet | None = None
    protocol: int | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None


@dataclass(frozen=True)
class ReclassEntry:
    name: str
    result: str
    spi: int
    si: int
    from_spi: int | None = None


@dataclass(frozen=True)
class ProxyPlan:
    name: str
    spi: int
    si: int
    instance: str
    to_sf: str | None
    from_sf: str | None
    sf_mac: str | None
    report_socket: str | None
    # share of the hop's flows among this agent's proxies of one (SPI, SI) (the agent's
    # weighted rendezvous hashing; at least 1: the model has no weight 0)
    weight: int = 1


@dataclass
class AgentPlan:
    """Everything one agent (classifier and/or SFF) must hold."""

    forwarder: Forwarder
    rules: list[ClassifierRule] = field(default_factory=list)
    reclass: list[ReclassEntry] = field(default_factory=list)
    table: dict[tuple[int, int], tuple[NextHop, ...]] = field(default_factory=dict)
    proxies: dict[str, ProxyPlan] = field(default_factory=dict)
    steering: dict[str, tuple[int, int]] = field(default_factory=dict)  # type → (spi, si)


@dataclass
class Rendering:
    paths: dict[int, PathPlan] = field(default_factory=dict)
    agents: dict[str, AgentPlan] = field(default_factory=dict)
    waiting: list[str] = field(default_factory=list)  # why some paths are not ready
    demand: dict[str, int] = field(default_factory=dict)  # type → instances it needs

    def path_by_name(self, name: str, kind: str = "chain") -> PathPlan | None:
        return next((p for p in self.paths.values() if p.name == name and p.kind == kind),
                    None)

    def forwarder_by_id(self, sff_id: int) -> AgentPlan | None:
        return next((a for a in self.agents.values() if a.forwarder.sff_id == sff_id), None)


class SpiAllocator:
    """Stable SPIs: a path keeps its SPI while its chain keeps its list of types (a changed
    list of types is another path: new SPI, so no packet meets a half-changed path)."""

    def __init__(self, assigned: Mapping[str, int] | None = None) -> None:
        self.assigned: dict[str, int] = dict(assigned or {})

    @staticmethod
    def key(kind: str, name: str, types: Iterable[str]) -> str:
        return f"{kind}:{name}:{','.join(types)}"

    def allocate(self, wanted: Mapping[str, int | None], start: int, end: int
                 ) -> dict[str, int]:
        """SPIs for the path keys in `wanted` (value: a configured SPI or None). Returns the
        new assignment (not stored here until `commit`); raises RpcError on conflict or
        exhaustion."""
        out: dict[str, int] = {}
        fixed: dict[int, str] = {}
        for k, spi in wanted.items():
            if spi is None:
                continue
            if spi in fixed:
                raise _bad(f"chains {_pname(fixed[spi])} and {_pname(k)} are both "
                           f"configured with SPI {spi}")
            fixed[spi] = k
            out[k] = spi
        used = set(fixed)
        rest = [k for k, spi in wanted.items() if spi is None]
        # SPIs of paths being replaced stay installed until the switch is over: never hand
        # them to another path in the same change
        held = {spi for k, spi in self.assigned.items() if k not in wanted}
        for k in rest:  # keep what they had, unless a configured SPI took it
            had = self.assigned.get(k)
            if had is not None and had not in used and start <= had <= end:
                out[k] = had
                used.add(had)
        need = [k for k in rest if k not in out]
        used |= held
        free_count = (end - start + 1) - len([s for s in used if start <= s <= end])
        if len(need) > free_count:
            raise RpcError("application", "resource-denied",
                           f"SPI exhaustion: {len(need)} more path(s) need an SPI but the "
                           f"range {start}..{end} has {max(free_count, 0)} free",
                           app_tag="spi-exhausted")
        nxt = start
        for k in sorted(need):
            while nxt in used:
                nxt += 1
            out[k] = nxt
            used.add(nxt)
        return out

    def commit(self, assignment: Mapping[str, int]) -> None:
        self.assigned = dict(assignment)


def _pname(key: str) -> str:
    return repr(key.split(":")[1])


def _weights(insts: list[Instance]) -> list[tuple[Instance, int]]:
    """New-flow shares by spare capacity (a new, idle instance takes most new flows; an
    overloaded one still a few); draining instances 0 (only their established flows)."""
    out = []
    for i in insts:
        if i.state == "draining":
            out.append((i, 0))
            continue
        spare = max(0.0, 1.0 - i.load_percent / 100.0)
        out.append((i, max(1, round(MAX_WEIGHT * spare))))
    return out


def check_reclass(cfg: SfcConfig) -> None:
    """Re-classification rules must not cycle (a flow moved back and forth for ever) nor
    be ambiguous (one result on one chain leading to two chains)."""
    edges: dict[str, set[str]] = {c: set() for c in cfg.chains}
    seen: dict[tuple[str, str], str] = {}
    for r in sorted(cfg.reclass.values(), key=lambda r: r.name):
        if r.to_chain not in cfg.chains:
            raise _bad(f"re-classification rule {r.name}: no chain {r.to_chain!r}")
        if r.from_chain is not None and r.from_chain not in cfg.chains:
            raise _bad(f"re-classification rule {r.name}: no chain {r.from_chain!r}")
        if r.from_type not in cfg.types:
            raise _bad(f"re-classification rule {r.name}: unknown SF type {r.from_type!r}")
        sources = [r.from_chain] if r.from_chain else sorted(cfg.chains)
        hit = False
        for c in sources:
            if r.from_type not in cfg.chains[c].types:
                continue
            hit = True
            other = seen.get((c, r.result))
            if other is not None and other != r.name:
                raise _bad(f"re-classification rules {other} and {r.name} both act on "
                           f"result {r.result!r} on chain {c}")
            seen[(c, r.result)] = r.name
            edges[c].add(r.to_chain)
        if not hit:
            raise _bad(f"re-classification rule {r.name}: no chain it applies to contains "
                       f"type {r.from_type!r}")
    state: dict[str, int] = {}

    def visit(c: str, trail: list[str]) -> None:
        state[c] = 1
        for d in sorted(edges[c]):
            if state.get(d) == 1:
                cyc = [*trail[trail.index(d):], d] if d in trail else [c, d]
                raise RpcError("application", "invalid-value",
                               "cyclic re-classification: " + " -> ".join(cyc),
                               app_tag="reclassification-cycle")
            if d not in state:
                visit(d, [*trail, d])
        state[c] = 2

    for c in sorted(edges):
        if c not in state:
            visit(c, [c])


def _intersect(a: IpNet, b: IpNet) -> IpNet | None:
    if a.version != b.version or not a.overlaps(b):
        return None
    return a if a.prefixlen >= b.prefixlen else b


def _sources(m: Match, cfg: SfcConfig, policy: str) -> list[IpNet | None]:
    if m.trust_level is None:
        return list(m.src) or [None]
    levels = cfg.trust.get(m.trust_level)
    if levels is None:
        raise _bad(f"policy {policy}: unknown trust level {m.trust_level!r}")
    if not m.src:
        return list(levels)
    out = [x for a in m.src for b in levels if (x := _intersect(a, b)) is not None]
    if not out:
        raise _bad(f"policy {policy}: no source prefix of it is at trust level "
                   f"{m.trust_level!r}")
    return out


def compile(cfg: SfcConfig, catalog: CatalogManager, spis: SpiAllocator
            ) -> tuple[Rendering, dict[str, int]]:
    """The complete rendering and the SPI assignment it uses (commit it after pushing)."""
    for c in cfg.chains.values():
        for t in c.types:
            if t not in cfg.types:
                raise _bad(f"chain {c.name}: unknown SF type {t!r}")
    for p in cfg.policies.values():
        if p.chain not in cfg.chains:
            raise _bad(f"policy {p.name}: unknown chain {p.chain!r}")
    check_reclass(cfg)
    by_result: dict[str, ReclassRule] = {}
    for rule in sorted(cfg.reclass.values(), key=lambda x: x.name):
        other = by_result.setdefault(rule.result, rule)
        if other.to_chain != rule.to_chain:
            raise _bad(f"re-classification rules {other.name} and {rule.name}: the agents "
                       f"re-classify by result name, and {rule.result!r} cannot lead to both "
                       f"{other.to_chain} and {rule.to_chain}")
    if cfg.policies and not cfg.classifiers():
        raise _bad("SFC policies are configured but no forwarder is a classifier")
    for f in cfg.classifiers():
        if not f.ingress:
            raise _bad(f"forwarder {f.name} is a classifier but names no ingress-interface",
                       f"/i2nsf-sfc-policy:sfc/forwarders/forwarder[name='{f.name}']")
    if cfg.chains and not cfg.forwarders:
        raise _bad("chains are configured but there is no forwarder")

    # instances usable now: served by a configured forwarder (or NSH-aware with their own
    # locator)
    usable: dict[str, list[Instance]] = {}
    by_locator = {f.locator: f.name for f in cfg.forwarders.values()}
    for t in cfg.types:
        for i in catalog.by_type(t, include_draining=True):
            if i.forwarder is None and i.locator in by_locator:  # behind that SFF's proxy
                i = replace(i, forwarder=by_locator[i.locator])
            if not i.nsh_aware and not (i.to_sf and i.from_sf and i.sf_mac):
                log.warning("instance %s: NSH-unaware but its proxy interfaces or MAC are "
                            "unknown; unused", i.name)
                continue
            if i.forwarder is not None and i.forwarder not in cfg.forwarders:
                log.warning("instance %s: forwarder %s is not an SFC forwarder; unused",
                            i.name, i.forwarder)
                continue
            usable.setdefault(t, []).append(i)
    used_types = {t for c in cfg.chains.values() for t in c.types}
    used_types |= {n for n, t in cfg.types.items() if t.steering_target}
    waiting = []
    for t in sorted(used_types):
        if not any(i.state == "active" for i in usable.get(t, ())):
            if catalog.dms_for(cfg.types[t]) is None:
                users = sorted(c.name for c in cfg.chains.values() if t in c.types)
                raise RpcError(
                    "application", "operation-failed",
                    f"chain {users[0] if users else '(steering)'}: no instance of type {t!r} "
                    "is registered and no DMS is known that could create one",
                    app_tag="no-instance-possible")
            waiting.append(f"type {t}: waiting for an instance from the DMS")

    wanted: dict[str, int | None] = {}
    keys: dict[str, tuple[str, str, tuple[str, ...]]] = {}
    for c in cfg.chains.values():
        k = SpiAllocator.key("chain", c.name, c.types)
        wanted[k], keys[k] = c.spi, ("chain", c.name, c.types)
    for t in sorted(n for n, ty in cfg.types.items() if ty.steering_target):
        k = SpiAllocator.key("steer", t, (t,))
        wanted[k], keys[k] = None, ("steering", t, (t,))
    assignment = spis.allocate(wanted, cfg.spi_start, cfg.spi_end)

    r = Rendering(waiting=waiting)
    share = _share_instances(assignment, keys, usable, r,
                             {rule.from_type for rule in cfg.reclass.values()})
    for k, spi in assignment.items():
        kind, name, types = keys[k]
        hops = tuple(HopPlan(SI_INITIAL - n, t, tuple(_weights(share[(spi, SI_INITIAL - n)])))
                     for n, t in enumerate(types))
        ready = all(any(w > 0 for _i, w in h.instances) for h in hops)
        r.paths[spi] = PathPlan(spi, name, kind, hops, ready)  # type: ignore[arg-type]
    for f in cfg.forwarders.values():
        r.agents[f.name] = AgentPlan(f)
    for p in r.paths.values():
        _render_path(p, cfg, r)
    _render_classifiers(cfg, r, assignment)
    _one_result_socket(cfg, r, assignment)
    _name_proxies(r)
    return r, assignment


def _name_proxies(r: Rendering) -> None:
    """Each instance's main proxy entry (the one with its result socket, else its first
    hop) is named after the instance, the others `<instance>-<spi>-<si>`: the main entry and
    its socket keep their name when the instance moves hop (the agent's replace would
    otherwise unlink the path a renamed entry's new socket is bound to — SFC contract
    request 6)."""
    for a in r.agents.values():
        by_inst: dict[str, list[ProxyPlan]] = {}
        for p in a.proxies.values():
            by_inst.setdefault(p.instance, []).append(p)
        out: dict[str, ProxyPlan] = {}
        for inst, plans in sorted(by_inst.items()):
            main = min(plans, key=lambda p: (p.report_socket is None, p.spi, p.si))
            for p in plans:
                name = inst if p is main else f"{inst}-{p.spi}-{p.si}"
                out[name] = replace(p, name=name)
        a.proxies = out


def _share_instances(assignment: Mapping[str, int],
                     keys: Mapping[str, tuple[str, str, tuple[str, ...]]],
                     usable: Mapping[str, list[Instance]], r: Rendering,
                     reclassifying: set[str]) -> dict[tuple[int, int], list[Instance]]:
    """Which instances serve each (SPI, SI) hop.

    NSH-aware instances serve every hop of their type. An NSH-unaware instance sits behind
    proxy entries of its agent; with SHARED_PROXIES one instance may serve several hops (the
    agent's entries share its flow state and restore each returning packet with the path it
    was handed over on). Not for a type some re-classification rule listens to: the agent
    keeps a result's tag per flow for the whole instance, so an instance on both the source
    and the target path would tag the re-classified flow again and re-classify it for ever
    (SFC contract request 5) — those instances serve one hop each (round robin over the
    sorted names, chains before steering paths); a hop left without one waits and `demand`
    tells the Catalog Manager how many the type needs.

    Several instances of a type on one agent serve a hop side by side: their proxy entries
    of one (SPI, SI) carry weights and the agent spreads flows over them by weighted
    rendezvous hashing."""
    hops: dict[str, list[tuple[int, int]]] = {}
    for k, spi in sorted(assignment.items(), key=lambda kv: (keys[kv[0]][0] != "chain",
                                                             kv[1])):
        for n, t in enumerate(keys[k][2]):
            hops.setdefault(t, []).append((spi, SI_INITIAL - n))
    out: dict[tuple[int, int], list[Instance]] = {}
    for t, hs in hops.items():
        insts = usable.get(t, [])
        sharing = SHARED_PROXIES and t not in reclassifying
        aware = [i for i in insts if i.nsh_aware]
        own = [i for i in insts if not i.nsh_aware]
        for n, h in enumerate(hs):
            out[h] = aware + (own if sharing else own[n::len(hs)])
        r.demand[t] = len(hs) if own and not sharing else 1
        if own and not sharing and len(own) < len(hs):
            r.waiting.append(f"type {t}: {len(hs)} path hops need their own instance, "
                             f"{len(own)} registered")
    return out


def _one_result_socket(cfg: SfcConfig, r: Rendering, assignment: Mapping[str, int]) -> None:
    """An instance reports its results to one socket, which one proxy entry binds: keep it
    on the entry of the path where its results re-classify flows (else the lowest SPI)."""
    spi_of = {c.name: assignment[SpiAllocator.key("chain", c.name, c.types)]
              for c in cfg.chains.values()}
    acting: set[tuple[int, str]] = set()  # (spi, type) from which a rule moves flows
    for rule in cfg.reclass.values():
        for c in [rule.from_chain] if rule.from_chain else list(cfg.chains):
            if rule.from_type in cfg.chains[c].types:
                acting.add((spi_of[c], rule.from_type))
    guarded = {rule.from_type for rule in cfg.reclass.values()}
    for a in r.agents.values():
        by_inst: dict[str, list[ProxyPlan]] = {}
        for p in list(a.proxies.values()):
            t = r.paths[p.spi].hops[SI_INITIAL - p.si].sf_type
            if p.report_socket and (r.paths[p.spi].kind == "steering" or (
                    t in guarded and (p.spi, t) not in acting)):
                # the agents re-classify by result name alone: a tag from a hop no rule
                # applies to (e.g. the IDS again on the path it sent the flow to) would
                # move the flow again, so this proxy takes no results
                a.proxies[p.name] = p = replace(p, report_socket=None)
            if p.report_socket:
                by_inst.setdefault(p.instance, []).append(p)
        for plans in by_inst.values():
            if len(plans) < 2:
                continue
            t = r.paths[plans[0].spi].hops[SI_INITIAL - plans[0].si].sf_type
            keep = min(plans, key=lambda p: ((p.spi, t) not in acting, p.spi, p.si))
            for p in plans:
                if p is not keep:
                    a.proxies[p.name] = replace(p, report_socket=None)


def _render_path(p: PathPlan, cfg: SfcConfig, r: Rendering) -> None:
    for a in r.agents.values():
        f = a.forwarder
        for h in p.hops:
            local = [(i, w) for i, w in h.instances if i.forwarder == f.name]
            if local:
                hops = tuple(NextHop("sf" if i.nsh_aware else "proxy", i.locator, w, i.name)
                             for i, w in local)
            else:
                by_fwd: dict[str, int] = {}
                own: list[NextHop] = []
                for i, w in h.instances:
                    if i.forwarder is None:  # an NSH-aware SF on its own locator
                        own.append(NextHop("sf", i.locator, w, i.name))
                    else:
                        by_fwd[i.forwarder] = by_fwd.get(i.forwarder, 0) + w
                hops = tuple(own) + tuple(
                    NextHop("sff", cfg.forwarders[n].locator, w) for n, w in sorted(by_fwd.items()))
            if hops:
                a.table[(p.spi, h.si)] = hops
            for i, w in local:
                if not i.nsh_aware:
                    # provisional name; _name_proxies gives one entry the instance's name
                    name = f"{i.name}-{p.spi}-{h.si}"
                    a.proxies[name] = ProxyPlan(name, p.spi, h.si, i.name, i.to_sf, i.from_sf,
                                                i.sf_mac, i.report_socket, max(1, w))
        a.table[(p.spi, p.end_si)] = (
            (NextHop("sff", f.egress_locator),) if f.egress_locator is not None
            and f.egress_locator != f.locator else (NextHop("terminate"),))
        if p.kind == "steering" and p.ready:
            a.steering[p.name] = (p.spi, SI_INITIAL)


def _render_classifiers(cfg: SfcConfig, r: Rendering, assignment: Mapping[str, int]) -> None:
    spi_of = {c.name: assignment[SpiAllocator.key("chain", c.name, c.types)]
              for c in cfg.chains.values()}
    rules: list[tuple[str, IpNet | None, IpNet | None, int, Match]] = []
    for p in sorted(cfg.policies.values(), key=lambda p: (p.priority, p.name)):
        path = r.paths[spi_of[p.chain]]
        if not path.ready:
            log.info("policy %s: chain %s has no instance yet; not classified", p.name,
                     p.chain)
            continue
        n = 0
        for s in _sources(p.match, cfg, p.name):
            for d in list(p.match.dst) or [None]:
                if s is not None and d is not None and s.version != d.version:
                    continue
                n += 1
                rules.append((f"{p.name}-{n}" if n > 1 else p.name, s, d, path.spi, p.match))
        if n == 0:
            raise _bad(f"policy {p.name}: its source and destination prefixes are of "
                       "different address families")
    reclass: list[ReclassEntry] = []
    for rule in sorted(cfg.reclass.values(), key=lambda x: x.name):
        to = r.paths[spi_of[rule.to_chain]]
        if not to.ready:
            continue
        sources = [rule.from_chain] if rule.from_chain else sorted(cfg.chains)
        for c in sources:
            if rule.from_type in cfg.chains[c].types:
                reclass.append(ReclassEntry(f"{rule.name}-{c}", rule.result, to.spi,
                                            SI_INITIAL, spi_of[c]))
    # NSF-triggered steering (seed §6) needs no entry here: every SFF holds the steering map
    # (AgentPlan.steering, rendered as classifier/next-function), so a function's
    # next-function request (MD2 TLV 3) puts the flow on the type's one-hop path at the SFF
    # that got it. Re-classification results and type names are separate keys on the agent.
    for a in r.agents.values():
        # every SFF re-classifies a flow its proxy tagged (seed §7.2: classifier in the SFF,
        # no trip to a standalone classifier); only classifiers take new traffic
        a.reclass = list(reclass)
        if not a.forwarder.classifier:
            continue
        ifs: list[str | None] = list(a.forwarder.ingress) or [None]
        order = 0
        for name, s, d, spi, m in rules:
            for itf in ifs:
                order += 10
                a.rules.append(ClassifierRule(
                    name if len(ifs) == 1 else f"{name}@{itf}", order, spi, SI_INITIAL,
                    a.forwarder.locator, itf, s, d, m.protocol, m.sport, m.dport))


def loops(r: Rendering) -> list[str]:
    """Forwarding loops in a rendering (should be none by construction; checked before a
    push and when an SFF reports one)."""
    out = []
    by_loc: dict[IpAddr, AgentPlan] = {a.forwarder.locator: a for a in r.agents.values()}
    for a in r.agents.values():
        for (spi, si), hops in a.table.items():
            for h in hops:
                if h.kind != "sff" or h.locator is None:
                    continue
                seen = {a.forwarder.name}
                cur = by_loc.get(h.locator)
                while cur is not None:
                    if cur.forwarder.name in seen:
                        out.append(f"SPI {spi} SI {si}: loop through {cur.forwarder.name}")
                        break
                    seen.add(cur.forwarder.name)
                    nxt = [x for x in cur.table.get((spi, si), ()) if x.kind == "sff"]
                    cur = by_loc.get(nxt[0].locator) if nxt and nxt[0].locator else None
    return out


def parse_ip(s: str) -> IpAddr:
    return ipaddress.ip_address(s)
