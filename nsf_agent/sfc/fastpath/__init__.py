"""In-kernel SFC fast path (tc clsact eBPF): classifier, SFF and decapsulation for the
table entries it can carry out exactly like the userspace path; everything else is passed
up unchanged. See docs/sfc.md, "Fast path"."""

from .fastpath import STATS, ApplyReport, Counters, FastPath, FastPathError

__all__ = ["STATS", "ApplyReport", "Counters", "FastPath", "FastPathError"]
