"""Events from NSFs: lifetime expiries and acquires, reconnections, resynchronisation.

After every (re)connection the NSF's running configuration is compared with what the store
says it should hold and fixed in one transaction (`resync`); notifications drive the rekey
scheduler (soft/hard expiry, acquire for on-demand policies).
"""

from __future__ import annotations

import logging

from lxml import etree

from controller.core.nc_client import NcError, NcRpcError
from controller.core.southbound import CONNECTED, NsfSession
from controller.ipsec import translate
from controller.ipsec.rekey import Phase
from netconf_core.i2nsf.namespaces import IKELESS_NS, SADB_NS

log = logging.getLogger(__name__)

IK = f"{{{IKELESS_NS}}}"
SB = f"{{{SADB_NS}}}"
_NSF_STATUS = (f'<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><filter type="subtree">'
               f'<nsf-status xmlns="{SADB_NS}"/></filter></get>')
# phases in which the live generation's SAs stay in use (a rekey replaces them only after)
_LIVE_STAYS = (Phase.IDLE, Phase.REMOVE_OLD)


class Events:
    """FlowService's NSF event handling (a mixin: the state is FlowService's)."""

    def _on_notification(self, nsf: str, n: etree._Element) -> None:
        self.stats.notifications += 1
        if self.ike.on_notification(nsf, n):
            return
        if n.tag == SB + "nsf-restarted":
            self._on_restart_report(nsf, n)
            return
        now = self.clock()
        if n.tag == IK + "sadb-expire":
            sa = (n.findtext(IK + "ipsec-sa-name") or "").strip()
            soft = (n.findtext(IK + "soft-lifetime-expire") or "").strip() == "true"
            ref = translate.parse_sad_name(sa)
            if ref is None:
                return
            log.info("NSF %s: %s lifetime of SA %s expired", nsf, "soft" if soft else "hard",
                     sa)
            hit = (self.sched.on_soft_expire(ref.policy, ref.generation, now) if soft
                   else self.sched.on_hard_expire(ref.policy, ref.generation, now))
        elif n.tag == IK + "sadb-acquire":
            spd = (n.findtext(IK + "ipsec-policy-name") or "").strip()
            parsed = translate.parse_spd_name(spd)
            if parsed is None:
                return
            log.info("NSF %s: acquire for SPD entry %s", nsf, spd)
            hit = self.sched.on_acquire(parsed[0], now)
            ref_policy = parsed[0]
            if hit:
                self._persist(ref_policy)
            self.wake()
            return
        else:
            return
        if hit:
            self._persist(ref.policy)
            self.wake()

    async def _on_connected(self, sess: NsfSession) -> None:
        """After every (re)connection: put back what the store says the NSF should hold,
        and retry at once the actions that failed while it was away."""
        self.ike.on_connected(sess.name)
        self.evidence.forget(sess.name)
        try:
            await self.resync(sess.name)
        except Exception:  # (not on cancellation: stopping must not wait for the NSF)
            await self._check_restart(sess)
            raise
        await self._check_restart(sess)
        now = self.clock()
        for name, t in self.sched.timers.items():
            plan = self.plans.get(name)
            if (plan is not None and t.attempts and t.in_flight is None
                    and sess.name in (plan.a.name, plan.b.name)):
                t.due = now
        for name in self.deleting:
            if name not in self._busy and sess.name in self._policy_nsfs(name):
                self.deleting[name] = now
        self.wake()

    async def _check_restart(self, sess: NsfSession) -> None:
        """Read the NSF's restart report (i2nsf-sadb nsf-status, docs/restart-safety.md)
        after every connection: the nsf-restarted notification is usually sent while the
        controller's session is down, so this is the channel to rely on."""
        client = sess.client
        if client is None:
            return
        try:
            reply = await client.rpc(_NSF_STATUS, self.opts.rpc_timeout)
        except NcRpcError as exc:  # an agent without that module revision
            log.debug("NSF %s: no nsf-status (%s)", sess.name, exc)
            return
        except NcError as exc:
            log.warning("NSF %s: cannot read nsf-status: %s", sess.name, exc)
            return
        st = reply.find(f".//{SB}nsf-status")
        if st is not None:
            self._on_restart_report(sess.name, st)

    def _on_restart_report(self, nsf: str, st: etree._Element) -> None:
        """An NSF's nsf-status or nsf-restarted: after an unclean restart (a boot id not
        seen before, previous-stop unclean) every IKE-less policy with SAs on it is rekeyed
        at once, make-before-break (the peer keeps its old inbound SA until the switch);
        on later reports of the same run, the policies whose live SAs are still listed as
        having lost state (sa-rekey-required) are. The handled boot id is stored so that
        a controller restart does not rekey the same run again."""
        boot = (st.findtext(SB + "boot-id") or "").strip()
        unclean = (st.findtext(SB + "previous-stop") or "").strip() == "unclean"
        listed: dict[str, str] = {}
        for e in st.iter(SB + "sa-rekey-required"):
            name = (e.findtext(SB + "ipsec-sa-name") or "").strip()
            if name:
                listed[name] = (e.findtext(SB + "reason") or "").strip()
        key = f"boot:{nsf}"
        new_run = bool(boot) and self.store.get_meta(key) != boot
        wanted: set[str] = set()
        if new_run and (unclean or listed):
            wanted = {name for name, plan in self.plans.items()
                      if nsf in (plan.a.name, plan.b.name)}
        for sa, reason in listed.items():
            ref = translate.parse_sad_name(sa)
            t = self.sched.timers.get(ref.policy) if ref is not None else None
            if ref is not None and t is not None and ref.generation == t.generation:
                wanted.add(ref.policy)
                log.info("NSF %s: SA %s lost state (%s)", nsf, sa, reason)
        now = self.clock()
        rekeyed = []
        for name in sorted(wanted):
            t = self.sched.timers.get(name)
            if (t is None or name in self.deleting or t.generation is None
                    or t.phase not in _LIVE_STAYS or t.rekey_pending
                    or (t.phase is Phase.IDLE and t.in_flight is not None)):
                continue  # no SAs yet, or new ones are already on their way
            self.sched.request_rekey(name, now, f"NSF {nsf} restarted uncleanly")
            self._persist(name)
            rekeyed.append(name)
        if boot and new_run:
            self.store.put_meta(key, boot)
        if rekeyed or (new_run and unclean):
            log.warning("NSF %s restarted uncleanly (boot %s, %d SAs reported): rekeying "
                        "%d policies: %s", nsf, boot or "?", len(listed), len(rekeyed),
                        ", ".join(rekeyed) or "-")
            self.stats.restarts_handled += 1
        self.wake()

    def expected_edit(self, nsf: str) -> tuple[etree._Element, set[str]]:
        """The `<config>` that makes `nsf` hold exactly what the store says, and the names
        of those entries."""
        spd: list[etree._Element] = []
        sad: list[etree._Element] = []
        for name, plan in self.plans.items():
            sides = {s.nsf.name: s for s in plan.sides()}
            side = sides.get(nsf)
            t = self.sched.timers.get(name)
            if side is None or t is None or name in self.deleting:
                continue
            if t.generation is None and t.phase is not Phase.WAITING_ACQUIRE:
                continue  # never installed: its install action will do it
            for f in plan.flows:
                for d in ("outbound", "inbound"):
                    e = translate.spd_entry(plan, side, f, d)  # type: ignore[arg-type]
                    e.set(translate.OPERATION, "replace")
                    spd.append(e)
            for rec in self.store.get_sas(name):
                sender = plan.side(rec.spec().sender).nsf.name
                if nsf == sender and rec.generation != t.generation:
                    continue  # only the live generation is sent on
                e = translate.sad_entry(plan, side, rec.spec())
                e.set(translate.OPERATION, "replace")
                sad.append(e)
        names = {e.findtext(IK + "name") or "" for e in (*spd, *sad)}
        return translate.config_element(spd, sad), names

    async def resync(self, nsf: str, force: bool = False) -> bool:
        """Compare the NSF's running configuration with the store and fix it (one
        transaction). Returns True if something was pushed."""
        sess = self.south.sessions.get(nsf)
        if sess is None or sess.state != CONNECTED:
            raise NcError(f"NSF {nsf} is not connected")
        if force:
            self.ike.resync(nsf)
        async with sess.lock:
            self._leftover_checked.discard(nsf)  # a new session: look again
            await self._clear_leftovers({nsf: sess})
            client = sess.client
            if client is None:
                raise NcError(f"NSF {nsf} is not connected")
            filt = (f'<get-config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><source>'
                    f'<running/></source><filter type="subtree"><ipsec-ikeless '
                    f'xmlns="{IKELESS_NS}"/></filter></get-config>')
            reply = await client.rpc(filt, self.opts.rpc_timeout)
            present = {
                (e.findtext(IK + "name") or "").strip()
                for tag in ("spd-entry", "sad-entry") for e in reply.iter(IK + tag)}
            present = {p for p in present if p.startswith(translate.NAME_PREFIX + "/")}
            config, names = self.expected_edit(nsf)
            extra = present - names
            if not force and not extra and names <= present:
                return False
            root = config.find(IK + "ipsec-ikeless")
            assert root is not None
            if extra:
                rm = translate.delete_by_names_edit(
                    [n for n in extra if translate.parse_spd_name(n)],
                    [n for n in extra if translate.parse_sad_name(n)])
                rroot = rm.find(IK + "ipsec-ikeless")
                assert rroot is not None
                for tag in ("spd", "sad"):
                    src = rroot.find(IK + tag)
                    if src is None:
                        continue
                    dst = root.find(IK + tag)
                    if dst is None:
                        dst = etree.SubElement(root, IK + tag)
                    for e in list(src):
                        dst.append(e)
            log.info("NSF %s: resync (%d entries missing, %d extra)", nsf,
                     len(names - present), len(extra))
            await self._transact({nsf: sess}, {nsf: config})
            self.stats.resyncs += 1
            return True
