"""Policy status from data-plane evidence (issue 13.2), IKE-less case.

A committed transaction only proves that both NSFs *accepted* a policy's entries. So every
`status_interval` seconds the controller reads the SAD state of each connected NSF (entry
names and `ipsec-sa-state/sa-lifetime-current` counters, never keys) and checks each policy
the scheduler calls `active` against it:

* `stale`    an endpoint NSF is not connected, or reading its state failed for 3 intervals;
* `degraded` an SA of the live generation is missing on its sender or receiver (not in the
             running configuration, or — where the NSF reports data-plane state — not in its
             data plane), or its sender counted ≥ 3 packets since the previous reading that
             its receiver did not count (the tunnel is dead in that direction);
* `waiting`  an on-demand policy whose SAs are made on the first packet has none yet;
* `active`   otherwise (traffic may be idle: an SA nobody sends on is not a fault).

Readings of both NSFs are taken together, so the sender's and the receiver's counters span
the same interval. Only NSFs with a policy in the scheduler's `active` state are read (a
policy being installed or rekeyed is judged by its transactions): the readings cost the
NSFs nothing while the controller is busy rekeying. The derived status is what the
operational state, `policy-status-change` notifications and the CLI show; the scheduler's
own status still drives provisioning.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from controller.core.nc_client import NcError
from controller.core.records import SaRecord
from controller.core.southbound import CONNECTED, NsfSession
from netconf_core.errors import NC_NS
from netconf_core.i2nsf.namespaces import IKELESS_NS

log = logging.getLogger(__name__)

IK = f"{{{IKELESS_NS}}}"
SAD_STATE = (f'<get xmlns="{NC_NS}"><filter type="subtree"><ipsec-ikeless xmlns="{IKELESS_NS}">'
             "<sad><sad-entry><name/><ipsec-sa-state/></sad-entry></sad></ipsec-ikeless>"
             "</filter></get>")
MIN_LOST = 3  # packets sent and not received in one interval before a direction is dead
STALE_INTERVALS = 3


@dataclass
class Reading:
    """One NSF's SAD as read from `at` (when the request was sent): entry name → (bytes,
    packets), None without data-plane state."""

    at: float
    sas: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    @functools.cached_property
    def reports_state(self) -> bool:  # (asked once per SA per verdict: computed once)
        return any(v is not None for v in self.sas.values())


def parse_reading(reply: etree._Element, at: float, prefix: str) -> Reading:
    out = Reading(at)
    for e in reply.iter(IK + "sad-entry"):
        name = (e.findtext(IK + "name") or "").strip()
        if not name.startswith(prefix):
            continue
        cur = e.find(f"{IK}ipsec-sa-state/{IK}sa-lifetime-current")
        if cur is None:
            out.sas[name] = None
        else:
            out.sas[name] = (int(cur.findtext(IK + "bytes") or 0),
                             int(cur.findtext(IK + "packets") or 0))
    return out


class Evidence:
    """The last two readings of every NSF, and the verdict on a policy from them."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.now: dict[str, Reading] = {}
        self.prev: dict[str, Reading] = {}
        self.failing: dict[str, float] = {}  # NSF → since when reading its state fails
        self.version = 0

    def failed(self, nsf: str, at: float) -> None:
        self.failing.setdefault(nsf, at)

    def record(self, nsf: str, reading: Reading) -> None:
        old = self.now.get(nsf)
        if old is not None:
            self.prev[nsf] = old
        self.now[nsf] = reading
        self.failing.pop(nsf, None)
        self.version += 1

    def forget(self, nsf: str) -> None:
        """A new session: the counters of the previous one are no base for a delta."""
        if self.now.pop(nsf, None) is not None or self.prev.pop(nsf, None) is not None:
            self.version += 1

    def counters(self, nsf: str, sa: str) -> tuple[bool, tuple[int, int] | None] | None:
        """(present, (bytes, packets) or None) of SA `sa` on `nsf`; None if never read."""
        r = self.now.get(nsf)
        if r is None:
            return None
        return (sa in r.sas, r.sas.get(sa))

    def _delta(self, nsf: str, sa: str) -> int | None:
        now, prev = self.now.get(nsf), self.prev.get(nsf)
        if now is None or prev is None:
            return None
        a, b = now.sas.get(sa), prev.sas.get(sa)
        if a is None or b is None:
            return None
        return a[1] - b[1]

    def verdict(self, nsfs: tuple[str, str], sessions: dict[str, NsfSession],
                live: list[SaRecord], now: float, settled: float = 0.0
                ) -> tuple[str, str | None]:
        """`active` or why not (`stale`/`degraded`, with the reason) for a policy whose
        endpoints are `nsfs` and whose live generation's SAs are `live`; `settled`: when its
        NSFs last changed (readings begun before that say nothing about its SAs)."""
        for nsf in nsfs:
            s = sessions.get(nsf)
            if s is None or s.state != CONNECTED:
                why = f"{s.state}: {s.last_error}" if s is not None and s.last_error else (
                    s.state if s is not None else "not in the inventory")
                return "stale", f"NSF {nsf} is unreachable ({why}); its data plane cannot " \
                                "be checked"
            r = self.now.get(nsf)
            if r is None:
                return "active", None  # not read yet (just connected): nothing against it
            since = self.failing.get(nsf)
            if since is not None and now - since > STALE_INTERVALS * self.interval:
                return "stale", (f"the state of NSF {nsf} could not be read for "
                                 f"{now - since:.0f} s")
        if any(self.now[n].at <= settled for n in nsfs):
            return "active", None  # read before its last change: wait for the next reading
        for rec in live:
            for nsf in (rec.sender, rec.receiver):
                r = self.now[nsf]
                if rec.name not in r.sas:
                    return "degraded", f"SA {rec.name} (SPI {rec.spi:#x}) is missing on NSF {nsf}"
                if r.reports_state and r.sas[rec.name] is None:
                    return "degraded", (f"SA {rec.name} (SPI {rec.spi:#x}) is configured on NSF "
                                        f"{nsf} but not in its data plane")
        for rec in live:
            sent, got = self._delta(rec.sender, rec.name), self._delta(rec.receiver, rec.name)
            if (sent is not None and got is not None and sent >= MIN_LOST and got <= 0
                    and all(self.prev[n].at > settled for n in (rec.sender, rec.receiver))):
                return "degraded", (f"NSF {rec.sender} sent {sent} packets on SA {rec.name} "
                                    f"that NSF {rec.receiver} did not receive")
        return "active", None


async def read_all(sessions: dict[str, NsfSession], nsfs: set[str], timeout: float,
                   clock: Callable[[], float], prefix: str) -> dict[str, Reading]:
    """Read the SAD state of every connected NSF of `nsfs`, side by side."""

    async def one(name: str) -> tuple[str, Reading | None]:
        start = clock()  # (a reading holds what the NSF had from this moment on)
        s = sessions.get(name)
        client = s.client if s is not None and s.state == CONNECTED else None
        if client is None:
            return name, None
        try:
            reply = await client.rpc(SAD_STATE, timeout)
        except NcError as exc:
            log.debug("NSF %s: cannot read SAD state: %s", name, exc)
            return name, None
        return name, parse_reading(reply, start, prefix)

    got = await asyncio.gather(*(one(n) for n in sorted(nsfs)))
    return {n: r for n, r in got if r is not None}
