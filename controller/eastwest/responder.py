"""The responder's side of the east-west RPCs (handlers are synchronous, on the loop):
who may call, announcements, proposals, confirmations and discovery look-ups."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Any

from lxml import etree

from controller.eastwest.keys import Ephemeral
from controller.eastwest.model import NS, Peer, Q
from controller.eastwest.negotiate import Mismatch, NoMatch, build_sas, match_policy
from controller.eastwest.plan import Agreement, flows_for
from controller.eastwest.records import proposal, propose_reply
from netconf_core.errors import RpcError

log = logging.getLogger(__name__)


class Responder:
    """Mixed into EastWestService."""

    cfg: Any
    agreements: dict[str, Agreement]
    flow: Any
    pushed: set[str]
    confirmed: set[str]
    push_error: dict[str, str]
    _eph_pub: dict[str, str]
    prev: dict[str, Agreement]
    phase: dict[str, int]
    allowed: dict[str, int]
    _next_try: dict[str, float]
    _wake: Any


    def _caller(self, sess: Any, op: etree._Element) -> Peer:
        who = (op.findtext(Q + "controller-id") or "").strip()
        peer = self.cfg.peer_map().get(who)
        if peer is None or self.cfg.controller_id is None:
            raise RpcError("application", "access-denied",
                           f"{who!r} is not a configured east-west peer",
                           info={"bad-element": "controller-id"})
        if getattr(sess, "username", None) != peer.local_account:
            raise RpcError("application", "access-denied",
                           f"peer {who} must call from account {peer.local_account!r}, "
                           f"not {getattr(sess, 'username', None)!r}",
                           info={"bad-element": "controller-id"})
        return peer

    def rpc_announce(self, srv: Any, sess: Any, op: etree._Element) -> list[etree._Element]:
        peer = self._caller(sess, op)
        if self._take_announcement(peer.name, op):
            self.kick_peer(peer.name)
        out = [etree.Element(Q + "controller-id", nsmap={None: NS})]
        out[0].text = self.cfg.controller_id
        holder = etree.Element("x")
        self._announcement(holder)
        return [*out, *list(holder)]

    def rpc_propose(self, srv: Any, sess: Any, op: etree._Element) -> list[etree._Element]:
        peer = self._caller(sess, op)
        try:
            prop = proposal(op)
        except (ValueError, TypeError) as exc:
            raise RpcError("application", "invalid-value", f"bad proposal: {exc}") from None
        for ag in self.agreements.values():  # a retried proposal: the same answer
            if ag.nonce == prop.nonce and ag.peer == peer.name:
                return propose_reply(ag, self._eph_pub.get(ag.nonce, ""))
        if (self.cfg.controller_id or "") < peer.name:
            raise RpcError("application", "operation-failed",
                           f"{self.cfg.controller_id} initiates with {peer.name}, not the "
                           "other way round")
        cands = [(p, self._local_prefixes(p)) for p in self.cfg.policy_map().values()
                 if self._peer_of(p) in (peer.name, None)]
        try:
            pol = match_policy(prop, cands)
        except Mismatch as exc:
            pname, why = exc.args
            msg = f"policy mismatch with {peer.name} ({pname} here vs {prop.policy}): {why}"
            self._set_status(pname, "mismatch", msg)
            raise RpcError("application", "invalid-value", msg,
                           app_tag="east-west-mismatch") from None
        except NoMatch as exc:
            raise RpcError("application", "data-missing", str(exc)) from None
        old = self.agreements.get(pol.name)
        if old is not None and old.peer == peer.name and prop.generation < old.generation:
            raise RpcError("application", "invalid-value",
                           f"generation {prop.generation} is older than the agreed "
                           f"{old.generation}", info={"bad-element": "generation"})
        nsf = self.local_nsfs()[pol.local_nsf]
        flows = flows_for(prop.initiator_prefixes, prop.responder_prefixes)
        if pol.name in self.prev:
            cur = self.agreements[pol.name]
            if cur.peer != peer.name or self.allowed.get(cur.nonce, 1) > 1:
                raise RpcError("application", "resource-denied",
                               f"policy {pol.name} is being rekeyed (generation "
                               f"{cur.generation}); retry when done")
            # The initiator never confirmed a step of that rekey and proposes anew: it lost
            # it (restarted before persisting it). Only the new inbound SAs were added here
            # (under the same names the new proposal's will replace): drop it, rekey again.
            log.info("east-west: policy %s: rekey to generation %d abandoned by %s",
                     pol.name, cur.generation, peer.name)
            holders = [(cur.local_nsf.name, cur.local_nsf.data_plane_address)]
            for spi in cur.spis(inbound=True):
                self.flow.km.release(holders, spi)
            self.phase.pop(cur.nonce, None)
            self.allowed.pop(cur.nonce, None)
            self._eph_pub.pop(cur.nonce, None)
            old = self.agreements[pol.name] = self.prev.pop(pol.name)
        # same traffic and algorithms as a protected agreement: make-before-break rekey
        rekey = (old is not None and old.peer == peer.name and old.nonce in self.confirmed
                 and prop.generation > old.generation and old.flows == flows
                 and old.algorithms == pol.algorithms and old.local_nsf.name == nsf.name)
        if len(prop.inbound_spis) != len(flows):
            raise RpcError("application", "invalid-value",
                           f"{len(flows)} flows need {len(flows)} inbound SPIs, got "
                           f"{len(prop.inbound_spis)}", info={"bad-element": "inbound-spi"})
        eph = Ephemeral()
        try:
            shared = eph.shared(prop.public_key)
        except ValueError as exc:
            raise RpcError("application", "invalid-value", str(exc),
                           info={"bad-element": "public-key"}) from None
        holders = [(nsf.name, nsf.data_plane_address)]
        spis = tuple(self.flow.km.allocate_spi(holders) for _ in flows)
        sas = build_sas(pol.name, flows, peer.name, self.cfg.controller_id or "",
                        prop.generation, prop.nonce, shared, spis, prop.inbound_spis,
                        pol.algorithms)
        ag = Agreement(pol.name, pol.policy_id, peer.name, "b", prop.generation, prop.nonce,
                       nsf, prop.data_plane_address, flows, pol.algorithms, sas,
                       time.time())
        if rekey:
            assert old is not None
            self.prev[pol.name] = old
            self.allowed[ag.nonce] = 1
        elif old is not None:
            self._retire(pol.name)
        self.agreements[pol.name] = ag
        self._eph_pub[ag.nonce] = eph.public_hex
        self._save()
        self._set_status(pol.name, "agreed", f"pushing {nsf.name}")
        log.info("east-west: policy %s agreed with %s as responder (generation %d)",
                 pol.name, peer.name, prop.generation)
        self._wake.set()
        return propose_reply(ag, eph.public_hex)

    def rpc_confirm(self, srv: Any, sess: Any, op: etree._Element) -> None:
        peer = self._caller(sess, op)
        nonce = (op.findtext(Q + "nonce") or "").strip()
        ag = next((a for a in self.agreements.values()
                   if a.nonce == nonce and a.peer == peer.name), None)
        if ag is None:
            raise RpcError("application", "invalid-value",
                           f"no agreement with {peer.name} for this nonce (superseded?)",
                           info={"bad-element": "nonce"})
        if ag.policy in self.prev:
            return self._confirm_rekey_step(ag, (op.findtext(Q + "step") or "final").strip())
        if nonce not in self.pushed:
            why = self.push_error.get(nonce)
            if why:
                raise RpcError("application", "operation-failed",
                               f"{self.cfg.controller_id} could not push "
                               f"{ag.local_nsf.name}: {why}")
            raise RpcError("application", "resource-denied",
                           f"{self.cfg.controller_id} is still pushing {ag.local_nsf.name}")
        if nonce not in self.confirmed:
            self.confirmed.add(nonce)
            self._save()
        self._set_status(ag.policy, "protected", None)
        return None

    def rpc_withdraw(self, srv: Any, sess: Any, op: etree._Element) -> None:
        """The peer dropped its side of an agreement: drop ours (idempotent)."""
        peer = self._caller(sess, op)
        nonce = (op.findtext(Q + "nonce") or "").strip()
        ag = next((a for a in self.agreements.values()
                   if a.nonce == nonce and a.peer == peer.name), None)
        if ag is None:
            return None
        self._retire(ag.policy)
        self._save()
        self._set_status(ag.policy, "waiting-peer",
                         f"{peer.name} withdrew the agreement (its policy was removed or "
                         "changed)")
        if ag.role == "a":  # we initiate: propose again (the peer may have changed it)
            self._next_try[ag.policy] = 0.0
        self._wake.set()
        return None

    def _confirm_rekey_step(self, ag: Agreement, step: str) -> None:
        """The initiator's NSF completed `step`: accepted once ours did too, and then our
        next step is allowed (new inbound on both → switch outbound; both switched →
        remove the old inbound)."""
        need = {"inbound": 1, "switched": 2}.get(step)
        if need is None:
            raise RpcError("application", "invalid-value",
                           f"policy {ag.policy} is being rekeyed: confirm step 'inbound' or "
                           f"'switched', not {step!r}", info={"bad-element": "step"})
        if self.phase.get(ag.nonce, 0) < need:
            why = self.push_error.get(ag.nonce)
            raise RpcError("application", "operation-failed" if why else "resource-denied",
                           f"{self.cfg.controller_id} has not completed rekey step {need} on "
                           f"{ag.local_nsf.name}" + (f": {why}" if why else " yet"))
        self.allowed[ag.nonce] = max(self.allowed.get(ag.nonce, 1), need + 1)
        self._save()
        self._wake.set()
        return None

    def rpc_rekey(self, srv: Any, sess: Any, op: etree._Element) -> list[etree._Element]:
        name = (op.findtext(Q + "policy") or "").strip()
        try:
            gen = self.request_rekey(name)
        except KeyError:
            raise RpcError("application", "invalid-value", f"no east-west policy {name!r}",
                           info={"bad-element": "policy"}) from None
        except ValueError as exc:
            raise RpcError("application", "operation-failed", str(exc)) from None
        e = etree.Element(Q + "generation", nsmap={None: NS})
        e.text = str(gen)
        return [e]

    def rpc_lookup(self, srv: Any, sess: Any, op: etree._Element) -> list[etree._Element]:
        try:
            addr = ipaddress.ip_address((op.findtext(Q + "address") or "").strip())
        except ValueError as exc:
            raise RpcError("application", "invalid-value", str(exc),
                           info={"bad-element": "address"}) from None
        hit = self.lookup(addr)
        if hit is None:
            raise RpcError("application", "data-missing",
                           f"no controller announces a prefix holding {addr}",
                           info={"bad-element": "address"})
        out = []
        for k, v in zip(("controller-id", "nsf", "prefix"), hit, strict=True):
            e = etree.Element(Q + k, nsmap={None: NS})
            e.text = str(v)
            out.append(e)
        return out
