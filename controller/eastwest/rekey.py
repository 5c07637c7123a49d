"""Make-before-break rekeys across two controllers (mixed into EastWestService).

The initiator proposes generation n+1 for a protected policy; then, on each NSF, in order:
1. the new inbound SAs are added (both NSFs; the old SAs keep carrying traffic),
2. each sender switches its outbound SA — only once the other NSF holds the new inbound SA,
3. the old inbound SAs are removed — only once the other NSF sends on the new SAs.
The initiator drives it: after each step its NSF completed it `confirm-sa`s the step; the
responder accepts once its own NSF completed the same step and then allows its next step.
Steps are the IPsec service's own (`translate.add_inbound_parts` / `switch_outbound_parts` /
`remove_old_parts`), on our NSF only; progress is persisted, so a restart resumes mid-rekey.
"""

from __future__ import annotations

import logging
from typing import Any

from lxml import etree

from controller.core.nc_client import NcError
from controller.eastwest import plan as ewplan
from controller.eastwest.model import NS, Q
from controller.eastwest.plan import Agreement
from controller.eastwest.records import el as _el

log = logging.getLogger(__name__)


class Rekey:
    cfg: Any
    flow: Any
    agreements: dict[str, Agreement]
    prev: dict[str, Agreement]
    phase: dict[str, int]
    allowed: dict[str, int]
    confirmed: set[str]
    pushed: set[str]
    _rekey: set[str]
    _next_try: dict[str, float]
    _wake: Any
    _save: Any

    async def _advance_rekey(self, name: str, ag: Agreement, peer: str) -> None:
        """Initiator side of a make-before-break rekey: after each step our NSF completed,
        tell the peer (which answers once its NSF completed the same step), then allow
        the next step here."""
        done, allow = self.phase.get(ag.nonce, 0), self.allowed.get(ag.nonce, 1)
        if done < allow:
            return self._retry_later(name)  # _push_pending does the step
        if allow == 3:
            return self._done(name)
        op = etree.Element(Q + "confirm-sa", nsmap={None: NS})
        _el(op, "controller-id", self.cfg.controller_id)
        _el(op, "nonce", ag.nonce)
        _el(op, "step", "inbound" if allow == 1 else "switched")
        try:
            await self._rpc(peer, op)
        except NcError as exc:
            self._set_status(name, "protected", f"rekeying: waiting for {peer}: {exc}")
            return self._retry_later(name)
        self.allowed[ag.nonce] = allow + 1
        if allow + 1 == 3:
            self.confirmed.add(ag.nonce)
        self._save()
        self._next_try[name] = 0.0
        self._wake.set()

    def request_rekey(self, name: str) -> int:
        """Start a rekey of `name` (initiator only); the new generation."""
        pol = self.cfg.policy_map().get(name)
        ag = self.agreements.get(name)
        if pol is None:
            raise KeyError(name)
        if ag is None or ag.nonce not in self.confirmed:
            raise ValueError(f"policy {name} is not protected yet")
        if ag.role != "a":
            raise ValueError(f"{ag.peer} initiates for policy {name}: rekey it there")
        if name in self.prev or name in self._rekey:
            raise ValueError(f"policy {name} is already being rekeyed")
        self._rekey.add(name)
        self._save()  # a request answered is a request kept, across a restart too
        self._next_try[name] = 0.0
        self._wake.set()
        return ag.generation + 1

    async def _push_rekey_step(self, name: str, ag: Agreement) -> None:
        old = self.prev[name]
        done, allow = self.phase.get(ag.nonce, 0), self.allowed.get(ag.nonce, 1)
        if done >= allow:
            return
        err = await self._transact(ag.local_nsf.name,
                                   ewplan.rekey_bytes(old, ag, done, allow), ag.nonce)
        if err is not None or self.agreements.get(name) is not ag:
            return
        self.phase[ag.nonce] = allow
        log.info("east-west: policy %s: rekey step %d done on %s (generation %d)", name,
                 allow, ag.local_nsf.name, ag.generation)
        if allow == 3:  # old generation gone from our NSF: the rekey is over here
            self.prev.pop(name, None)
            self.phase.pop(ag.nonce, None)
            self.allowed.pop(ag.nonce, None)
            self.pushed.add(ag.nonce)
            self.confirmed.add(ag.nonce)
            holders = [(old.local_nsf.name, old.local_nsf.data_plane_address)]
            for spi in old.spis(inbound=True):
                self.flow.km.release(holders, spi)
            self._set_status(name, "protected", None)
        self._save()
        self._next_try[name] = 0.0
        self._wake.set()

