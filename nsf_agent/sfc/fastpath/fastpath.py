"""The tc-BPF fast path as the sfc applier uses it: available / attach / apply / counters / close.

apply() is all-or-nothing: the tables of the new generation are written into the slot
no packet reads (after marking it invalid), then one array-map write switches the
generation index. A failure anywhere raises FastPathError and leaves the active
generation untouched, so the previous tables keep forwarding.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from socket import AF_INET
from typing import TYPE_CHECKING

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import build, libbpf
from .tables import (
    ADDR_KEY,
    COUNTER,
    IF_KEY,
    MAX_RULES,
    RULE,
    SFF_KEY,
    SLOT_CFG,
    U32,
    Compiled,
    CounterAllocator,
    bitmap,
    compile_generation,
    lpm_key,
)

if TYPE_CHECKING:
    from nsf_agent.sfc.model import SfcConfig

log = logging.getLogger(__name__)
LO_FORWARDING = "/proc/sys/net/ipv4/conf/lo/forwarding"

PROG_NAME = "fp_ingress"
FILTER_PRIO = 1
FILTER_HANDLE = 0x1F19
TC_INGRESS = "ffff:fff2"

# enum stat in fastpath.bpf.c, same order
STATS = (
    "classified",
    "sff-forwarded",
    "sff-terminated",
    "pass-no-table",
    "pass-not-ipv4",
    "pass-fragment",
    "pass-ip-options",
    "pass-malformed",
    "pass-gso",
    "pass-classifier-miss",
    "pass-sff-miss",
    "pass-gre-flags",
    "pass-not-nsh",
    "pass-nsh-version",
    "pass-o-bit",
    "pass-md-type",
    "pass-ttl",
    "pass-next-protocol",
    "pass-no-route",
    "pass-table-changed",
    "error-dropped",
    "pass-not-classifier-interface",
    "pass-to-local",
)


class FastPathError(RuntimeError):
    """Load, attach or table update failed; the previous generation is still active."""


@dataclass
class ApplyReport:
    generation: int
    rules: int
    sff: int
    left: list[str]
    seconds: float


@dataclass
class Counters:
    rules: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (packets, bytes)
    sff: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (spi, si) -> ...
    sff_hops: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # packets per hop
    stats: dict[str, int] = field(default_factory=dict)


class FastPath:
    """One loaded program and its maps, attached at tc ingress of some interfaces."""

    def __init__(self, object_path: str | None = None) -> None:
        self._object_path = object_path
        self._obj: libbpf.BpfObject | None = None
        self._fd: dict[str, int] = {}
        self._attached: dict[str, tuple[int, bool]] = {}  # ifname -> (ifindex, qdisc created by us)
        self._gen = 0
        self._rules_written = [0, 0]
        self._alloc = CounterAllocator()
        self._live: Compiled | None = None
        self._ncpu = 1
        self._lock = threading.RLock()
        self._lo_forwarding: str | None = None  # what attach() changed, restored by close()

    # ---- capability ----

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, what) when this kernel loads SCHED_CLS programs and clang can build ours."""
        try:
            libbpf.probe_sched_cls()
        except libbpf.BpfError as e:
            return False, f"kernel refuses tc BPF programs: {e}"
        try:
            build.object_path()
        except build.BuildError as e:
            return False, f"cannot build the fast path program: {e}"
        return True, f"tc-BPF fast path available (kernel {os.uname().release})"

    # ---- program ----

    def load(self) -> None:
        with self._lock:
            if self._obj is not None:
                return
            try:
                path = self._object_path or str(build.object_path())
                obj = libbpf.BpfObject(path)
            except (build.BuildError, libbpf.BpfError) as e:
                raise FastPathError(str(e)) from e
            try:
                self._fd = {"prog": obj.prog_fd(PROG_NAME)}
                for m in (
                    "fp_gen",
                    "fp_slot",
                    "fp_cls_src",
                    "fp_cls_dst",
                    "fp_cls_rules",
                    "fp_cls_ifs",
                    "fp_local",
                    "fp_sff",
                    "fp_counters",
                    "fp_stats",
                ):
                    self._fd[m] = obj.map_fd(m)
                self._ncpu = libbpf.num_possible_cpus()
            except libbpf.BpfError as e:
                obj.close()
                raise FastPathError(str(e)) from e
            self._obj = obj

    def attach(self, ifnames: Iterable[str]) -> None:
        """Be attached at tc ingress of exactly these interfaces (all or nothing).

        Interfaces no longer named are detached. The program's FIB lookups are those of a
        packet this host sends (input interface = loopback, as the kernel's output route
        lookup), which the kernel allows only with IPv4 forwarding on `lo`: it is turned
        on here and put back by close() (it concerns only packets arriving on `lo`)."""
        self.load()
        want = list(dict.fromkeys(ifnames))
        done: list[str] = []
        with self._lock, IPRoute() as ipr:
            try:
                for name in want:
                    if name in self._attached:
                        continue
                    idx = ipr.link_lookup(ifname=name)
                    if not idx:
                        raise FastPathError(f"no interface {name} to attach the fast path to")
                    created = True
                    try:
                        ipr.tc("add", "clsact", idx[0])
                    except NetlinkError as e:
                        if e.code != errno.EEXIST:
                            raise
                        created = False
                    self._attached[name] = (idx[0], created)
                    done.append(name)
                    ipr.tc(
                        "replace-filter",
                        "bpf",
                        idx[0],
                        FILTER_HANDLE,
                        fd=self._fd["prog"],
                        name=PROG_NAME,
                        parent=TC_INGRESS,
                        classid=1,
                        direct_action=True,
                        prio=FILTER_PRIO,
                    )
                if want:
                    self._lo_forwarding_on()
            except (NetlinkError, OSError, FastPathError) as e:
                for name in done:
                    self._detach(ipr, name)
                if isinstance(e, FastPathError):
                    raise
                raise FastPathError(f"cannot attach the fast path: {e}") from e
            for name in [n for n in self._attached if n not in want]:
                self._detach(ipr, name)
        if done:
            log.info("fast path attached to %s", ", ".join(done))

    def _lo_forwarding_on(self) -> None:
        with open(LO_FORWARDING) as f:
            cur = f.read().strip()
        if cur != "1":
            with open(LO_FORWARDING, "w") as f:
                f.write("1")
            if self._lo_forwarding is None:
                self._lo_forwarding = cur

    def _detach(self, ipr: IPRoute, name: str) -> None:
        idx, created = self._attached.pop(name)
        try:
            if created:
                ipr.tc("del", "clsact", idx)
            else:
                ipr.tc("del-filter", "bpf", idx, FILTER_HANDLE, parent=TC_INGRESS, prio=FILTER_PRIO)
        except NetlinkError as e:
            if e.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                log.warning("detaching the fast path from %s: %s", name, e)

    def close(self) -> None:
        """Detach from every interface and free the program and maps."""
        with self._lock:
            if self._attached:
                with IPRoute() as ipr:
                    for name in list(self._attached):
                        self._detach(ipr, name)
            if self._lo_forwarding is not None:
                try:
                    with open(LO_FORWARDING, "w") as f:
                        f.write(self._lo_forwarding)
                except OSError as e:
                    log.warning("restoring %s: %s", LO_FORWARDING, e)
                self._lo_forwarding = None
            if self._obj is not None:
                self._obj.close()
                self._obj = None
                self._fd = {}

    @property
    def generation(self) -> int:
        return self._gen

    @property
    def attached(self) -> list[str]:
        return list(self._attached)

    # ---- tables ----

    def apply(self, cfg: SfcConfig) -> ApplyReport:
        """Make `cfg` the active table generation, or raise with the old one still active."""
        t0 = time.perf_counter()
        self.load()
        with self._lock:
            self._alloc.begin()
            try:
                with IPRoute() as ipr:
                    names = {ln.get_attr("IFLA_IFNAME"): ln["index"] for ln in ipr.get_links()}
                    ifindex = names.get
                    addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=AF_INET)]
                    comp = compile_generation(cfg, ifindex, self._alloc, addrs)
            except (ValueError, OverflowError) as e:
                self._alloc.abort()
                raise FastPathError(f"table not usable by the fast path: {e}") from e
            new = (self._gen + 1) & 0xFFFFFFFF or 1
            slot = new & 1
            try:
                self._write_slot(slot, new, comp)
                libbpf.map_update(
                    self._fd["fp_gen"], U32.pack(0), U32.pack(new), what="generation switch"
                )
            except libbpf.BpfError as e:
                self._alloc.abort()
                raise FastPathError(
                    f"fast path table update failed (generation {self._gen} still active): {e}"
                ) from e
            self._alloc.commit()
            self._gen = new
            self._live = comp
        rep = ApplyReport(new, len(comp.rules), len(comp.sff), comp.left, time.perf_counter() - t0)
        log.info(
            "fast path generation %d: %d rules, %d sff entries, %d left to userspace (%.1f ms)",
            new,
            rep.rules,
            rep.sff,
            len(rep.left),
            rep.seconds * 1e3,
        )
        return rep

    def _write_slot(self, slot: int, gen: int, comp: Compiled) -> None:
        fd = self._fd
        up = libbpf.map_update
        # 1. mark the slot invalid: a packet still reading it from two generations ago
        #    sees the change at its re-check and goes to userspace
        up(fd["fp_slot"], U32.pack(slot), SLOT_CFG.pack(0, comp.local), what="slot invalidate")
        # 2. empty the slot
        for m in ("fp_cls_src", "fp_cls_dst"):
            for k in libbpf.map_keys(fd[m], 12):
                if k[4:8] == slot.to_bytes(4, "big"):
                    libbpf.map_delete(fd[m], k, what=f"{m} delete")
        for m, ksize in (
            ("fp_sff", SFF_KEY.size),
            ("fp_cls_ifs", IF_KEY.size),
            ("fp_local", ADDR_KEY.size),
        ):
            for k in libbpf.map_keys(fd[m], ksize):
                if U32.unpack_from(k)[0] == slot:
                    libbpf.map_delete(fd[m], k, what=f"{m} delete")
        # 3. fresh counters for new counter slots
        zero = bytes(COUNTER.size * self._ncpu)
        for idx in self._alloc.new:
            up(fd["fp_counters"], U32.pack(idx), zero, what="counter reset")
        # 4. the new tables
        prev = self._rules_written[slot]
        self._rules_written[slot] = max(prev, len(comp.rules))
        for r in comp.rules:
            up(
                fd["fp_cls_rules"],
                U32.pack(slot * MAX_RULES + r.index),
                r.value,
                what=f"rule {r.name}",
            )
        empty = bytes(RULE.size)
        for i in range(len(comp.rules), prev):
            up(fd["fp_cls_rules"], U32.pack(slot * MAX_RULES + i), empty, what="rule clear")
        self._rules_written[slot] = len(comp.rules)
        for m, lpm in (("fp_cls_src", comp.src_lpm), ("fp_cls_dst", comp.dst_lpm)):
            for net, idxs in lpm.items():
                up(fd[m], lpm_key(slot, net), bitmap(idxs), what=f"{m} {net}")
        one = U32.pack(1)
        for ifx in comp.cls_ifs:
            up(fd["fp_cls_ifs"], IF_KEY.pack(slot, ifx), one, what="classifier interface")
        for a in comp.local_addrs:
            up(fd["fp_local"], ADDR_KEY.pack(slot, a), one, what="local address")
        for sp, val in comp.sff.items():
            up(fd["fp_sff"], SFF_KEY.pack(slot, sp), val, what="sff entry")
        # 5. the slot is complete
        up(fd["fp_slot"], U32.pack(slot), SLOT_CFG.pack(gen, comp.local), what="slot validate")

    # ---- counters ----

    def _percpu(self, fd: int, idx: int, size: int) -> list[bytes]:
        raw = libbpf.map_lookup(fd, U32.pack(idx), size * self._ncpu) or bytes(size * self._ncpu)
        return [raw[i * size : (i + 1) * size] for i in range(self._ncpu)]

    def _counter(self, idx: int) -> tuple[int, int]:
        pk = by = 0
        for part in self._percpu(self._fd["fp_counters"], idx, COUNTER.size):
            p, b = COUNTER.unpack(part)
            pk += p
            by += b
        return pk, by

    def counters(self) -> Counters:
        """Per rule and per (SPI, SI) packets/bytes handled here, and the outcome counts."""
        out = Counters()
        with self._lock:
            if self._obj is None:
                return out
            live = self._live
            if live is not None:
                for name, idx in live.rule_counters.items():
                    out.rules[name] = self._counter(idx)
                for key, idx in live.sff_counters.items():
                    out.sff[key] = self._counter(idx)
                for key, idxs in live.sff_hop_counters.items():
                    out.sff_hops[key] = [self._counter(i)[0] for i in idxs]
            for i, name in enumerate(STATS):
                parts = self._percpu(self._fd["fp_stats"], i, 8)
                out.stats[name] = sum(int.from_bytes(p, "little") for p in parts)
        return out

    def map_fd(self, name: str) -> int:
        """A map's descriptor, or the program's for "prog" (tests use it to provoke
        kernel-side failures, the bench to read the program's run time)."""
        self.load()
        return self._fd[name]

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
