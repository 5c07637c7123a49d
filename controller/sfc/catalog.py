"""SFC Catalog Manager (seed §4.2, §5.3): the SF instances there are, their load, and when
to ask a Developer's Management System for one more or one fewer.

Instances come from DMS registrations (the `i2nsf-sfc-catalog` RPCs on the controller's
northbound); each DMS sends periodic load reports. `evaluate` applies the per-type
watermarks with hysteresis: a mean load above the high watermark for `hold-time` asks for a
new instance (once: the request stays pending until an instance of that type registers or the
request times out); a mean load below the low watermark for `hold-time`, when the remaining
instances would stay below the high watermark, *drains* the least loaded instance: the
Policy Manager keeps it in the SFF tables with weight 0 (flows already on it stay, new flows
go elsewhere) and the DMS is asked to remove it once it carries no traffic (or the drain
time ran out). Membership changes call `on_change` so the Policy Manager rebalances.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.sfc.model import IpAddr, SfType

log = logging.getLogger(__name__)

State = Literal["active", "draining"]


class CatalogError(ValueError):
    """A registration or report the catalog refuses (the RPC's rpc-error; `tag` is the
    error-tag i2nsf-sfc-catalog documents for it)."""

    def __init__(self, message: str, tag: str = "invalid-value") -> None:
        super().__init__(message)
        self.tag = tag


@dataclass(frozen=True)
class Load:
    pps: float = 0.0
    bps: float = 0.0
    cpu: float = 0.0
    queue: int = 0
    time: float = 0.0


@dataclass(frozen=True)
class Instance:
    name: str
    sf_type: str
    dms: str
    locator: IpAddr
    capacity_pps: int
    forwarder: str | None = None  # the SFF agent whose proxy serves it (None: own locator)
    transport: str = "gre"
    capabilities: tuple[str, ...] = ()
    to_sf: str | None = None  # host-side veth towards the SF's sf-in
    from_sf: str | None = None  # host-side veth of the SF's sf-out
    sf_mac: str | None = None
    report_socket: str | None = None
    nsh_aware: bool = False
    registered: float = 0.0
    state: State = "active"
    drain_since: float | None = None
    load: Load = Load()

    @property
    def load_percent(self) -> float:
        if self.capacity_pps <= 0:
            return 100.0
        return min(100.0, 100.0 * self.load.pps / self.capacity_pps)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in (
            "name", "sf_type", "dms", "capacity_pps", "forwarder", "transport", "to_sf",
            "from_sf", "sf_mac", "report_socket", "nsh_aware", "registered", "state",
            "drain_since")}
        d["locator"] = str(self.locator)
        d["capabilities"] = list(self.capabilities)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        d = dict(d)
        d["locator"] = ipaddress.ip_address(d["locator"])
        d["capabilities"] = tuple(d.get("capabilities", ()))
        return cls(**d)


@dataclass(frozen=True)
class ScaleRequest:
    kind: Literal["create", "remove"]
    sf_type: str
    dms: str
    instance: str | None = None  # for "remove"
    reason: str = ""


@dataclass
class _TypeState:
    above_since: float | None = None
    below_since: float | None = None
    last_action: float = float("-inf")
    pending_create: float | None = None  # when the create was asked for
    pending_dms: str | None = None


@dataclass
class CatalogManager:
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[str], None] | None = None  # membership changed: rebalance
    create_timeout: float = 30.0
    drain_timeout_factor: float = 10.0  # drain ends after this many hold-times at most
    instances: dict[str, Instance] = field(default_factory=dict)
    _types: dict[str, _TypeState] = field(default_factory=dict)
    _known_dms: dict[str, set[str]] = field(default_factory=dict)  # type → DMSs seen

    # ---- registrations (DMS → controller) -------------------------------------------------

    def register(self, inst: Instance) -> bool:
        """Add or update an instance. True if the SFF tables must change."""
        if not inst.name:
            raise CatalogError("an instance needs a name")
        if inst.capacity_pps <= 0:
            raise CatalogError(f"instance {inst.name}: capacity must be positive")
        if inst.transport != "gre":
            raise CatalogError(f"instance {inst.name}: transport {inst.transport!r} is not "
                               "supported (only gre)")
        old = self.instances.get(inst.name)
        if old is not None and old.sf_type != inst.sf_type:
            raise CatalogError(f"instance {inst.name} is already registered as type "
                               f"{old.sf_type!r}; unregister it first", "data-exists")
        if old is not None and old.dms != inst.dms:
            raise CatalogError(f"instance {inst.name} belongs to DMS {old.dms!r}",
                               "data-exists")
        inst = replace(inst, registered=old.registered if old else self.clock(),
                       load=old.load if old else Load(),
                       state=old.state if old else "active",
                       drain_since=old.drain_since if old else None)
        self.instances[inst.name] = inst
        self._known_dms.setdefault(inst.sf_type, set()).add(inst.dms)
        ts = self._types.setdefault(inst.sf_type, _TypeState())
        if ts.pending_create is not None and (ts.pending_dms in (None, inst.dms)):
            ts.pending_create = ts.pending_dms = None
        changed = old is None or _placement(old) != _placement(inst)
        log.info("catalog: instance %s (%s) %s by DMS %s at %s, capacity %d pps", inst.name,
                 inst.sf_type, "registered" if old is None else "re-registered", inst.dms,
                 inst.locator, inst.capacity_pps)
        if changed and self.on_change:
            self.on_change(f"instance {inst.name} ({inst.sf_type}) registered")
        return changed

    def unregister(self, name: str, dms: str | None = None) -> Instance:
        inst = self.instances.get(name)
        if inst is None:
            raise CatalogError(f"no instance {name!r} is registered")
        if dms is not None and inst.dms != dms:
            raise CatalogError(f"instance {name} belongs to DMS {inst.dms!r}",
                               "access-denied")
        del self.instances[name]
        log.info("catalog: instance %s (%s) unregistered", name, inst.sf_type)
        if self.on_change:
            self.on_change(f"instance {name} ({inst.sf_type}) unregistered")
        return inst

    def report_load(self, name: str, pps: float, bps: float = 0.0, cpu: float = 0.0,
                    queue: int = 0) -> Instance:
        inst = self.instances.get(name)
        if inst is None:
            raise CatalogError(f"no instance {name!r} is registered")
        if min(pps, bps, cpu, queue) < 0:
            raise CatalogError("load values cannot be negative")
        inst = replace(inst, load=Load(pps, bps, cpu, queue, self.clock()))
        self.instances[name] = inst
        return inst

    # ---- queries (Policy Manager) ---------------------------------------------------------

    def by_type(self, sf_type: str, *, include_draining: bool = False) -> list[Instance]:
        """Instances of a type, by name (draining ones only when asked)."""
        return sorted((i for i in self.instances.values() if i.sf_type == sf_type and (
            include_draining or i.state == "active")), key=lambda i: i.name)

    def dms_for(self, t: SfType) -> str | None:
        """Which DMS can make instances of `t`: the configured one, else the only one that
        registered instances of it."""
        if t.scaling.dms:
            return t.scaling.dms
        seen = sorted(self._known_dms.get(t.name, ()))
        return seen[0] if seen else None

    def type_load(self, sf_type: str) -> float | None:
        """Mean load in percent of the active instances (None: there are none)."""
        act = self.by_type(sf_type)
        if not act:
            return None
        return sum(i.load_percent for i in act) / len(act)

    def pending(self, sf_type: str) -> bool:
        ts = self._types.get(sf_type)
        return ts is not None and ts.pending_create is not None

    # ---- scaling (seed §5.3 steps 1-2) ----------------------------------------------------

    def evaluate(self, types: Iterable[SfType], demand: Mapping[str, int] | None = None
                 ) -> list[ScaleRequest]:
        """What to ask the DMSs now; call after load reports (and periodically). `demand`:
        instances a type needs for the paths to be served at all (the Policy Manager's)."""
        now = self.clock()
        out: list[ScaleRequest] = []
        for t in types:
            ts = self._types.setdefault(t.name, _TypeState())
            sc = t.scaling
            hold = sc.hold_ms / 1000.0
            if ts.pending_create is not None and now - ts.pending_create > self.create_timeout:
                log.warning("catalog: DMS %s did not register a new %s instance within %.0f s",
                            ts.pending_dms, t.name, self.create_timeout)
                ts.pending_create = ts.pending_dms = None
            out.extend(self._finish_drains(t, now, hold))
            active = self.by_type(t.name)
            dms = self.dms_for(t)
            n = len(active) + (1 if ts.pending_create is not None else 0)
            need = min(sc.max_instances, max(sc.min_instances, (demand or {}).get(t.name, 0)))
            if dms is not None and n < need and ts.pending_create is None:
                out.append(self._create(t, ts, dms, now, f"{len(active)} instance(s), "
                                        f"{need} needed"))
                continue
            if not active:
                continue
            # an instance that has not reported yet (just created) says nothing about the
            # load: it neither lowers the mean nor allows a scale-in
            reported = [i for i in active if i.load.time >= i.registered and i.load.time > 0]
            if not reported:
                continue
            load = sum(i.load_percent for i in reported) / len(reported)
            if len(reported) < len(active) and load <= sc.high:
                ts.below_since = None
                continue
            if load > sc.high:
                ts.below_since = None
                if ts.above_since is None:
                    ts.above_since = now
                if (now - ts.above_since >= hold and now - ts.last_action >= hold
                        and ts.pending_create is None and n < sc.max_instances
                        and dms is not None):
                    out.append(self._create(t, ts, dms, now, f"mean load {load:.0f} % above "
                                            f"the high watermark {sc.high} %"))
                    ts.above_since = None
                continue
            ts.above_since = None
            if load < sc.low and len(active) > need:
                victim = min(active, key=lambda i: (i.load.pps, -i.registered, i.name))
                rest = [i for i in active if i is not victim]
                cap = sum(i.capacity_pps for i in rest)
                after = 100.0 * sum(i.load.pps for i in active) / cap if cap else 100.0
                if after >= sc.high:
                    ts.below_since = None
                    continue
                if ts.below_since is None:
                    ts.below_since = now
                newest = max(i.registered for i in active)
                if (now - ts.below_since >= hold and now - ts.last_action >= 2 * hold
                        and now - newest >= 2 * hold):
                    self.instances[victim.name] = replace(victim, state="draining",
                                                          drain_since=now)
                    ts.last_action, ts.below_since = now, None
                    log.info("catalog: draining %s (%s): mean load %.0f %% below the low "
                             "watermark %d %%", victim.name, t.name, load, sc.low)
                    if self.on_change:
                        self.on_change(f"instance {victim.name} ({t.name}) draining")
            else:
                ts.below_since = None
        return out

    def _create(self, t: SfType, ts: _TypeState, dms: str, now: float, why: str
                ) -> ScaleRequest:
        ts.pending_create, ts.pending_dms, ts.last_action = now, dms, now
        log.info("catalog: asking DMS %s for a new %s instance (%s)", dms, t.name, why)
        return ScaleRequest("create", t.name, dms, reason=why)

    def _finish_drains(self, t: SfType, now: float, hold: float) -> list[ScaleRequest]:
        out = []
        for i in self.by_type(t.name, include_draining=True):
            if i.state != "draining" or i.drain_since is None:
                continue
            idle = i.load.time > i.drain_since and i.load.pps < 1.0
            if idle or now - i.drain_since >= hold * self.drain_timeout_factor:
                self.instances[i.name] = replace(i, drain_since=None)  # ask once
                out.append(ScaleRequest("remove", t.name, i.dms, i.name,
                                        "drained" if idle else "drain time over"))
        return out

    def cancel_pending(self, sf_type: str) -> None:
        """The DMS refused a create: allow a new attempt after hold-time."""
        ts = self._types.get(sf_type)
        if ts is not None:
            ts.pending_create = ts.pending_dms = None

    # ---- persistence ----------------------------------------------------------------------

    def dump(self) -> list[dict[str, Any]]:
        return [i.to_dict() for i in sorted(self.instances.values(), key=lambda i: i.name)]

    def restore(self, docs: Iterable[dict[str, Any]]) -> None:
        """Instances from the store (controller restart). Times were of the previous
        process's clock and loads are stale: both start again (the DMSs report anew)."""
        now = self.clock()
        for d in docs:
            inst = Instance.from_dict(d)
            inst = replace(inst, registered=now, load=Load(),
                           drain_since=now if inst.state == "draining" else None)
            self.instances[inst.name] = inst
            self._known_dms.setdefault(inst.sf_type, set()).add(inst.dms)


def _placement(i: Instance) -> tuple[object, ...]:
    """What the SFF/proxy configuration depends on (not the load)."""
    return (i.locator, i.forwarder, i.transport, i.to_sf, i.from_sf, i.sf_mac,
            i.report_socket, i.nsh_aware, i.state, i.capacity_pps)
