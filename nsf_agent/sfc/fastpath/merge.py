"""Fold the fast path's counters into the userspace data path's statistics snapshot, so
that `get` reports per rule / per (SPI, SI) totals whichever path carried the packets.

Packets the fast path passes up are counted by the userspace path only (its counters see
them arrive), so the two sets of counters never count one packet twice.
"""

from __future__ import annotations

import copy
from typing import Any

from .fastpath import Counters


def merge_stats(snap: dict[str, Any], fast: Counters) -> dict[str, Any]:
    out = copy.deepcopy(snap)
    rules = out.setdefault("rules", {})
    for name, (pk, by) in fast.rules.items():
        cur = rules.setdefault(name, [0, 0])
        cur[0] += pk
        cur[1] += by
    entries = out.setdefault("entries", [])
    by_key = {(e[0], e[1]): e for e in entries}
    for (spi, si), (pk, by) in fast.sff.items():
        e = by_key.get((spi, si))
        if e is None:
            e = [spi, si, 0, 0, [0]]
            entries.append(e)
            by_key[(spi, si)] = e
        e[2] += pk
        e[3] += by
        per_hop = fast.sff_hops.get((spi, si), [pk])
        for i, n in enumerate(per_hop[: len(e[4])]):
            e[4][i] += n
    c = out.setdefault("counters", {})
    fwd, term = fast.stats.get("sff-forwarded", 0), fast.stats.get("sff-terminated", 0)
    c["received"] = c.get("received", 0) + fwd + term
    c["forwarded"] = c.get("forwarded", 0) + fwd
    c["delivered"] = c.get("delivered", 0) + term
    out["fastpath"] = dict(fast.stats)
    return out
