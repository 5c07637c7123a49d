"""The IKE case's engine: pushes the desired ietf-i2nsf-ike configuration to the NSFs and
follows their IKE events (see `ike_config` for what is pushed and why).

Status comes from the agents' `i2nsf-ike-events` notifications: a `child-sa-up` for a
policy's SPD entry makes it active, `auth-failure` makes its pair's policies failed with
charon's reason, `child-sa-failed` the policy of the SPD entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree

from controller.core.engine import Engine, wait_event
from controller.core.nc_client import NcError
from controller.core.transaction import TransactionError, locked
from controller.ipsec.ca import ControllerCA
from controller.ipsec.ike_bundle import swanctl_conf
from controller.ipsec.ike_config import (
    EV,
    IKE_NS,
    PREFIX,
    Credentials,
    Desired,
    NsfIke,
    Present,
    Q,
    build,
    edit_config,
    identity,
    ike_policies,
    spd_name,
)
from controller.ipsec.ike_evidence import IkeReading, ike_verdict, read_ike, sa_rows
from controller.ipsec.ledger import yang_time
from controller.ipsec.model import FlowConfig, Policy, policy_flows
from netconf_core.errors import NC_NS

log = logging.getLogger(__name__)


# ---- the engine ------------------------------------------------------------------------------


@dataclass
class Status:
    status: str = "pending"
    error: str | None = None
    since: float = field(default_factory=time.time)


class IkeManager:
    """Pushes the desired IKE configuration and follows the NSFs' IKE events."""

    def __init__(self, svc: Engine, state_dir: Path | None) -> None:
        """`svc` is the IPsec service whose engine (store, sessions, transactions) this
        shares."""
        self.svc = svc
        self.ca = ControllerCA(state_dir if state_dir is not None
                               else Path(".i2nsf-controller"))
        self.creds = Credentials(svc.store, self.ca)
        self.cfg = FlowConfig()
        self.desired = Desired()
        self.pushed: dict[str, str] = {}  # NSF → digest it holds (this life)
        self.dirty: set[str] = set()
        self.status: dict[str, Status] = {}  # policies and road warriors ("rw:" + name)
        self.up: dict[str, set[tuple[str, str]]] = {}  # policy → {(nsf, spd entry)}
        self.rw_peer: dict[str, str] = {}
        self._due = 0.0
        self._attempts = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.stats = {"pushes": 0, "failures": 0}
        self.readings: dict[str, IkeReading] = {}  # NSF → its Child SAs as last read

    # ---- configuration ------------------------------------------------------------------------

    def managed(self) -> set[str]:
        raw = self.svc.store.get_meta("ike:nsfs")
        return set(json.loads(raw)) if raw else set()

    def apply_config(self, cfg: FlowConfig) -> None:
        self.cfg = cfg
        old = self.desired
        self.desired = build(cfg, self.creds)
        want = set(self.desired.nsfs)
        managed = self.managed()
        if want - managed:
            self.svc.store.put_meta("ike:nsfs", json.dumps(sorted(managed | want)))
        for n in want | managed:
            digest = self.desired.nsfs.get(n, NsfIke()).digest()
            if self.pushed.get(n) != digest and n in cfg.nsfs:
                self.dirty.add(n)
        names = set(ike_policies(cfg)) | {f"rw:{r}" for r in cfg.road_warriors}
        for gone in set(self.status) - names:
            self.status.pop(gone)
            self.up.pop(gone, None)
        for name in names:
            changed = (old.policy_nsfs.get(name) != self.desired.policy_nsfs.get(name))
            if name not in self.status or changed:
                self._set(name, "pending")
            if name in self.desired.errors:
                self._set(name, "failed", self.desired.errors[name])
        if self.dirty:
            self._due = 0.0
            self._attempts = 0
        self.wake()

    def _set(self, name: str, status: str, error: str | None = None) -> None:
        st = self.status.get(name)
        if st is not None and st.status == status and st.error == error:
            return
        self.status[name] = Status(status, error)
        if not name.startswith("rw:"):
            self.svc._status_changed(name, status, error)
        log.info("IKE %s %s: %s%s", "road warrior" if name.startswith("rw:") else "policy",
                 name.removeprefix("rw:"), status, f" ({error})" if error else "")

    # ---- loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="ike-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        assert self._wake is not None
        while True:
            now = time.monotonic()
            if self.dirty and self._due <= now:
                await self.push(set(self.dirty))
            self._wake.clear()
            timeout = None
            if self.dirty:
                timeout = max(0.0, self._due - time.monotonic())
            await wait_event(self._wake, timeout)

    def _components(self, nsfs: set[str]) -> list[set[str]]:
        """Groups of NSFs linked by IKE pairs: each is pushed as one transaction."""
        parent = {n: n for n in nsfs}

        def find(n: str) -> str:
            while parent[n] != n:
                n = parent[n]
            return n

        for x, y in self.desired.edges:
            if x in parent and y in parent:
                parent[find(x)] = find(y)
        out: dict[str, set[str]] = {}
        for n in nsfs:
            out.setdefault(find(n), set()).add(n)
        return list(out.values())

    async def push(self, nsfs: set[str]) -> None:
        await self.svc._await_first_sessions(nsfs)
        results = await asyncio.gather(*(self._push(c) for c in self._components(nsfs)))
        if all(results):
            self._attempts = 0
        else:
            self._attempts += 1
            delay = min(self.svc.opts.retry_max,
                        self.svc.opts.retry_base * 2 ** (self._attempts - 1))
            self._due = time.monotonic() + delay

    def _affected(self, nsfs: set[str]) -> list[str]:
        out = [p for p, ends in self.desired.policy_nsfs.items() if set(ends) & nsfs]
        out += [f"rw:{r.name}" for r in self.cfg.road_warriors.values() if r.gateway in nsfs]
        return out

    async def _push(self, nsfs: set[str]) -> bool:
        sessions = self.svc._sessions_for(nsfs)
        if isinstance(sessions, str):
            for p in self._affected(nsfs):
                self._set(p, "failed", sessions)
            return False
        want = {n: self.desired.nsfs.get(n, NsfIke()) for n in nsfs}
        digests = {n: w.digest() for n, w in want.items()}
        try:
            async with locked(sessions):
                edits = {}
                for n, s in sessions.items():
                    present = await self._present(s)
                    if (present == (set(want[n].pads), set(want[n].conns))
                            and self.pushed.get(n) == digests[n]):
                        continue
                    edits[n] = edit_config(want[n], present)
                if edits:
                    # responders first: the NSF with the smaller name initiates
                    order = sorted(edits, reverse=True)
                    await self.svc._transact({n: sessions[n] for n in edits}, edits,
                                             commit_order=order)
                    self.stats["pushes"] += 1
        except (TransactionError, NcError) as exc:
            self.stats["failures"] += 1
            log.warning("IKE configuration push to %s failed: %s", ", ".join(sorted(nsfs)),
                        exc)
            for p in self._affected(nsfs):
                self._set(p, "failed", str(exc))
            return False
        for n in nsfs:
            self.pushed[n] = digests[n]
            if self.dirty and digests[n] == self.desired.nsfs.get(n, NsfIke()).digest():
                self.dirty.discard(n)
        for p in self._affected(nsfs):
            st = self.status.get(p)
            if st is not None and st.status == "failed" and p not in self.desired.errors:
                self._set(p, "pending")
        for n, s in sessions.items():
            with contextlib.suppress(NcError, asyncio.TimeoutError):
                await self._poll(n, s)
        return True

    async def _present(self, sess: Any) -> Present:
        reply = await sess.client.rpc(
            f'<get-config xmlns="{NC_NS}"><source><running/></source><filter type="subtree">'
            f'<ipsec-ike xmlns="{IKE_NS}"><pad><pad-entry><name/></pad-entry></pad>'
            f"<conn-entry><name/></conn-entry></ipsec-ike></filter></get-config>",
            self.svc.opts.rpc_timeout)
        out = []
        for tag in ("pad-entry", "conn-entry"):
            names = {(e.findtext(Q + "name") or "").strip() for e in reply.iter(Q + tag)}
            out.append({n for n in names if n.startswith(PREFIX + "/")})
        return out[0], out[1]

    async def _poll(self, nsf: str, sess: Any) -> None:
        """Child SAs already up (events may have been missed: restart, reconnection)."""
        if sess.client is None:
            return
        reply = await sess.client.rpc(
            f'<get xmlns="{NC_NS}"><filter type="subtree"><ipsec-ike xmlns="{IKE_NS}">'
            "<conn-entry><name/><state/></conn-entry></ipsec-ike></filter></get>",
            self.svc.opts.rpc_timeout)
        for ce in reply.iter(Q + "conn-entry"):
            cname = (ce.findtext(Q + "name") or "").strip()
            for cs in ce.iter(EV + "child-sa"):
                if (cs.findtext(EV + "sa-state") or "").strip() == "INSTALLED":
                    self._child_up(nsf, cname, (cs.findtext(EV + "spd-entry-name") or "").strip())

    def on_connected(self, nsf: str) -> None:
        """A (re)connected NSF may have lost or kept its configuration: check it."""
        self.readings.pop(nsf, None)  # (its Child SAs are read again on this session)
        if nsf in self.desired.nsfs or nsf in self.managed():
            self.pushed.pop(nsf, None)
            self.dirty.add(nsf)
            self._due = 0.0
            self.wake()

    def resync(self, nsf: str) -> None:
        self.on_connected(nsf)

    # ---- events --------------------------------------------------------------------------------

    def _child_up(self, nsf: str, conn: str, spd: str) -> None:
        if conn.startswith(f"{PREFIX}/rw/"):
            rw = conn.removeprefix(f"{PREFIX}/rw/")
            if f"rw:{rw}" in self.status:
                self.up.setdefault(f"rw:{rw}", set()).add((nsf, spd))
                self._set(f"rw:{rw}", "active")
            return
        pol = self.desired.spd_policy.get(spd)
        if pol is None or pol not in self.status:
            return
        self.up.setdefault(pol, set()).add((nsf, spd))
        self._set(pol, "active")

    def _child_down(self, nsf: str, conn: str, spd: str | None, reason: str) -> None:
        targets = ([f"rw:{conn.removeprefix(PREFIX + '/rw/')}"]
                   if conn.startswith(f"{PREFIX}/rw/")
                   else self.desired.conn_policies.get(conn, []))
        for pol in targets:
            ups = self.up.get(pol, set())
            for item in [u for u in ups if u[0] == nsf and (spd is None or u[1] == spd)]:
                ups.discard(item)
            st = self.status.get(pol)
            if not ups and st is not None and st.status == "active":
                self._set(pol, "pending", reason)

    def _child_failed(self, nsf: str, conn: str, spd: str, why: str) -> None:
        """A Child SA that did not come up fails its policy. Without an SPD entry (the
        responder cannot tell which flow the peer wanted) every policy of the connection
        that has no Child SA up."""
        if conn.startswith(f"{PREFIX}/rw/"):
            targets = [f"rw:{conn.removeprefix(PREFIX + '/rw/')}"]
        elif spd:
            targets = [p for p in [self.desired.spd_policy.get(spd)] if p is not None]
        else:
            targets = [p for p in self.desired.conn_policies.get(conn, [])
                       if not self.up.get(p)]
        log.warning("NSF %s: %s (connection %s%s)", nsf, why, conn,
                    f", SPD entry {spd}" if spd else "")
        for pol in targets:
            if pol in self.status:
                if spd:
                    self.up.get(pol, set()).discard((nsf, spd))
                self._set(pol, "failed", why)

    def on_notification(self, nsf: str, n: etree._Element) -> bool:
        """Handle an i2nsf-ike-events notification; False if it is not one."""
        if not n.tag.startswith(EV):
            return False
        kind = etree.QName(n).localname
        conn = (n.findtext(EV + "connection-name") or "").strip()
        if not conn.startswith(PREFIX + "/"):
            return True
        reason = (n.findtext(EV + "reason") or "").strip()
        if kind == "child-sa-up":
            self._child_up(nsf, conn, (n.findtext(EV + "spd-entry-name") or "").strip())
        elif kind == "child-sa-down":
            self._child_down(nsf, conn, (n.findtext(EV + "spd-entry-name") or "").strip(),
                             f"Child SA down on {nsf}: {reason}")
        elif kind == "ike-sa-down":
            self._child_down(nsf, conn, None, f"IKE SA down on {nsf}: {reason}")
        elif kind == "ike-sa-up" and conn.startswith(f"{PREFIX}/rw/"):
            self.rw_peer[conn.removeprefix(f"{PREFIX}/rw/")] = (
                n.findtext(EV + "peer") or "").strip()
        elif kind == "child-sa-failed":
            spd = (n.findtext(EV + "spd-entry-name") or "").strip()
            self._child_failed(nsf, conn, spd, f"Child SA failed on {nsf}: "
                               f"{reason or 'no reason given'}")
        elif kind == "auth-failure":
            why = f"IKE authentication failed on {nsf}: {reason or 'no reason given'}"
            log.warning("NSF %s: %s (connection %s)", nsf, why, conn)
            targets = ([f"rw:{conn.removeprefix(PREFIX + '/rw/')}"]
                       if conn.startswith(f"{PREFIX}/rw/")
                       else self.desired.conn_policies.get(conn, []))
            for pol in targets:
                if pol in self.status:
                    self.up.pop(pol, None)
                    self._set(pol, "failed", why)
        return True

    # ---- credentials ---------------------------------------------------------------------------

    def rotate_nsf(self, nsf: str) -> x509.Certificate:
        n = self.cfg.nsfs.get(nsf)
        if n is None:
            raise KeyError(nsf)
        if n.ike.certificate_file is not None:
            raise ValueError(f"NSF {nsf} uses an operator-supplied certificate "
                             f"({n.ike.certificate_file}); replace that file instead")
        cred = self.ca.reissue("nsf", nsf, identity(n))
        self.apply_config(self.cfg)
        return cred.cert

    def rotate_ca(self) -> x509.Certificate:
        cert = self.ca.rotate()
        for name in self.ca.holders("nsf"):
            n = self.cfg.nsfs.get(name)
            if n is not None and n.ike.certificate_file is None:
                self.ca.reissue("nsf", name, identity(n))
        for name in self.ca.holders("rw"):
            rw = self.cfg.road_warriors.get(name)
            if rw is not None:
                self.ca.reissue("rw", name, rw.identity)
        self.apply_config(self.cfg)
        return cert

    def road_warrior_bundle(self, name: str) -> dict[str, str]:
        rw = self.cfg.road_warriors.get(name)
        if rw is None:
            raise KeyError(name)
        gw = self.cfg.nsfs[rw.gateway]
        prof = self.cfg.profiles[rw.crypto_profile]
        cred = self.creds.rw_cert(rw)
        cas = self.ca.trust_anchors()
        return {
            "swanctl-conf": swanctl_conf(rw, gw, prof),
            "certificate": cred.cert_pem.decode(),
            "private-key": cred.key_pem.decode(),
            "ca-certificate": "".join(c.public_bytes(serialization.Encoding.PEM).decode()
                                      for c in cas),
        }

    # ---- operational state ---------------------------------------------------------------------

    def state_policies(self, q: str) -> list[etree._Element]:

        out = []
        pols = ike_policies(self.cfg)
        for name in sorted(pols):
            st = self.status.get(name)
            if st is None:
                continue
            pol = pols[name]
            nsfs = (pol.a.nsf, pol.b.nsf)
            spds = self._spds(pol)
            status, error = st.status, st.error
            if status == "active":  # what the events said, checked against the Child SAs
                status, error = ike_verdict(nsfs, spds, self.svc.south.sessions,
                                            self.readings, st.since)
            p = etree.Element(q + "policy")
            for tag, v in (("name", name), ("group", pol.group), ("endpoint-a", pol.a.nsf),
                           ("endpoint-b", pol.b.nsf), ("key-management", "ike"),
                           ("status", status), ("error-message", error),
                           ("generation", "0"), ("last-change", yang_time(st.since))):
                if v is not None:
                    etree.SubElement(p, q + tag).text = v
            for sa in sa_rows(q, nsfs, spds, self.readings):
                p.append(sa)
            out.append(p)
        return out

    def _spds(self, pol: Policy) -> list[str]:
        a, b = self.cfg.nsfs.get(pol.a.nsf), self.cfg.nsfs.get(pol.b.nsf)
        if a is None or b is None:
            return []
        return [spd_name(pol.name, f.index) for f in policy_flows(pol, a, b)]

    async def read_state(self) -> None:
        """Read the Child SAs of every connected NSF of the IKE case (ike_evidence.py)."""
        nsfs = {n for p in ike_policies(self.cfg).values() for n in (p.a.nsf, p.b.nsf)}
        if nsfs:
            self.readings.update(await read_ike(
                self.svc.south.sessions, nsfs, self.svc.opts.rpc_timeout, self.svc.clock,
                PREFIX + "/"))

    def rw_state(self) -> dict[str, tuple[str, str | None, str | None]]:
        return {k.removeprefix("rw:"): (v.status, v.error, self.rw_peer.get(k[3:]))
                for k, v in self.status.items() if k.startswith("rw:")}
