"""Configuration → desired state: the diff of a committed policy set against the store.

`apply_config` (called synchronously by the northbound applier on every commit, and at start
with the stored running configuration) diffs the policy set against the store: new policies
get a timer (install now), removed ones are marked `deleting` and removed from their NSFs,
changed ones are re-created, and ones whose lifetimes alone changed are rekeyed. Nothing here
waits for an NSF: the loop (`scheduling`) carries the work out.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

from controller.core.inventory import Nsf
from controller.ipsec import translate
from controller.ipsec.model import FlowConfig, Policy
from controller.ipsec.rekey import Phase
from controller.ipsec.translate import Plan

log = logging.getLogger(__name__)


def fingerprint(pol: Policy, cfg: FlowConfig, lifetimes: bool = True) -> str:
    """What a policy's NSF configuration depends on; a change means re-create. Without
    `lifetimes`: the part a lifetime change leaves alone (then a rekey is enough)."""
    prof = cfg.profiles.get(pol.params.crypto_profile)
    doc: dict[str, Any] = {
        "policy": pol.to_dict(),
        "a": cfg.nsfs[pol.a.nsf].to_dict() if pol.a.nsf in cfg.nsfs else None,
        "b": cfg.nsfs[pol.b.nsf].to_dict() if pol.b.nsf in cfg.nsfs else None,
        "profile": prof.to_dict() if prof else None,
    }
    if not lifetimes:
        for d in (doc["policy"]["params"], doc["profile"] or {}):
            d.pop("soft", None)
            d.pop("hard", None)
    for k in ("a", "b"):  # connection details do not change what is installed
        if doc[k]:
            for c in ("address", "port", "username", "host_key", "private_key_file",
                      "password_file"):
                doc[k].pop(c, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


class ConfigDiff:
    """FlowService's configuration diff (a mixin: the state is FlowService's)."""

    def apply_config(self, cfg: FlowConfig) -> None:
        """Make `cfg` the desired state (already checked by `model.check_config`)."""
        now = self.clock()
        old = {r.name: r for r in self.store.list_policies()}
        # IKE-case policies are the IKE manager's (no SAs, keys or rekeys here)
        new = {n: p for n, p in cfg.all_policies().items()
               if p.params.key_management != "ike"}
        added, changed, relifed = [], [], []
        with self.store.transaction():
            for nsf in cfg.nsfs.values():
                self.store.put_nsf(nsf.to_dict())
            for prof in cfg.profiles.values():
                self.store.put_profile(prof.to_dict())
            plans: dict[str, Plan] = {}
            for name, pol in new.items():
                fp = fingerprint(pol, cfg)
                rec = old.get(name)
                if rec is not None and rec.data.get("fingerprint") == fp and (
                        rec.status != "deleting"):
                    plans[name] = translate.make_plan(pol, cfg, rec.policy_id)
                    continue
                sfp = fingerprint(pol, cfg, lifetimes=False)
                pid = self.store.put_policy(
                    name, {**pol.to_dict(), "fingerprint": fp, "structure": sfp}, pol.group)
                plans[name] = translate.make_plan(pol, cfg, pid)
                if rec is None:
                    added.append(name)
                elif (rec.status != "deleting" and rec.data.get("structure") == sfp
                      and name in self.sched.timers):
                    relifed.append(name)
                else:
                    changed.append(name)
            removed = [n for n in old if n not in new and old[n].status != "deleting"]
            for name in removed:
                self.store.set_policy_status(name, "deleting")
                self.store.delete_schedule(name)
            self.cfg, self.plans = cfg, plans
            for name in added:
                self._add_timer(name, now)
            for name in changed:
                self.deleting.pop(name, None)
                self._recreate(name, now, "configuration changed")
            for name in relifed:
                self._new_lifetimes(name, now)
            for name in removed:
                self.sched.remove(name)
                self.deleting[name] = now
            for name in (*added, *changed, *relifed):
                self._persist(name)
        if added or changed or removed or relifed:
            log.info("configuration: %d policies added, %d changed, %d with new lifetimes, "
                     "%d removed", len(added), len(changed), len(relifed), len(removed))
        self.ike.apply_config(cfg)
        self._sync_sessions()
        self.wake()

    def _add_timer(self, name: str, now: float) -> None:
        plan = self.plans[name]
        pol = plan.policy
        t = self.sched.add(name, plan.soft.time, plan.hard.time, now,
                           on_demand=pol.params.on_demand)
        gens = [r.generation for r in self.store.get_sas(name)]
        if gens and t.target is not None:  # leftovers of an earlier life of this name
            t.target = max(gens) + 1
        self.store.set_policy_status(name, "pending")

    def _new_lifetimes(self, name: str, now: float) -> None:
        """Only lifetimes changed: the next generation gets them; rekey now
        (make-before-break) so that they apply at once without a traffic gap."""
        plan = self.plans[name]
        self.sched.set_lifetimes(name, plan.soft.time, plan.hard.time)
        t = self.sched.timers[name]
        if t.generation is not None and t.phase not in (Phase.INSTALL, Phase.INSTALL_SPD,
                                                         Phase.WAITING_ACQUIRE):
            self.sched.request_rekey(name, now, "lifetimes changed")

    def _recreate(self, name: str, now: float, reason: str) -> None:
        plan = self.plans[name]
        t = self.sched.timers.get(name)
        if t is None:
            self._add_timer(name, now)
            return
        self.sched.set_lifetimes(name, plan.soft.time, plan.hard.time)
        if plan.policy.params.on_demand and t.generation is None:
            t.phase, t.due, t.in_flight, t.target = Phase.INSTALL_SPD, now, None, None
            return
        gens = [r.generation for r in self.store.get_sas(name)]
        self.sched._recreate(t, now, reason)
        if gens:
            t.target = max(max(gens) + 1, t.target or 0)

    def _wanted_nsfs(self) -> dict[str, Nsf]:
        """Configured NSFs, plus removed ones that still hold entries of deleting policies."""
        out = dict(self.cfg.nsfs)
        for name in self.deleting:
            for nsf in self._policy_nsfs(name):
                if nsf not in out:
                    d = self.store.get_nsf(nsf)
                    if d is not None:
                        out[nsf] = Nsf.from_dict(d)
        return out

    def _policy_nsfs(self, policy: str) -> set[str]:
        spd = self.store.get_spd(policy)
        sas = self.store.get_sas(policy)
        return set(spd) | {s.sender for s in sas} | {s.receiver for s in sas}

    def _sync_sessions(self) -> None:
        wanted = self._wanted_nsfs()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self.south.sync(wanted)
        for name in [d["name"] for d in self.store.list_nsfs()]:
            if name not in wanted:
                self.store.delete_nsf(name)
