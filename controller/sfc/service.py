"""The SFC service: keeps every classifier and SFF in line with the SFC policies and the
catalog, answers table misses, reacts to loops, and drives scaling through the DMSs.

Nothing here blocks a NETCONF commit: `apply_config` records the desired state and wakes the
loop, which compiles (paths.compile), plans the make-before-break steps (render.steps) and
pushes each as one all-or-nothing transaction over all agents it touches (the controller's
`transact`: candidate edits validated everywhere, confirmed commits, confirm; any failure
rolls every agent back). What was pushed, the SPI assignment and the catalog are kept in the
store, so a restarted controller renders the same paths and pushes nothing new.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from controller.core.engine import wait_event
from controller.core.nc_client import NcError
from controller.sfc import paths, render
from controller.sfc.catalog import CatalogError, CatalogManager, Instance, ScaleRequest
from controller.sfc.dms import DmsClient
from controller.sfc.model import NS as SFCP_NS
from controller.sfc.model import SfcConfig
from controller.sfc.paths import Rendering, SpiAllocator
from controller.sfc.render import AgentConfig
from controller.sfc.state import state_xml
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)

SFC_NSF_NS = render.NS
NQ = f"{{{SFC_NSF_NS}}}"
NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
META_SPIS, META_CATALOG, META_PUSHED = "sfc.spis", "sfc.catalog", "sfc.pushed"
LOOP_WINDOW = 10.0  # a second loop report on a path within this long after a fix withdraws it


@dataclass
class SfcStats:
    pushes: int = 0
    pushes_failed: int = 0
    table_misses: int = 0
    table_misses_answered: int = 0
    last_miss_answer_us: int = 0  # notification arrival → entry written to the session
    last_miss_applied_us: int = 0  # … → the agent's ok
    miss_answer_us: list[int] = field(default_factory=list)
    loops_reported: int = 0
    scale_outs: int = 0
    scale_ins: int = 0


@dataclass
class Event:
    seq: int
    time: float
    kind: str
    detail: str
    spi: int | None = None
    # the inner 5-tuple of an inspection result: FLOW_LEAVES → value (as text)
    flow: dict[str, str] | None = None


FLOW_LEAVES = ("source", "destination", "protocol", "source-port", "destination-port")


def _flow(el: etree._Element | None) -> dict[str, str] | None:
    """The 5-tuple of an agent's inspection-result notification, validated (an agent's
    text is not trusted into our own notification: addresses, protocol, ports checked)."""
    if el is None:
        return None
    out: dict[str, str] = {}
    for leaf in FLOW_LEAVES:
        v = (el.findtext(NQ + leaf) or "").strip()
        if not v:
            continue
        try:
            if leaf in ("source", "destination"):
                out[leaf] = str(ipaddress.ip_address(v))
            elif 0 <= int(v) <= (255 if leaf == "protocol" else 65535):
                out[leaf] = str(int(v))
        except ValueError:
            log.warning("inspection-result: bad flow %s %r ignored", leaf, v)
    return out or None


class SfcService:
    """`sessions()` gives the controller's southbound sessions by NSF name, shared with the
    IPsec service: one session per NSF, and `locked` takes the same per-NSF locks, so the two
    services' transactions on an NSF never interleave. `transact(sessions, edits)` is the
    controller's all-or-nothing transaction (with its journal of confirmed commits)."""

    def __init__(self, store: Any, sessions: Callable[[], Mapping[str, Any]], *,
                 transact: Callable[..., Any], locked: Callable[..., Any],
                 clock: Callable[[], float] = time.monotonic,
                 rpc_timeout: float = 15.0, tick: float = 0.25) -> None:
        self.store = store
        self.sessions = sessions
        self._transact = transact
        self._locked = locked
        self.clock = clock
        self.rpc_timeout = rpc_timeout
        self.tick = tick
        self.cfg = SfcConfig()
        self.catalog = CatalogManager(clock=clock, on_change=self._catalog_changed)
        self.spis = SpiAllocator()
        self.rendering: Rendering | None = None  # the one being pushed (or pushed)
        self.rendering_pushed: Rendering | None = None
        self.pushed: dict[str, AgentConfig] = {}
        self.path_status: dict[int, tuple[str, str | None]] = {}
        self.generation: dict[int, int] = {}
        self.withdrawn: dict[int, str] = {}
        self._loop_fix: dict[int, float] = {}
        self.stats = SfcStats()
        self.events: collections.deque[Event] = collections.deque(maxlen=256)
        self._seq = 0
        self.notify: Callable[[etree._Element], None] | None = None
        self.dms: dict[str, DmsClient] = {}
        self._dirty = True
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_at = 0.0
        self._failures = 0
        self._idle = asyncio.Event()
        self._names: dict[str, int] = {}
        self.on_event: Callable[[Event], None] | None = None  # tests, demo

    # ---- persistence ----------------------------------------------------------------------

    def load(self) -> None:
        raw = self.store.get_meta(META_SPIS)
        if raw:
            self.spis = SpiAllocator(json.loads(raw))
        raw = self.store.get_meta(META_CATALOG)
        if raw:
            self.catalog.restore(json.loads(raw))
        raw = self.store.get_meta(META_PUSHED)
        if raw:
            self.pushed = {n: render.from_json(d) for n, d in json.loads(raw).items()}

    def _save_pushed(self) -> None:
        with self.store.transaction():
            self.store.put_meta(META_PUSHED, json.dumps(
                {n: render.to_json(c) for n, c in sorted(self.pushed.items())}))

    def _save_catalog(self) -> None:
        with self.store.transaction():
            self.store.put_meta(META_CATALOG, json.dumps(self.catalog.dump()))

    def _save_spis(self) -> None:
        with self.store.transaction():
            self.store.put_meta(META_SPIS, json.dumps(self.spis.assigned, sort_keys=True))

    # ---- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="sfc-service")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for t in list(self._tasks):
            t.cancel()
        for c in self.dms.values():
            c.close()

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def wake(self) -> None:
        self._dirty = True
        if self._wake is not None:
            self._wake.set()

    # ---- configuration --------------------------------------------------------------------

    def check(self, cfg: SfcConfig) -> None:
        """What libyang cannot check; raises RpcError (the commit's rpc-error)."""
        known = self.sessions()
        for f in cfg.forwarders.values():
            if f.name not in known:
                raise RpcError("application", "invalid-value",
                               f"forwarder {f.name}: no NSF of that name in the inventory",
                               path=f"/sfc/forwarders/forwarder[name='{f.name}']")
        paths.compile(cfg, self.catalog, SpiAllocator(self.spis.assigned))

    def apply_config(self, cfg: SfcConfig) -> None:
        if cfg != self.cfg:
            self.withdrawn.clear()  # a new configuration gets a new chance
            self._retry_at = 0.0  # and is tried at once
        self.cfg = cfg
        for name, s in cfg.dms.items():
            if name in self.dms:
                self.dms[name].update(s)
            else:
                self.dms[name] = DmsClient(s)
        for name in list(self.dms):
            if name not in cfg.dms:
                self.dms.pop(name).close()
        self.wake()

    def _catalog_changed(self, why: str) -> None:
        self.event("catalog", why)
        self.wake()

    # ---- events ---------------------------------------------------------------------------

    def event(self, kind: str, detail: str, spi: int | None = None,
              flow: dict[str, str] | None = None) -> Event:
        self._seq += 1
        ev = Event(self._seq, time.time(), kind, detail, spi, flow or None)
        self.events.append(ev)
        log.info("sfc event %s: %s", kind, detail)
        if self.notify is not None:
            n = etree.Element(f"{{{SFCP_NS}}}sfc-event", nsmap={None: SFCP_NS})
            etree.SubElement(n, f"{{{SFCP_NS}}}kind").text = kind
            etree.SubElement(n, f"{{{SFCP_NS}}}detail").text = detail
            if spi is not None:
                etree.SubElement(n, f"{{{SFCP_NS}}}spi").text = str(spi)
            if ev.flow:
                f = etree.SubElement(n, f"{{{SFCP_NS}}}flow")
                for leaf in FLOW_LEAVES:
                    if leaf in ev.flow:
                        etree.SubElement(f, f"{{{SFCP_NS}}}{leaf}").text = ev.flow[leaf]
            try:
                self.notify(n)
            except Exception:
                log.exception("sfc-event notification failed")
        if self.on_event is not None:
            self.on_event(ev)
        return ev

    # ---- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        assert self._wake is not None
        while True:
            await wait_event(self._wake, self.tick)  # never swallows the stop's cancel
            self._wake.clear()
            try:
                self._scale()
                if self._dirty and self.clock() >= self._retry_at:
                    self._dirty = False
                    self._idle.clear()
                    await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("SFC service step failed")
            if not self._dirty:
                self._idle.set()

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until the last change is pushed (tests, CLI)."""
        await asyncio.wait_for(self._wait_settled(), timeout)

    async def _wait_settled(self) -> None:
        while self._dirty or not self._idle.is_set():
            await asyncio.sleep(0.01)

    async def reconcile(self, force: bool = False) -> bool:
        """Compile, then push the steps from what agents hold to the new rendering."""
        cfg = self.cfg
        t_start = time.perf_counter()
        try:
            r, assignment = paths.compile(self._effective(cfg), self.catalog, self.spis)
        except RpcError as exc:
            self.event("compile-failed", exc.message)
            for spi in self.path_status:
                self.path_status[spi] = ("failed", exc.message)
            return False
        bad = paths.loops(r)
        if bad:
            self.event("compile-failed", "; ".join(bad))
            return False
        new = render.configs(r)
        # a forced resync rewrites every agent with its whole state in one transaction
        plan: list[Any] = [dict(new)] if force else render.steps(
            self.pushed, new, set(self.catalog.instances))
        for spi in r.paths:
            if spi not in self.path_status or self.path_status[spi][0] != "active":
                self.path_status[spi] = ("pending", None)
        self.rendering = r
        t0 = time.perf_counter()
        log.debug("sfc: compiled %d paths for %d agents in %.1f ms, %d step(s)", len(r.paths),
                  len(new), 1000 * (t0 - t_start), len(plan))
        for i, step in enumerate(plan):
            ok = await self._push(step, f"step {i + 1}/{len(plan)}")
            if not ok:
                why = self.events[-1].detail if self.events else "push failed"
                before = self.rendering_pushed.paths if self.rendering_pushed else {}
                for spi, p in r.paths.items():
                    if before.get(spi) != p:  # the previous version, if any, still forwards
                        self.path_status[spi] = ("failed", why)
                self._failures += 1
                self._retry_at = self.clock() + min(30.0, 0.5 * 2 ** min(self._failures, 6))
                self._dirty = True
                return False
        self._failures = 0
        for spi, p in r.paths.items():
            old_p = self.rendering_pushed.paths.get(spi) if self.rendering_pushed else None
            if old_p != p:
                self.generation[spi] = self.generation.get(spi, 0) + 1
        self.rendering_pushed = r
        self.spis.commit(assignment)
        self._save_spis()
        self.pushed = new
        self._save_pushed()
        for spi in list(self.path_status):
            if spi not in r.paths:
                del self.path_status[spi]
        for spi, p in r.paths.items():
            if spi in self.withdrawn:
                self.path_status[spi] = ("withdrawn", self.withdrawn[spi])
            elif not p.ready:
                self.path_status[spi] = ("pending", "; ".join(r.waiting) or None)
            else:
                self.path_status[spi] = ("active", None)
        if plan:
            self.event("paths-pushed", f"{len(r.paths)} path(s) on {len(new)} agent(s) in "
                       f"{len(plan)} step(s), {1000 * (time.perf_counter() - t0):.1f} ms")
        return bool(plan)

    def _effective(self, cfg: SfcConfig) -> SfcConfig:
        """The configuration without policies on withdrawn paths."""
        if not self.withdrawn or self.rendering is None:
            return cfg
        gone = {p.name for spi, p in self.rendering.paths.items() if spi in self.withdrawn}
        out = SfcConfig(**{**cfg.__dict__})
        out.policies = {n: p for n, p in cfg.policies.items() if p.chain not in gone}
        return out

    async def _push(self, step: Mapping[str, AgentConfig | None], what: str) -> bool:
        sessions = self.sessions()
        missing = [n for n in step if n not in sessions]
        if missing:
            self.event("push-failed", f"{what}: no session for {', '.join(missing)}")
            self.stats.pushes_failed += 1
            return False
        involved = {n: sessions[n] for n in step}
        edits = {n: render.config_xml(c) for n, c in step.items()}
        self.stats.pushes += 1
        down = [n for n, x in involved.items()
                if getattr(x, "client", None) is None or x.client.closed.is_set()]
        if down:
            self.stats.pushes_failed += 1
            self.event("push-failed", f"{what}: {', '.join(sorted(down))} not connected; "
                       "nothing changed")
            return False
        try:
            async with self._locked(involved):
                await self._transact(involved, edits)
        except Exception as exc:
            self.stats.pushes_failed += 1
            self.event("push-failed", f"{what}: {exc}; rolled back on every agent")
            return False
        for n, c in step.items():
            if c is None:
                self.pushed.pop(n, None)
            else:
                self.pushed[n] = c
        self._save_pushed()
        return True

    async def resync_agent(self, name: str) -> None:
        """An agent (re)connected: give it the whole of what it should hold."""
        c = self.pushed.get(name)
        if c is None:
            self._retry_at = 0.0  # what failed for want of this session: try again now
            self.wake()
            return
        if not await self._push({name: c}, f"resync of {name}"):
            self.wake()

    # ---- scaling --------------------------------------------------------------------------

    def _scale(self) -> None:
        demand = self.rendering.demand if self.rendering is not None else None
        for req in self.catalog.evaluate(self.cfg.types.values(), demand):
            self._spawn(self._ask_dms(req))

    def _instance_name(self, sf_type: str) -> str:
        n = self._names.get(sf_type, 0)
        while True:
            n += 1
            name = f"{sf_type}-{n}"
            if name not in self.catalog.instances:
                self._names[sf_type] = n
                return name

    async def _ask_dms(self, req: ScaleRequest) -> None:
        client = self.dms.get(req.dms)
        if client is None:
            self.event("scale-failed", f"{req.kind} {req.sf_type}: no dms-servers entry for "
                       f"DMS {req.dms!r}")
            if req.kind == "create":
                self.catalog.cancel_pending(req.sf_type)
            return
        try:
            if req.kind == "create":
                name = self._instance_name(req.sf_type)
                self.event("scale-out", f"asking DMS {req.dms} for {req.sf_type} instance "
                           f"{name} ({req.reason})")
                self.stats.scale_outs += 1
                t = self.cfg.types.get(req.sf_type)
                await client.create_instance(name, req.sf_type,
                                             t.scaling.instance_rules if t else None)
            else:
                assert req.instance is not None
                self.event("scale-in", f"asking DMS {req.dms} to remove {req.instance} "
                           f"({req.reason})")
                self.stats.scale_ins += 1
                await client.remove_instance(req.instance)
        except (NcError, OSError) as exc:
            self.event("scale-failed", f"DMS {req.dms}: {req.kind} {req.sf_type}: {exc}")
            if req.kind == "create":
                self.catalog.cancel_pending(req.sf_type)

    # ---- catalog RPCs (i2nsf-sfc-catalog, from the DMSs) -----------------------------------

    def register(self, inst: Instance) -> None:
        self.catalog.register(inst)
        self._save_catalog()

    def unregister(self, name: str, dms: str | None, reason: str = "removed") -> None:
        self.catalog.unregister(name, dms)
        self._save_catalog()
        if reason == "failed":
            self.event("instance-failed", f"instance {name} failed")

    def report_load(self, dms: str, loads: list[tuple[str, float, float, float, int]]
                    ) -> None:
        for name, *_ in loads:  # all or nothing
            inst = self.catalog.instances.get(name)
            if inst is None:
                raise CatalogError(f"no instance {name!r} is registered")
            if inst.dms != dms:
                raise CatalogError(f"instance {name} belongs to DMS {inst.dms!r}",
                                   "access-denied")
        for name, pps, bps, cpu, queue in loads:
            self.catalog.report_load(name, pps, bps, cpu, queue)
        if self._wake is not None:
            self._wake.set()  # evaluate the watermarks now

    # ---- notifications from agents --------------------------------------------------------

    def on_notification(self, nsf: str, n: etree._Element) -> bool:
        """Handle an i2nsf-sfc-nsf notification; False if it is not one."""
        if not isinstance(n.tag, str) or not n.tag.startswith(NQ):
            return False
        kind = n.tag[len(NQ):]
        if kind == "sff-table-miss":
            self._table_miss(nsf, n, time.perf_counter())
        elif kind == "sff-loop-detected":
            self._loop(nsf, n, "loop detected")
        elif kind == "sff-ttl-expired":
            self._loop(nsf, n, "TTL expired")
        elif kind == "inspection-result":
            act = ((f"reclassify {v}" if (v := n.findtext(NQ + "reclassify")) else None)
                   or (f"next-function {v}" if (v := n.findtext(NQ + "next-function"))
                       else None))
            flow = _flow(n.find(NQ + "flow"))
            where = ""
            if flow:
                ports = (f" {flow.get('source-port', '-')} -> {flow.get('destination-port', '-')}"
                         if "source-port" in flow or "destination-port" in flow else "")
                where = (f", flow {flow.get('source', '?')} -> {flow.get('destination', '?')} "
                         f"proto {flow.get('protocol', '?')}{ports}")
            self.event("inspection-result", f"{nsf}: instance {n.findtext(NQ + 'instance')} "
                       f"({n.findtext(NQ + 'type')}) sid {n.findtext(NQ + 'sid')} "
                       f"{n.findtext(NQ + 'msg')!r} verdict {n.findtext(NQ + 'verdict')}"
                       + where + (f", action {act}" if act else ""), flow=flow)
        return True

    @staticmethod
    def _position(n: etree._Element) -> tuple[int, int, int]:
        def num(tag: str) -> int:
            return int((n.findtext(NQ + tag) or "0").strip() or 0)
        return num("sff-id"), num("spi"), num("si")

    def _table_miss(self, nsf: str, n: etree._Element, t0: float) -> None:
        self.stats.table_misses += 1
        sff_id, spi, si = self._position(n)
        r = self.rendering
        plan = r.agents.get(nsf) if r is not None else None
        hops = plan.table.get((spi, si)) if plan is not None else None
        if plan is None or hops is None:
            self.event("table-miss", f"{nsf} (SFF {sff_id}) asked for SPI {spi} SI {si}: no "
                       "such path entry", spi)
            return
        sess = self.sessions().get(nsf)
        client = getattr(sess, "client", None)
        if client is None or client.closed.is_set():
            return
        cfg = render.entry_xml(plan.forwarder.sff_id, str(plan.forwarder.locator), spi, si,
                               hops)
        body = (f'<edit-config xmlns="{NC_NS}"><target><running/></target>'
                "<default-operation>merge</default-operation>").encode() + etree.tostring(
                    cfg) + b"</edit-config>"
        self._spawn(self._answer(nsf, client, body, spi, si, t0))

    async def _answer(self, nsf: str, client: Any, body: bytes, spi: int, si: int,
                      t0: float) -> None:
        fut = asyncio.ensure_future(client.rpc(body, self.rpc_timeout))
        await asyncio.sleep(0)  # the request is written when the task first runs
        sent = int(1e6 * (time.perf_counter() - t0))
        try:
            await fut
        except (NcError, OSError) as exc:
            self.event("table-miss", f"{nsf}: answer for SPI {spi} SI {si} refused ({exc}); "
                       "resyncing it", spi)
            self._spawn(self.resync_agent(nsf))
            return
        applied = int(1e6 * (time.perf_counter() - t0))
        st = self.stats
        st.table_misses_answered += 1
        st.last_miss_answer_us, st.last_miss_applied_us = sent, applied
        st.miss_answer_us.append(sent)
        del st.miss_answer_us[:-1000]
        self.event("table-miss", f"{nsf} asked for SPI {spi} SI {si}: entry sent in "
                   f"{sent / 1000:.2f} ms, applied in {applied / 1000:.2f} ms", spi)

    def _loop(self, nsf: str, n: etree._Element, what: str) -> None:
        self.stats.loops_reported += 1
        sff_id, spi, si = self._position(n)
        trace = [(e.text or "").strip() for e in n.iterfind(NQ + "trace")]
        now = self.clock()
        detail = (f"{nsf} (SFF {sff_id}): {what} on SPI {spi} SI {si}"
                  + (f", trace {' '.join(trace)}" if trace else ""))
        self.event("loop-detected", detail, spi)
        if self.rendering is None or spi not in self.rendering.paths:
            return
        fixed = self._loop_fix.get(spi)
        if fixed is not None and now - fixed < LOOP_WINDOW:
            # rewriting every agent did not help: take the path off the classifiers
            reason = f"{what} again after a resync ({detail})"
            self.withdrawn[spi] = reason
            self.event("path-withdrawn", f"SPI {spi}: {reason}", spi)
            self.wake()
            return
        self._loop_fix[spi] = now
        self.event("path-resync", f"SPI {spi}: rewriting every agent's SFC configuration", spi)
        self._spawn(self._force_resync())

    async def _force_resync(self) -> None:
        await self.reconcile(force=True)

    # ---- operational state ----------------------------------------------------------------

    def state(self) -> list[etree._Element]:
        return [state_xml(self)]
