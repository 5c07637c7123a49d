"""The east-west service: peers, announcements, discovery and IKE-less SA agreements.

One asyncio task (`run`) announces our NSFs to every peer, and, for each policy where this
controller is the initiator, proposes SAs until the peer agrees; each controller then pushes
only its own NSF through the IPsec service's sessions and two-phase transactions. The
responder answers `propose-sa` at once (RPC handlers are synchronous) and pushes its NSF in
the background; the initiator pushes its NSF and then `confirm-sa`s, which the responder
accepts only once its own push succeeded: a flow is `protected` on both sides only when both
NSFs hold the SAs.

Agreements (with their keys, as the IPsec service's store keeps keys) are persisted in
`eastwest.json` (0600, write + fsync + rename), so a restarted controller re-pushes the same
SAs (idempotent `replace`) instead of renegotiating, and a repeated proposal or
confirmation (same nonce) gets the same answer: every exchange can be retried after either
side restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from lxml import etree

from controller.core.nc_client import NcClient, NcError, NcRpcError
from controller.core.transaction import locked
from controller.eastwest import plan as ewplan
from controller.eastwest.keys import Ephemeral
from controller.eastwest.model import NS, EwConfig, EwPolicy, Q
from controller.eastwest.negotiate import (
    build_sas,
)
from controller.eastwest.plan import Agreement, flows_for
from controller.eastwest.records import agreement_from, agreement_to
from controller.eastwest.records import el as _el
from controller.eastwest.rekey import Rekey
from controller.eastwest.responder import Responder
from controller.ipsec.model import Nsf
from netconf_core.i2nsf.types import IpNet

log = logging.getLogger(__name__)

ANNOUNCE_EVERY = 10.0
RETRY_MIN, RETRY_MAX = 0.3, 3.0




class EastWestService(Rekey, Responder):
    def __init__(self, flow: Any, state_dir: Path | None) -> None:
        self.flow = flow  # controller.ipsec.service.FlowService: NSF sessions, transactions
        self.path = None if state_dir is None else state_dir / "eastwest.json"
        self.cfg = EwConfig(None, {}, {})
        self.notify: Any = None
        self.agreements: dict[str, Agreement] = {}
        self.status: dict[str, tuple[str, str | None]] = {}  # policy → (status, error)
        self.confirmed: set[str] = set()  # nonces the initiator confirmed / we confirmed
        self.pushed: set[str] = set()  # nonces whose SAs our NSF holds
        self.push_error: dict[str, str] = {}
        self.announced: dict[str, list[tuple[str, str, tuple[IpNet, ...]]]] = {}
        self.peer_status: dict[str, tuple[str, str | None]] = {}
        self.clients: dict[str, NcClient] = {}
        self._next_try: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._announce_due: dict[str, float] = {}
        self._stale: dict[str, tuple[list[str], list[str]]] = {}  # policy → names to remove
        self._stale_nsf: dict[str, str] = {}
        self._eph_pub: dict[str, str] = {}  # nonce → our public key (a retry's answer)
        # make-before-break rekeys: policy → the agreement being replaced; per new nonce the
        # last step our NSF completed (1 new inbound, 2 outbound switched, 3 old inbound
        # removed) and the last step the peer's progress allows
        self.prev: dict[str, Agreement] = {}
        self.phase: dict[str, int] = {}
        self.allowed: dict[str, int] = {}
        self._rekey: set[str] = set()
        self._withdraw: dict[str, str] = {}  # nonce → peer still to be told it is gone
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._load()

    # ---- persistence ----------------------------------------------------------------------

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        data = json.loads(self.path.read_text())
        for d in data.get("agreements", []):
            ag = agreement_from(d)
            self.agreements[ag.policy] = ag
            if d.get("confirmed"):
                self.confirmed.add(ag.nonce)
            if d.get("public_key"):
                self._eph_pub[ag.nonce] = d["public_key"]
            for sa in ag.sas:
                if sa.receiver == ag.role:  # ours: keep it reserved in the key manager
                    self.flow.km._reserved.add((ag.local_nsf.name,
                                                str(ag.local_nsf.data_plane_address),
                                                sa.spi))
        self._stale = {k: (v[0], v[1]) for k, v in data.get("stale", {}).items()}
        self._stale_nsf = dict(data.get("stale_nsf", {}))
        self.prev = {d["policy"]: agreement_from(d) for d in data.get("prev", [])}
        self.phase = dict(data.get("phase", {}))
        self.allowed = dict(data.get("allowed", {}))
        self._rekey = set(data.get("rekey_requested", []))
        self._withdraw = dict(data.get("withdraw", {}))
        log.info("east-west: %d agreements resumed (%d rekeys in progress, %d requested)",
                 len(self.agreements), len(self.prev), len(self._rekey))

    def _save(self) -> None:
        if self.path is None:
            return
        data = {"agreements": [{**agreement_to(a, a.nonce in self.confirmed),
                                "public_key": self._eph_pub.get(a.nonce)}
                               for a in self.agreements.values()],
                "stale": self._stale, "stale_nsf": self._stale_nsf,
                "prev": [agreement_to(a, True) for a in self.prev.values()],
                "phase": self.phase, "allowed": self.allowed,
                "rekey_requested": sorted(self._rekey), "withdraw": self._withdraw}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # ---- configuration --------------------------------------------------------------------

    def apply_config(self, cfg: EwConfig) -> None:
        old = self.cfg
        self.cfg = cfg
        for name, ag in list(self.agreements.items()):
            pol = cfg.policy_map().get(name)
            if pol is None or not self._still_valid(pol, ag):
                self._retire(name)
                self._withdraw[ag.nonce] = ag.peer  # the peer must drop its side too
        for name in old.peer_map():
            if name not in cfg.peer_map() or cfg.peer_map()[name] != old.peer_map()[name]:
                c = self.clients.pop(name, None)
                if c is not None:
                    c.close("peer configuration changed")
                self.announced.pop(name, None)
        for name in cfg.peer_map():
            self._announce_due[name] = 0.0  # tell peers now: they may be waiting for us
        for name in cfg.policy_map():
            self._next_try[name] = 0.0
            self._backoff.pop(name, None)
            ag = self.agreements.get(name)
            if ag is None:
                self._set_status(name, "waiting-peer", "negotiating")
            elif name not in self.status:  # resumed from eastwest.json after a restart
                self._set_status(name, *(("protected", None) if ag.nonce in self.confirmed
                                         else ("agreed", "resumed; waiting for confirmation")))
        for name in list(self.status):
            if name not in cfg.policy_map():
                self.status.pop(name, None)
        self._save()
        self._wake.set()

    def _still_valid(self, pol: EwPolicy, ag: Agreement) -> bool:
        local = self._local_prefixes(pol)
        mine = (tuple(f.a_prefix for f in ag.flows) if ag.role == "a"
                else tuple(f.b_prefix for f in ag.flows))
        theirs = (tuple(f.b_prefix for f in ag.flows) if ag.role == "a"
                  else tuple(f.a_prefix for f in ag.flows))
        return (pol.local_nsf == ag.local_nsf.name and set(mine) == set(local)
                and set(theirs) == set(pol.remote_prefixes)
                and pol.algorithms == ag.algorithms
                # after a restart nothing is announced yet: that is no reason to drop it
                and self._peer_of(pol) in (ag.peer, None))

    def _retire(self, name: str) -> None:
        """Forget an agreement; its entries leave the NSF with the next push (or now, if
        the policy is gone)."""
        ag = self.agreements.pop(name)
        spd, sad = self._stale.get(name, ([], []))
        old = self.prev.pop(name, None)  # mid-rekey: the old generation's entries go too
        sad_old = old.sad_names() if old is not None else []
        self._stale[name] = (sorted({*spd, *ag.spd_names()}),
                             sorted({*sad, *ag.sad_names(), *sad_old}))
        self.phase.pop(ag.nonce, None)
        self.allowed.pop(ag.nonce, None)
        self._stale_nsf[name] = ag.local_nsf.name
        self.pushed.discard(ag.nonce)
        self.confirmed.discard(ag.nonce)
        self._eph_pub.pop(ag.nonce, None)
        holders = [(ag.local_nsf.name, ag.local_nsf.data_plane_address)]
        for spi in ag.spis(inbound=True):
            self.flow.km.release(holders, spi)

    # ---- discovery ------------------------------------------------------------------------

    def local_nsfs(self) -> dict[str, Nsf]:
        return dict(self.flow.cfg.nsfs)

    def _local_prefixes(self, pol: EwPolicy) -> tuple[IpNet, ...]:
        if pol.local_prefixes:
            return pol.local_prefixes
        nsf = self.local_nsfs().get(pol.local_nsf)
        return nsf.protected_prefixes if nsf else ()

    def lookup(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address
               ) -> tuple[str, str, IpNet] | None:
        """(controller-id, NSF, prefix) with the longest announced prefix holding `addr`:
        our own NSFs, then what peers announced."""
        best: tuple[str, str, IpNet] | None = None
        cands = [(self.cfg.controller_id or "", n.name, p)
                 for n in self.local_nsfs().values() for p in n.protected_prefixes]
        cands += [(peer, nsf, p) for peer, nsfs in self.announced.items()
                  for nsf, _a, ps in nsfs for p in ps]
        for ctl, nsf, p in cands:
            if p.version == addr.version and addr in p and (
                    best is None or p.prefixlen > best[2].prefixlen):
                best = (ctl, nsf, p)
        return best

    def _peer_of(self, pol: EwPolicy) -> str | None:
        if pol.peer:
            return pol.peer
        for peer, nsfs in sorted(self.announced.items()):
            if all(any(r.version == p.version and r.subnet_of(p)  # type: ignore[arg-type]
                       for _n, _a, ps in nsfs for p in ps) for r in pol.remote_prefixes):
                return peer
        return None

    def _remote_nsf_address(self, peer: str, prefixes: tuple[IpNet, ...]) -> str | None:
        for _n, addr, ps in self.announced.get(peer, []):
            if all(any(r.version == p.version and r.subnet_of(p)  # type: ignore[arg-type]
                       for p in ps) for r in prefixes):
                return addr
        return None

    # ---- running --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="east-west")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for c in self.clients.values():
            c.close("controller stopping")

    async def run(self) -> None:
        while True:
            try:
                await self._step()
            except Exception:
                log.exception("east-west: step failed")
            now = time.monotonic()
            due = [t for t in (*self._next_try.values(), *self._announce_due.values())]
            delay = max(0.05, min([*due, now + 1.0]) - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _step(self) -> None:
        now = time.monotonic()
        if self.cfg.controller_id is None:
            return
        for name in list(self.cfg.peer_map()):
            if self._announce_due.get(name, 0.0) <= now:
                await self._announce(name)
        await self._send_withdrawals()
        await self._push_pending()
        for name, pol in list(self.cfg.policy_map().items()):
            if self._next_try.get(name, 0.0) > time.monotonic():
                continue
            await self._advance(name, pol)

    async def _send_withdrawals(self) -> None:
        """Tell peers about agreements we dropped (policy removed or changed), so that
        they remove their NSF's side and do not show a flow as protected that is not."""
        for nonce, peer in list(self._withdraw.items()):
            if peer not in self.cfg.peer_map():
                self._withdraw.pop(nonce, None)
                continue
            op = etree.Element(Q + "withdraw-sa", nsmap={None: NS})
            _el(op, "controller-id", self.cfg.controller_id)
            _el(op, "nonce", nonce)
            try:
                await self._rpc(peer, op)
            except NcRpcError as exc:
                log.warning("east-west: %s refused withdrawal: %s", peer, exc)
            except NcError:
                continue  # unreachable: next time
            self._withdraw.pop(nonce, None)
            self._save()

    def _retry_later(self, key: str) -> None:
        b = min(RETRY_MAX, self._backoff.get(key, RETRY_MIN / 2) * 2)
        self._backoff[key] = b
        self._next_try[key] = time.monotonic() + b

    def _done(self, key: str) -> None:
        self._backoff.pop(key, None)
        self._next_try[key] = float("inf")

    def kick_peer(self, peer: str) -> None:
        """Something changed at `peer`: retry what waits for it now."""
        for name, pol in self.cfg.policy_map().items():
            if self._peer_of(pol) in (peer, None) and self.status.get(
                    name, ("", None))[0] != "protected":
                self._next_try[name] = 0.0
                self._backoff.pop(name, None)
        self._wake.set()

    # ---- talking to peers -----------------------------------------------------------------

    async def _client(self, name: str) -> NcClient:
        c = self.clients.get(name)
        if c is not None and not c.closed.is_set():
            return c
        peer = self.cfg.peer_map()[name]
        c = NcClient(name=f"peer {name}")
        await c.connect(peer.address, peer.port, peer.username, host_key=peer.host_key,
                        client_keys=[peer.private_key_file],
                        timeout=self.flow.opts.rpc_timeout)
        self.clients[name] = c
        asyncio.get_running_loop().create_task(self._watch(name, c), name=f"ew-watch-{name}")
        return c

    async def _watch(self, name: str, c: NcClient) -> None:
        """A lost session (peer down, link cut) shows at once, and we try again soon."""
        await c.closed.wait()
        if self.clients.get(name) is c:
            self.clients.pop(name, None)
            self.peer_status[name] = ("unreachable", c.close_reason or "session closed")
            self._announce_due[name] = 0.0
            self._wake.set()

    async def _rpc(self, peer: str, body: etree._Element) -> etree._Element:
        try:
            c = await self._client(peer)
            reply = await c.rpc(body, self.flow.opts.rpc_timeout)
        except NcRpcError:
            self.peer_status[peer] = ("connected", None)
            raise
        except NcError as exc:
            self.peer_status[peer] = ("unreachable", str(exc))
            c = self.clients.pop(peer, None)
            if c is not None:
                c.close(str(exc))
            raise
        self.peer_status[peer] = ("connected", None)
        return reply

    def _announcement(self, parent: etree._Element) -> None:
        for n in sorted(self.local_nsfs().values(), key=lambda n: n.name):
            e = etree.SubElement(parent, Q + "nsf")
            _el(e, "name", n.name)
            _el(e, "data-plane-address", n.reachable_address)
            for p in n.protected_prefixes:
                _el(e, "prefix", p)

    async def _announce(self, peer: str) -> None:
        op = etree.Element(Q + "announce", nsmap={None: NS})
        _el(op, "controller-id", self.cfg.controller_id)
        self._announcement(op)
        try:
            reply = await self._rpc(peer, op)
        except NcError as exc:
            log.info("east-west: announce to %s failed: %s", peer, exc)
            self._announce_due[peer] = time.monotonic() + RETRY_MAX
            return
        who = reply.findtext(Q + "controller-id")
        if who != peer:
            self.peer_status[peer] = ("unreachable", f"peer says it is {who!r}")
            self._announce_due[peer] = time.monotonic() + RETRY_MAX
            return
        changed = self._take_announcement(peer, reply)
        self._announce_due[peer] = time.monotonic() + ANNOUNCE_EVERY
        if changed:
            self.kick_peer(peer)

    def _take_announcement(self, peer: str, el: etree._Element) -> bool:
        nsfs = []
        for n in el.iterfind(Q + "nsf"):
            nsfs.append(((n.findtext(Q + "name") or "").strip(),
                         (n.findtext(Q + "data-plane-address") or "").strip(),
                         tuple(ipaddress.ip_network((p.text or "").strip(), strict=False)
                               for p in n.iterfind(Q + "prefix"))))
        changed = self.announced.get(peer) != nsfs
        self.announced[peer] = nsfs
        return changed

    # ---- initiator ------------------------------------------------------------------------

    async def _advance(self, name: str, pol: EwPolicy) -> None:
        me = self.cfg.controller_id or ""
        peer = self._peer_of(pol)
        if peer is None or peer not in self.cfg.peer_map():
            self._set_status(name, "waiting-peer",
                             "no configured peer announces " + ", ".join(
                                 str(p) for p in pol.remote_prefixes)
                             if peer is None else f"peer {peer} is not configured")
            return self._retry_later(name)
        ag = self.agreements.get(name)
        if me > peer:  # the peer initiates; we answer (and get kicked when it is back)
            if ag is None:
                self._set_status(name, "waiting-peer", f"waiting for {peer} to propose")
            return self._done(name)
        if ag is not None and name in self.prev:
            return await self._advance_rekey(name, ag, peer)
        if ag is not None and ag.nonce in self.confirmed and name in self._rekey:
            try:
                await self._propose(name, pol, peer, rekey=True)
            except NcError as exc:
                self._set_status(name, "protected", f"rekey failed, retrying: {exc}")
                return self._retry_later(name)
            self._rekey.discard(name)
            return await self._advance_rekey(name, self.agreements[name], peer)
        if ag is not None and ag.nonce in self.confirmed:
            if pol.algorithms.rekey_time:  # the schedule: rekey when the agreement is due
                wait = ag.created + pol.algorithms.rekey_time - time.time()
                if wait <= 0:
                    self._rekey.add(name)
                    self._next_try[name] = 0.0
                    self._wake.set()
                    return None
                self._next_try[name] = time.monotonic() + wait
                return None
            return self._done(name)
        if ag is None:
            try:
                await self._propose(name, pol, peer)
            except NcError as exc:
                self._propose_failed(name, exc)
                return self._retry_later(name)
            ag = self.agreements[name]
        if ag.nonce not in self.pushed:
            return self._retry_later(name)  # _push_pending pushes it
        op = etree.Element(Q + "confirm-sa", nsmap={None: NS})
        _el(op, "controller-id", me)
        _el(op, "nonce", ag.nonce)
        try:
            await self._rpc(peer, op)
        except NcError as exc:
            self._set_status(name, "agreed", f"waiting for {peer} to confirm: {exc}")
            return self._retry_later(name)
        self.confirmed.add(ag.nonce)
        self._save()
        self._set_status(name, "protected", None)
        self._next_try[name] = 0.0  # once more: arms the rekey schedule, if any

    def _propose_failed(self, name: str, exc: NcError) -> None:
        if isinstance(exc, NcRpcError) and exc.errors and exc.errors[0].app_tag == \
                "east-west-mismatch":
            self._set_status(name, "mismatch", exc.errors[0].message)
        elif isinstance(exc, NcRpcError):
            self._set_status(name, "waiting-peer", exc.errors[0].message if exc.errors
                             else str(exc))
        else:
            self._set_status(name, "waiting-peer", str(exc))

    async def _propose(self, name: str, pol: EwPolicy, peer: str, rekey: bool = False
                       ) -> None:
        me = self.cfg.controller_id or ""
        nsf = self.local_nsfs()[pol.local_nsf]
        remote_addr = self._remote_nsf_address(peer, pol.remote_prefixes)
        if remote_addr is None:
            raise NcError(f"{peer} announced no NSF protecting "
                          + ", ".join(str(p) for p in pol.remote_prefixes))
        local = self._local_prefixes(pol)
        flows = flows_for(local, pol.remote_prefixes)
        old = self.agreements.get(name)
        gen = (old.generation + 1) if old else 1
        nonce = secrets.token_hex(16)
        eph = Ephemeral()
        holders = [(nsf.name, nsf.data_plane_address)]
        spis = [self.flow.km.allocate_spi(holders) for _ in flows]
        op = etree.Element(Q + "propose-sa", nsmap={None: NS})
        for k, v in (("controller-id", me), ("policy", name), ("generation", gen),
                     ("nonce", nonce), ("public-key", eph.public_hex),
                     ("data-plane-address", nsf.reachable_address)):
            _el(op, k, v)
        for p in local:
            _el(op, "initiator-prefix", p)
        for p in pol.remote_prefixes:
            _el(op, "responder-prefix", p)
        for s in spis:
            _el(op, "inbound-spi", s)
        for k, v in (("encryption", pol.algorithms.encryption),
                     ("key-length", pol.algorithms.key_length),
                     ("integrity", pol.algorithms.integrity),
                     ("rekey-time", pol.algorithms.rekey_time)):
            _el(op, k, v)
        try:
            reply = await self._rpc(peer, op)
            their_spis = tuple(int(e.text or "0") for e in reply.iterfind(Q + "inbound-spi"))
            shared = eph.shared(reply.findtext(Q + "public-key") or "")
            sas = build_sas(name, flows, me, peer, gen, nonce, shared, their_spis,
                            tuple(spis), pol.algorithms)
        except (NcError, ValueError) as exc:
            for s in spis:
                self.flow.km.release(holders, s)
            if isinstance(exc, ValueError):
                raise NcError(f"{peer} answered a bad proposal reply: {exc}") from None
            raise
        if old is not None and rekey:
            self.prev[name] = old
            self.allowed[nonce] = 1
            self._rekey.discard(name)  # persisted with the agreement just below
        elif old is not None:
            self._retire(name)
        self.agreements[name] = Agreement(name, pol.policy_id, peer, "a", gen, nonce, nsf,
                                          remote_addr, flows, pol.algorithms, sas,
                                          time.time())
        self._save()
        self._set_status(name, "agreed", f"pushing {nsf.name}")
        log.info("east-west: policy %s agreed with %s (generation %d, %d SAs)", name, peer,
                 gen, len(sas))
        await self._push_pending()

    # ---- pushing our NSF ------------------------------------------------------------------

    async def _push_pending(self) -> None:
        for name in list(self._stale):
            if name in self.agreements:
                continue  # removed with the new agreement's push
            nsf = self._stale_nsf.get(name) or next(iter(self.local_nsfs()), None)
            spd, sad = self._stale[name]
            if nsf is None or await self._transact(nsf, ewplan.remove_bytes(spd, sad)) is None:
                self._stale.pop(name, None)
                self._stale_nsf.pop(name, None)
                self._save()
        for name, ag in list(self.agreements.items()):
            if ag.nonce in self.pushed:
                continue
            if name in self.prev:
                await self._push_rekey_step(name, ag)
                continue
            spd, sad = self._stale.get(name, ([], []))
            err = await self._transact(ag.local_nsf.name, ewplan.install_bytes(ag, spd, sad),
                                       ag.nonce)
            if err is None and self.agreements.get(name) is ag:
                self.pushed.add(ag.nonce)
                self._stale.pop(name, None)
                self._save()
                self._set_status(name, "protected" if ag.nonce in self.confirmed else "agreed",
                                 None if ag.nonce in self.confirmed else
                                 f"{ag.local_nsf.name} holds the SAs; waiting for confirmation")
                if ag.role == "a":
                    self._next_try[name] = 0.0

    async def _transact(self, nsf: str, body: bytes, nonce: str | None = None) -> str | None:
        """One all-or-nothing transaction on our NSF; the error message, or None."""
        sessions = self.flow._sessions_for({nsf})
        if isinstance(sessions, str):
            if nonce:
                self.push_error.pop(nonce, None)
            return sessions
        try:
            async with locked(sessions):
                await self.flow._transact(sessions, {nsf: body})
        except Exception as exc:
            log.warning("east-west: pushing %s failed: %s", nsf, exc)
            if nonce:
                self.push_error[nonce] = str(exc)
            return str(exc)
        if nonce:
            self.push_error.pop(nonce, None)
        return None

    async def nsf_connected(self, nsf: str) -> None:
        """An NSF (re)connected: push its agreements again (idempotent replace)."""
        for ag in self.agreements.values():
            if ag.local_nsf.name == nsf:
                self.pushed.discard(ag.nonce)
        self._wake.set()

    # ---- status ---------------------------------------------------------------------------

    def _set_status(self, name: str, status: str, error: str | None) -> None:
        if self.status.get(name) == (status, error):
            return
        changed = self.status.get(name, ("", None))[0] != status
        self.status[name] = (status, error)
        log.info("east-west: policy %s: %s%s", name, status, f" ({error})" if error else "")
        if changed and self.notify is not None:
            n = etree.Element(Q + "policy-status-changed", nsmap={None: NS})
            _el(n, "policy", name)
            pol = self.cfg.policy_map().get(name)
            peer = self._peer_of(pol) if pol else None
            if peer:
                _el(n, "peer", peer)
            _el(n, "status", status)
            if error:
                _el(n, "error-message", error)
            self.notify(n)

    def state(self) -> list[etree._Element]:
        st = etree.Element(Q + "east-west-state", nsmap={None: NS})
        for name in sorted(self.cfg.peer_map()):
            p = etree.SubElement(st, Q + "peer")
            _el(p, "name", name)
            status, err = self.peer_status.get(name, ("unknown", None))
            _el(p, "status", status)
            if err:
                _el(p, "error-message", err)
            if name in self.announced:
                a = etree.SubElement(p, Q + "announced")
                for nsf, addr, ps in self.announced[name]:
                    e = etree.SubElement(a, Q + "nsf")
                    _el(e, "name", nsf)
                    _el(e, "data-plane-address", addr)
                    for x in ps:
                        _el(e, "prefix", x)
        for name, pol in sorted(self.cfg.policy_map().items()):
            p = etree.SubElement(st, Q + "policy")
            _el(p, "name", name)
            ag = self.agreements.get(name)
            peer = ag.peer if ag else self._peer_of(pol)
            if peer:
                _el(p, "peer", peer)
            status, err = self.status.get(name, ("waiting-peer", None))
            _el(p, "status", status)
            if err:
                _el(p, "error-message", err)
            if ag is not None:
                _el(p, "generation", ag.generation)
                if name in self.prev:
                    _el(p, "rekey-step", self.phase.get(ag.nonce, 0))
                for s in ag.spis(inbound=True):
                    _el(p, "inbound-spi", s)
                for s in ag.spis(inbound=False):
                    _el(p, "outbound-spi", s)
        return [st]


