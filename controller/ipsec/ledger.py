"""Glue between the rekey scheduler's actions, the translation and the store.

`SaLedger.prepare` turns an action into per-NSF edits; `SaLedger.done` records its success.
New SAs (keys included) are written to the store *before* any NSF sees them: after a crash
between the push and the bookkeeping the controller still knows every SA it may have
installed, so it can finish the step or remove them; retries re-send the same stored SAs
(same SPIs and keys), which keeps every action idempotent.

The northbound operational state (`flow-protection-state`) is rendered here too.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from xml.sax.saxutils import escape

from lxml import etree

from controller.core.inventory import NS as FP_NS
from controller.core.store import SaRecord, SaView, Store
from controller.ipsec import translate
from controller.ipsec.evidence import Evidence
from controller.ipsec.keys import KeyManager
from controller.ipsec.rekey import Action, Phase, RekeyScheduler
from controller.ipsec.translate import Edits, Parts, Plan, SaSpec

log = logging.getLogger(__name__)


class SaLedger:
    def __init__(self, store: Store, km: KeyManager,
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.km = km
        self.clock = clock
        # per policy: SPIs (reserved) and keys of its next generation, made ahead of time
        # while the NSFs work on the current step (see `pregenerate`); never stored or sent
        # before `generation` takes them
        self._next: dict[str, tuple[Plan, int, list[SaSpec]]] = {}

    def pregenerate(self, plan: Plan, generation: int) -> None:
        """Make the SPIs and keys of `generation` now, so that the step that installs it
        only stores and renders them: the controller does this while the NSFs apply the
        current step, which takes it off the rekey's critical path."""
        have = self._next.get(plan.name)
        if have is not None:
            if have[0] is plan and have[1] == generation:
                return
            self._drop_next(plan.name)
        self._next[plan.name] = (plan, generation, translate.new_sas(plan, self.km, generation))

    def forget_next(self, keep: Callable[[str, Plan], bool]) -> None:
        """Drop the generations made ahead for policies that `keep` rejects (deleted, or
        their plan changed), releasing their SPIs."""
        for name, (plan, _g, _specs) in list(self._next.items()):
            if not keep(name, plan):
                self._drop_next(name)

    def _drop_next(self, name: str) -> None:
        plan, _g, specs = self._next.pop(name)
        for sa in specs:
            self.km.release(plan.spi_holders(sa.a2b), sa.spi)

    def _records(self, plan: Plan, specs: list[SaSpec], now: float) -> list[SaRecord]:
        out = []
        for sa in specs:
            snd, rcv = plan.side(sa.sender), plan.side(sa.receiver)
            out.append(SaRecord(
                policy=sa.policy, flow=sa.flow, a2b=sa.a2b, generation=sa.generation,
                spi=sa.spi, keys=sa.keys, sender=snd.nsf.name, receiver=rcv.nsf.name,
                sender_src=str(snd.local_addr), sender_dst=str(snd.remote_addr),
                receiver_src=str(rcv.remote_addr), receiver_dst=str(rcv.local_addr),
                created=now))
        return out

    def generation(self, plan: Plan, generation: int) -> list[SaSpec]:
        """The SAs of a generation: from the store, or freshly made and stored."""
        have = [r.spec() for r in self.store.get_sas(plan.name, generation=generation)]
        if have:
            return have
        ahead = self._next.get(plan.name)
        if ahead is not None and ahead[0] is plan and ahead[1] == generation:
            specs = self._next.pop(plan.name)[2]
        else:
            if ahead is not None:
                self._drop_next(plan.name)
            specs = translate.new_sas(plan, self.km, generation)
        with self.store.transaction():
            self.store.add_sas(self._records(plan, specs, self.clock()))
        for sa in specs:  # the store answers for these SPIs from now on
            self.km.release(plan.spi_holders(sa.a2b), sa.spi)
        return specs

    def prepare(self, plan: Plan, action: Action) -> Edits:
        """The edit-config for each of the two NSFs that carries out `action`."""
        return translate.parts_to_edits(self.prepare_parts(plan, action))

    def prepare_parts(self, plan: Plan, action: Action) -> Parts:
        """`prepare` as rendered entries, to be joined with other actions' (the engine)."""
        k = action.kind
        if k is Phase.INSTALL_SPD:
            return translate.install_parts(plan, [])
        by_gen: dict[int, list[SaSpec]] = {}
        for r in self.store.get_sas(plan.name):  # one look for all generations
            by_gen.setdefault(r.generation, []).append(r.spec())

        def stored(generation: int | None) -> list[SaSpec]:
            return [] if generation is None else by_gen.get(generation, [])

        if k is Phase.INSTALL:
            assert action.generation is not None
            new = self.generation(plan, action.generation)
            others = [sa for g, sas in by_gen.items() if g != action.generation for sa in sas]
            return translate.join_parts(translate.remove_sas_parts(plan, others),
                                        translate.install_parts(plan, new))
        if k is Phase.ADD_INBOUND:
            assert action.generation is not None
            return translate.add_inbound_parts(plan, self.generation(plan, action.generation))
        if k is Phase.SWITCH_OUTBOUND:
            parts = [translate.switch_outbound_parts(
                plan, stored(action.old_generation), stored(action.generation))]
            if action.also_remove is not None:  # the older generation's grace is over
                parts.append(translate.remove_old_parts(plan, stored(action.also_remove)))
        elif k is Phase.REMOVE_OLD:
            parts = [translate.remove_old_parts(plan, stored(action.old_generation))]
        else:
            raise ValueError(f"no edit for action {k}")
        if action.then_add is not None:  # the next rekey's step 1, in the same edit
            parts.append(translate.add_inbound_parts(
                plan, self.generation(plan, action.then_add)))
        return translate.join_parts(*parts)

    def done(self, plan: Plan, action: Action) -> None:
        """Record that `action` is in place on both NSFs."""
        if action.kind is Phase.ADD_INBOUND or (
                action.kind is Phase.REMOVE_OLD and action.old_generation is None):
            return  # nothing in the store changes (the new SAs were stored when prepared)
        with self.store.transaction():
            if action.kind in (Phase.INSTALL_SPD, Phase.INSTALL):
                for side in plan.sides():
                    self.store.put_spd(plan.name, side.nsf.name, plan.spd_names())
            if action.kind is Phase.INSTALL:
                gens = {r.generation for r in self.store.get_sas(plan.name)}
                self.store.delete_sas(plan.name, gens - {action.generation})
            if action.kind in (Phase.INSTALL, Phase.SWITCH_OUTBOUND):
                assert action.generation is not None
                self.store.set_policy_generation(plan.name, action.generation)
            if action.kind is Phase.REMOVE_OLD and action.old_generation is not None:
                self.store.delete_sas(plan.name, [action.old_generation])
            if action.kind is Phase.SWITCH_OUTBOUND and action.also_remove is not None:
                self.store.delete_sas(plan.name, [action.also_remove])

    def delete_edits(self, policy: str) -> Edits:
        """Removal of everything the store says the policy has on each NSF (works when the
        policy or its NSFs are already gone from the configuration)."""
        sas = self.store.get_sas(policy)
        spd = self.store.get_spd(policy)
        nsfs = set(spd) | {s.sender for s in sas} | {s.receiver for s in sas}
        names = sorted({s.name for s in sas})
        return {n: translate.delete_by_names_edit(spd.get(n, []), names) for n in sorted(nsfs)}


