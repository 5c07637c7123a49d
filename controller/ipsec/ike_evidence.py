"""The IKE case's status from the NSFs' Child SAs (issue 13.2).

IKE events (child-sa-up, auth-failure, ...) say what happened; they do not say what holds
now, and the state showed no SAs for IKE policies while traffic flowed. So with the IKE-less
readings (`evidence.py`) the controller also reads the IKE state of every NSF it configures
for the IKE case (`ipsec-ike/conn-entry/state`, with the agents' `i2nsf-ike-events:child-sa`
augment from charon: SPD entry name, SPIs, state, counters) and:

* shows each policy's Child SAs as `sa` rows (per NSF: inbound and outbound SPI, packets);
* shows an `active` policy `stale` when an endpoint NSF is unreachable, and `degraded` when
  an endpoint holds no INSTALLED Child SA for one of the policy's SPD entries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from lxml import etree

from controller.core.nc_client import NcError
from controller.core.southbound import CONNECTED, NsfSession
from netconf_core.errors import NC_NS
from netconf_core.i2nsf.namespaces import IKE_EVENTS_NS, IKE_NS

log = logging.getLogger(__name__)

Q = f"{{{IKE_NS}}}"
EV = f"{{{IKE_EVENTS_NS}}}"
IKE_STATE = (f'<get xmlns="{NC_NS}"><filter type="subtree"><ipsec-ike xmlns="{IKE_NS}">'
             "<conn-entry><name/><state/></conn-entry></ipsec-ike></filter></get>")


@dataclass(frozen=True)
class Child:
    spd: str
    state: str
    spi_in: int | None
    spi_out: int | None
    packets_in: int
    packets_out: int
    bytes_in: int
    bytes_out: int


@dataclass
class IkeReading:
    at: float
    children: dict[str, list[Child]] = field(default_factory=dict)  # SPD entry → Child SAs


def _int(e: etree._Element, tag: str) -> int | None:
    v = (e.findtext(EV + tag) or "").strip()  # (uint32/uint64 in i2nsf-ike-events)
    try:
        return int(v, 0) if v else None
    except ValueError:
        return None


def parse_ike_reading(reply: etree._Element, at: float, prefix: str) -> IkeReading:
    out = IkeReading(at)
    for c in reply.iter(EV + "child-sa"):
        spd = (c.findtext(EV + "spd-entry-name") or "").strip()
        if not spd.startswith(prefix):
            continue
        out.children.setdefault(spd, []).append(Child(
            spd, (c.findtext(EV + "sa-state") or "").strip().upper(),
            _int(c, "spi-in"), _int(c, "spi-out"), _int(c, "packets-in") or 0,
            _int(c, "packets-out") or 0, _int(c, "bytes-in") or 0, _int(c, "bytes-out") or 0))
    return out


async def read_ike(sessions: dict[str, NsfSession], nsfs: set[str], timeout: float,
                   clock: Callable[[], float], prefix: str) -> dict[str, IkeReading]:
    async def one(name: str) -> tuple[str, IkeReading | None]:
        start = clock()
        s = sessions.get(name)
        client = s.client if s is not None and s.state == CONNECTED else None
        if client is None:
            return name, None
        try:
            reply = await client.rpc(IKE_STATE, timeout)
        except NcError as exc:
            log.debug("NSF %s: cannot read IKE state: %s", name, exc)
            return name, None
        return name, parse_ike_reading(reply, start, prefix)

    got = await asyncio.gather(*(one(n) for n in sorted(nsfs)))
    return {n: r for n, r in got if r is not None}


def ike_verdict(nsfs: tuple[str, str], spds: list[str], sessions: dict[str, NsfSession],
                readings: dict[str, IkeReading], settled: float) -> tuple[str, str | None]:
    """`active`, or `stale`/`degraded` with the reason, for an IKE policy its events call
    active; `settled`: when it last became active (older readings say nothing)."""
    for nsf in nsfs:
        s = sessions.get(nsf)
        if s is None or s.state != CONNECTED:
            return "stale", f"NSF {nsf} is unreachable; its Child SAs cannot be checked"
    if any(n not in readings or readings[n].at <= settled for n in nsfs):
        return "active", None
    for nsf in nsfs:
        for spd in spds:
            if not any(c.state == "INSTALLED" for c in readings[nsf].children.get(spd, ())):
                return "degraded", f"NSF {nsf} holds no installed Child SA for {spd}"
    return "active", None


def sa_rows(q: str, nsfs: tuple[str, str], spds: list[str],
            readings: dict[str, IkeReading]) -> list[etree._Element]:
    """`sa` rows of the i2nsf-flow-policy state for an IKE policy's Child SAs."""
    out = []
    for nsf in nsfs:
        r = readings.get(nsf)
        for spd in spds:
            for c in (r.children.get(spd, ()) if r is not None else ()):
                for direction, spi, packets, nbytes in (
                        ("inbound", c.spi_in, c.packets_in, c.bytes_in),
                        ("outbound", c.spi_out, c.packets_out, c.bytes_out)):
                    if spi is None:
                        continue
                    sa = etree.Element(q + "sa")
                    for tag, v in (("nsf", nsf), ("name", f"{spd}/{spi:08x}"), ("spi", spi),
                                   ("direction", direction), ("present", "true"),
                                   ("packets", packets), ("bytes", nbytes)):
                        etree.SubElement(sa, q + tag).text = str(v)
                    out.append(sa)
    return out