def yang_time(t: float | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


class StateView:
    """`state_xml` that re-uses its last rendering while nothing it shows has changed: the
    store's version and, per policy, the status, error and next rekey the timers give. A
    monitoring client polling a big controller then costs little between changes."""

    def __init__(self) -> None:
        self._key: tuple[object, ...] | None = None
        self._text = b""

    def __call__(self, store: Store, sched: RekeyScheduler, shown: Shown | None = None,
                 evidence: Evidence | None = None, extra: tuple[object, ...] = ()
                 ) -> etree._Element:
        timers = tuple((n, sched.status(n), t.last_error if t.attempts else None,
                        sched.next_rekey(n)) for n, t in sched.timers.items())
        key = (store.changed(), timers, extra)
        if key != self._key:
            self._text = _state_text(store, sched, shown, evidence).encode()
            self._key = key
        return etree.fromstring(self._text)


# policy name → (status, error) as shown (data-plane evidence applied), None: the scheduler's
Shown = Callable[[str], "tuple[str, str | None] | None"]


def state_xml(store: Store, sched: RekeyScheduler) -> etree._Element:
    """`<flow-protection-state>`: status, generation and SAs (never keys) of every policy."""
    return etree.fromstring(_state_text(store, sched))


def _counters(evidence: Evidence | None, nsf: str, sa: str) -> str:
    c = evidence.counters(nsf, sa) if evidence is not None else None
    if c is None:
        return ""
    present, counts = c
    out = f"<present>{'true' if present else 'false'}</present>"
    if counts is not None:
        out += f"<packets>{counts[1]}</packets><bytes>{counts[0]}</bytes>"
    return out


def _state_text(store: Store, sched: RekeyScheduler, shown: Shown | None = None,
                evidence: Evidence | None = None) -> str:
    """Rendered as text and parsed once: a `get` of thousands of policies must not hold the
    event loop (and so every NSF transaction) for long. Names, addresses and numbers need
    no escaping (names are restricted by the model); error messages are escaped."""
    times: dict[float | None, str] = {}

    def when(t: float | None) -> str:
        v = times.get(t)
        if v is None:
            v = times[t] = yang_time(t) or ""
        return v

    by_policy: dict[str, list[SaView]] = {}
    for sa in store.sa_views():  # one query, not one per policy
        by_policy.setdefault(sa.policy, []).append(sa)
    out = [f'<flow-protection-state xmlns="{FP_NS}">']
    for rec in store.policy_views():
        name = rec.name
        timer = sched.timers.get(name)
        status = rec.status if rec.status == "deleting" or timer is None else (
            sched.status(name))
        err = timer.last_error if timer is not None and timer.attempts else rec.error
        seen = shown(name) if shown is not None and timer is not None else None
        if seen is not None:
            status, err = seen[0], seen[1] or (err if seen[0] != "active" else None)
        ev_time = ""
        if evidence is not None and rec.endpoint_a in evidence.now and (
                rec.endpoint_b in evidence.now):
            ev_time = when(min(evidence.now[rec.endpoint_a].at,
                               evidence.now[rec.endpoint_b].at))
        nxt = when(sched.next_rekey(name)) if timer is not None else ""
        out.append(
            f"<policy><name>{name}</name>"
            + (f"<group>{rec.group}</group>" if rec.group is not None else "")
            + (f"<endpoint-a>{rec.endpoint_a}</endpoint-a>" if rec.endpoint_a else "")
            + (f"<endpoint-b>{rec.endpoint_b}</endpoint-b>" if rec.endpoint_b else "")
            + f"<status>{status}</status>"
            + (f"<error-message>{escape(err)}</error-message>" if err else "")
            + f"<generation>{rec.generation}</generation>"
            + f"<last-change>{when(rec.updated)}</last-change>"
            + (f"<next-rekey>{nxt}</next-rekey>" if nxt else "")
            + (f"<evidence-time>{ev_time}</evidence-time>" if ev_time else ""))
        for sa in by_policy.get(name, ()):
            common = f"<name>{sa.name}</name><spi>{sa.spi}</spi>"
            tail = (f"<generation>{sa.generation}</generation>"
                    f"<created>{when(sa.created)}</created>"
                    + (f"<next-rekey>{nxt}</next-rekey>"
                       if nxt and sa.generation == rec.generation else ""))
            out.append(f"<sa><nsf>{sa.sender}</nsf>{common}<direction>outbound</direction>"
                       f"<source>{sa.sender_src}</source>"
                       f"<destination>{sa.sender_dst}</destination>{tail}"
                       f"{_counters(evidence, sa.sender, sa.name)}</sa>"
                       f"<sa><nsf>{sa.receiver}</nsf>{common}<direction>inbound</direction>"
                       f"<source>{sa.receiver_src}</source>"
                       f"<destination>{sa.receiver_dst}</destination>{tail}"
                       f"{_counters(evidence, sa.receiver, sa.name)}</sa>")
        out.append("</policy>")
    out.append("</flow-protection-state>")
    return "".join(out)
