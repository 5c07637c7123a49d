"""The `xfrm` applier: RFC 9061 IKE-less SPD/SAD → Linux kernel XFRM over netlink.

The committed ietf-i2nsf-ikeless tree is translated (nsf_agent.ikeless) into the exact set of
kernel policies and states it stands for; a commit installs the difference between the old
and new sets as one netlink batch and undoes every successful message if any fails. A commit
translates only the entries whose XML differs from the tree this applier last applied (the
rest keep their objects, see `translate`), so one changed entry in 10,000 costs milliseconds.

Ownership: our policies carry priorities in [PRIORITY_BASE, PRIORITY_BASE + PRIORITY_SPAN)
(SPD order → priority, so earlier entries win); our states are remembered in a ledger file
in the agent's state directory. Reconciliation never touches anything else.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.datastore import write_atomic
from netconf_core.errors import RpcError
from netconf_core.rpc import Handler
from nsf_agent import ikeless, sadb
from nsf_agent.ikeless import IkelessConfig, PortRange, SadEntry, SpdEntry
from nsf_agent.xfrm.api import Batch, Xfrm, explain
from nsf_agent.xfrm.model import (
    Action,
    AeadAlgorithm,
    Algorithm,
    Algorithms,
    AuthAlgorithm,
    Dir,
    Encap,
    Lifetime,
    Mode,
    Policy,
    Proto,
    Selector,
    State,
    Template,
)
from nsf_agent.xfrm.nlsocket import XfrmError

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer
    from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)

PRIORITY_BASE = 1_000_000
PRIORITY_SPAN = 1_000_000
INF = (1 << 64) - 1
TCP_ENCAP_ESPINTCP = 7  # linux/udp.h
NS = ikeless.NS
Q = ikeless.Q


def port_blocks(r: PortRange) -> list[tuple[int, int]]:
    """Split a port range into (port, mask) blocks the XFRM selector can match."""
    return list(_blocks(r.start, r.end))


@functools.lru_cache(maxsize=4096)  # (a large SPD repeats a few ranges)
def _blocks(start: int, end: int) -> tuple[tuple[int, int], ...]:
    if (start, end) == (0, 65535):
        return ((0, 0),)
    out = []
    lo, hi = start, end
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return tuple(out)


_ANY_PORT = ((0, 0),)


def _ports(ranges: tuple[PortRange, ...]) -> tuple[tuple[int, int], ...]:
    if not ranges:
        return _ANY_PORT
    if len(ranges) == 1:
        return _blocks(ranges[0].start, ranges[0].end)
    return tuple(b for r in ranges for b in _blocks(r.start, r.end))


class PolicyKey(NamedTuple):
    """What identifies a policy in the kernel (selector + direction)."""

    dir: int
    src: str
    dst: str
    proto: int
    sport: int
    sport_mask: int
    dport: int
    dport_mask: int


StateKey = tuple[str, int, int]
_new_key = tuple.__new__  # PolicyKey(...) without the NamedTuple __new__ call (bulk path)


def policy_key(p: Policy) -> PolicyKey:
    s = p.selector
    return PolicyKey(int(p.dir), _norm(s.src), _norm(s.dst), s.proto, s.sport,
                     s.sport_mask or 0, s.dport, s.dport_mask or 0)


@functools.lru_cache(maxsize=65536)
def _norm(prefix: str | None) -> str:
    if prefix is None:
        return "any"
    return str(ipaddress.ip_network(prefix, strict=False))


def state_key(s: State) -> StateKey:
    return (str(ipaddress.ip_address(s.dst)), s.spi, int(s.proto))


@functools.lru_cache(maxsize=4096)
def _template(src: str | None, dst: str | None, proto: Proto, mode: Mode,
              reqid: int) -> Template:
    """Templates repeat across a large SPD; nothing mutates one, so equal ones are shared."""
    return Template(src=src, dst=dst, proto=proto, mode=mode, reqid=reqid)


# Our policies never change their lifetime (no limits): one object serves them all.
_NO_LIFETIME = Lifetime()
_OUT = (Dir.OUT,)
_IN = (Dir.IN,)
_IN_FWD = (Dir.IN, Dir.FWD)


def spd_policies(e: SpdEntry) -> list[tuple[PolicyKey, tuple[Policy, str]]]:
    """The kernel policies standing for one SPD entry, each as (key, (policy, entry name)).
    The key is built from the selector's canonical text: it equals policy_key(policy)."""
    sel = e.selector
    local = sel.local_text or str(sel.local_prefix)
    remote = sel.remote_text or str(sel.remote_prefix)
    if e.direction == "outbound":
        dirs = _OUT
        src, dst = local, remote
        sports, dports = _ports(sel.local_ports), _ports(sel.remote_ports)
    else:
        # A gateway forwards inbound tunnel traffic: the FWD policy checks it as IN does.
        dirs = _IN_FWD if e.mode == "tunnel" or e.action != "protect" else _IN
        src, dst = remote, local
        sports, dports = _ports(sel.remote_ports), _ports(sel.local_ports)
    proto = sel.protocol or 0
    action = Action.BLOCK if e.action == "discard" else Action.ALLOW
    priority = PRIORITY_BASE + e.index
    out = []
    for d in dirs:
        tmpl = None
        if e.action == "protect":
            tsrc = tdst = None
            if e.mode == "tunnel" and e.tunnel is not None:
                tl = e.tunnel.local_text or str(e.tunnel.local)
                tr = e.tunnel.remote_text or str(e.tunnel.remote)
                tsrc, tdst = (tl, tr) if d == Dir.OUT else (tr, tl)
            tmpl = _template(tsrc, tdst, Proto.ESP if e.protocol == "esp" else Proto.AH,
                             Mode.TUNNEL if e.mode == "tunnel" else Mode.TRANSPORT, e.reqid)
        for sport, smask in sports:
            for dport, dmask in dports:
                # (positional: selector, dir, action, priority, templates, lifetime; and
                # src, dst, proto, sport, dport, sport_mask, dport_mask)
                pol = Policy(Selector(src, dst, proto, sport, dport, smask, dmask), d, action,
                             priority, [tmpl] if tmpl is not None else [], _NO_LIFETIME)
                key = _new_key(PolicyKey, (int(d), src, dst, proto, sport, smask, dport, dmask))
                out.append((key, (pol, e.name)))
    return out


def _lifetime(e: SadEntry) -> Lifetime:
    def lim(v: int) -> int:
        return v if v else INF

    return Lifetime(
        soft_bytes=lim(e.soft.bytes), hard_bytes=lim(e.hard.bytes),
        soft_packets=lim(e.soft.packets), hard_packets=lim(e.hard.packets),
        soft_add_seconds=e.soft.time, hard_add_seconds=e.hard.time,
        soft_use_seconds=e.soft.idle, hard_use_seconds=e.hard.idle,
    )


def sad_state(e: SadEntry) -> State:
    ikeless.check_transport_hosts(
        e, f"/ietf-i2nsf-ikeless:ipsec-ikeless/sad/sad-entry[name='{e.name}']")
    algs = Algorithms()
    if e.encryption is not None and e.encryption.aead:
        algs.aead = AeadAlgorithm(e.encryption.kernel, e.enc_key, e.encryption.icv_bits)
    else:
        if e.encryption is not None:
            algs.crypt = Algorithm(e.encryption.kernel, e.enc_key)
        if e.integrity is not None:
            algs.auth = AuthAlgorithm(e.integrity.kernel, e.integ_key, e.integrity.trunc_bits)
    encap = None
    if e.encap is not None and e.encap.kind == "espinudp":
        encap = Encap(sport=e.encap.sport, dport=e.encap.dport,
                      oa=str(e.encap.oaddr[0]) if e.encap.oaddr else None)
    elif e.encap is not None:
        encap = Encap(sport=e.encap.sport, dport=e.encap.dport, type=TCP_ENCAP_ESPINTCP)
    return State(
        src=str(e.src), dst=str(e.dst), spi=e.spi,
        proto=Proto.ESP if e.protocol == "esp" else Proto.AH,
        mode=Mode.TUNNEL if e.mode == "tunnel" else Mode.TRANSPORT,
        reqid=e.reqid,
        algorithms=algs,
        lifetime=_lifetime(e),
        # The kernel wants a window on ESN states of either direction (outbound ignores it).
        replay_window=e.anti_replay_window,
        esn=e.ext_seq_num,
        encap=encap,
    )


def _alg_key(a: object) -> tuple[object, ...] | None:
    if a is None:
        return None
    name = getattr(a, "name", "")
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return (str(name).rstrip("\0"), bytes(getattr(a, "key", b"") or b""),
            getattr(a, "trunc_len", None), getattr(a, "icv_len", None))


def same_keys(a: State, b: State) -> bool:
    """The same algorithms and keys: the same (SPI, key) for sequence numbering."""
    x, y = a.algorithms, b.algorithms
    return all(_alg_key(getattr(x, f)) == _alg_key(getattr(y, f))
               for f in ("aead", "crypt", "auth", "comp"))


def _addr_norm(v: str | None) -> str:
    if not v:
        return ""
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        return str(v)
    return "" if a.is_unspecified else str(a)


def same_state(want: State, have: State) -> bool:
    """Is the kernel's state `have` what the configuration asks for (`want`)? Read-only
    fields (counters, replay state, the selector the kernel fills in) are not compared."""
    if not same_keys(want, have):
        return False
    if (_addr_norm(want.src), _addr_norm(want.dst), want.spi, int(want.proto),
            int(want.mode), want.reqid, want.esn) != (
            _addr_norm(have.src), _addr_norm(have.dst), have.spi, int(have.proto),
            int(have.mode), have.reqid, have.esn):
        return False
    if want.lifetime.values() != have.lifetime.values():
        return False
    ww = want.replay_window if (want.esn or want.replay_window > 32) \
        else min(want.replay_window, 32)
    if ww != have.replay_window:
        return False
    we, he = want.encap, have.encap
    if (we is None) != (he is None):
        return False
    return we is None or he is None or (
        (we.sport, we.dport, we.type, _addr_norm(we.oa))
        == (he.sport, he.dport, he.type, _addr_norm(he.oa)))


def same_policy(want: Policy, have: Policy) -> bool:
    """Same action, priority and templates (the selector is the key already)."""
    if (int(want.action), want.priority) != (int(have.action), have.priority):
        return False
    if len(want.templates) != len(have.templates):
        return False
    for t, h in zip(want.templates, have.templates, strict=True):
        if (_addr_norm(t.src), _addr_norm(t.dst), int(t.proto), int(t.mode), t.reqid) != (
                _addr_norm(h.src), _addr_norm(h.dst), int(h.proto), int(h.mode), h.reqid):
            return False
    return True


def _sa_id(e: SadEntry) -> tuple[object, ...]:
    """What makes an SA another one (a rekey changes it): SPI, addresses and keys."""
    return (e.spi, str(e.dst), str(e.src), bytes(e.enc_key or b""), bytes(e.integ_key or b""))


PolicyItem = tuple[PolicyKey, tuple[Policy, str]]
StateItem = tuple[StateKey, tuple[State, str]]


@dataclass(frozen=True)
class Translation:
    """The kernel objects an ikeless configuration stands for: per entry, so that the next
    commit reuses the entries that did not change, and merged into what the kernel holds.
    Values are (object, name of the entry it comes from); never mutated once built."""

    cfg: IkelessConfig
    spd: dict[str, tuple[SpdEntry, list[PolicyItem]]]
    sad: dict[str, tuple[SadEntry, StateItem]]
    policies: dict[PolicyKey, tuple[Policy, str]]
    states: dict[StateKey, tuple[State, str]]


EMPTY = Translation(IkelessConfig(), {}, {}, {}, {})


def translate(cfg: IkelessConfig, base: Translation | None = None) -> Translation:
    """The kernel objects for `cfg`. Entries that are the very objects of `base.cfg` (see
    ikeless.parse's `base`) keep base's kernel objects: their translation is not redone."""
    bspd = base.spd if base is not None else {}
    spd: dict[str, tuple[SpdEntry, list[PolicyItem]]] = {}
    pols: dict[PolicyKey, tuple[Policy, str]] = {}
    for e in cfg.spd:
        b = bspd.get(e.name)
        if b is None or b[0] is not e:
            b = (e, spd_policies(e))
        spd[e.name] = b
        for k, v in b[1]:
            pols.setdefault(k, v)  # the first (higher) entry wins
    bsad = base.sad if base is not None else {}
    sad: dict[str, tuple[SadEntry, StateItem]] = {}
    sts: dict[StateKey, tuple[State, str]] = {}
    for s in cfg.sad:
        c = bsad.get(s.name)
        if c is None or c[0] is not s:
            st = sad_state(s)
            # (= state_key(st): st.dst is the text of an ip_address, canonical already)
            c = (s, ((st.dst, st.spi, int(st.proto)), (st, s.name)))
        sad[s.name] = c
        sts[c[1][0]] = c[1][1]
    return Translation(cfg, spd, sad, pols, sts)


def kernel_ops(old: Translation, new: Translation) -> list[Op]:
    """The batch that turns the kernel objects of `old` into those of `new`. Unchanged
    entries share their objects between the two, so most comparisons are identity."""
    ops: list[Op] = []
    ostates, opols = old.states, old.policies
    nstates, npols = new.states, new.policies
    # New states first, so that policies referring to them work at once; old ones last.
    for k, v in nstates.items():
        o = ostates.get(k)
        if o is None:
            ops.append(Op("add_state", v[0], v[1], ("delete_state", v[0])))
        elif o is not v and o[0] != v[0]:
            ops.append(Op("delete_state", o[0], v[1], ("add_state", o[0])))
            ops.append(Op("add_state", v[0], v[1], ("delete_state", v[0])))
    for k, v in npols.items():
        o = opols.get(k)
        if o is None:
            ops.append(Op("add_policy", v[0], v[1], ("delete_policy", v[0])))
        elif o is not v and o[0] != v[0]:
            ops.append(Op("update_policy", v[0], v[1], ("update_policy", o[0])))
    for k, o in opols.items():
        if k not in npols:
            ops.append(Op("delete_policy", o[0], o[1], ("add_policy", o[0])))
    for k, o in ostates.items():
        if k not in nstates:
            ops.append(Op("delete_state", o[0], o[1], ("add_state", o[0])))
    return ops


class Op(NamedTuple):
    kind: str  # add_policy | update_policy | delete_policy | add_state | delete_state
    obj: Policy | State
    name: str  # the configuration entry it comes from
    undo: tuple[str, Policy | State] | None


class XfrmApplier:
    """Applier for the ietf-i2nsf-ikeless tree on the kernel's XFRM."""

    name = "xfrm"
    sadb_state = True  # serve i2nsf-sadb counters (the agent clears it if not loaded)

    def __init__(self, netns: str | None = None, state_dir: Path | None = None) -> None:
        self.netns = netns
        self.ledger_path = state_dir / "xfrm-states.json" if state_dir else None
        self.xfrm = Xfrm(netns)
        self.notify: Notify | None = None
        self._listener_thread: threading.Thread | None = None
        self._stop = threading.Event()
        # The running tree this applier last applied (or reconciled) and its translation,
        # as one tuple so that a reader in another thread sees a consistent pair.
        self._running: tuple[etree._Element | None, Translation] = (None, EMPTY)
        self._lock = threading.Lock()
        # SPIs reserved with allocate-spi (larval kernel states) that no SAD entry holds yet.
        self._larval: dict[tuple[str, int, int], State] = {}
        # Restored outbound SAs reconcile did not install (their counter is unknown) and the
        # SAs the controller must replace: name -> (reason, suspended, _sa_id)
        self._absent: set[StateKey] = set()
        self._rekey: dict[str, tuple[str, bool, tuple[object, ...]]] = {}
        self._first: dict[StateKey, float] = {}  # first install of each state we own

    # ---- lifecycle ---------------------------------------------------------------------

    def bind(self, notify: Notify) -> None:
        self.notify = notify
        self._listener_thread = threading.Thread(
            target=self._listen, name="xfrm-events", daemon=True)
        self._listener_thread.start()

    def close(self) -> None:
        self._stop.set()
        self.xfrm.close()

    # ---- ledger of the states we own -----------------------------------------------------

    def _ledger(self) -> dict[tuple[str, int, int], float | None]:
        """The states we installed, with when each was first installed (Unix time; None in
        ledgers of older versions), so that lifetimes count from then across a reboot."""
        if self.ledger_path is None or not self.ledger_path.exists():
            return {}
        out: dict[tuple[str, int, int], float | None] = {}
        for x in json.loads(self.ledger_path.read_text()):
            out[(str(x[0]), int(x[1]), int(x[2]))] = float(x[3]) if len(x) > 3 else None
        self._first.update({k: t for k, t in out.items() if t is not None})
        return out

    def _save_ledger(self, keys: Iterable[tuple[str, int, int]]) -> None:
        if self.ledger_path is not None:
            now = time.time()
            keys = set(keys)
            self._first = {k: self._first.get(k, now) for k in keys}
            write_atomic(self.ledger_path, json.dumps(
                sorted([*k, self._first[k]] for k in keys)).encode())

    # ---- transaction ---------------------------------------------------------------------

    @property
    def _running_cfg(self) -> IkelessConfig:
        return self._running[1].cfg

    def _translations(self, change: ConfigChange) -> tuple[Translation, Translation]:
        """Old and new translations, each computed once per transaction. The old one is what
        this applier last applied when `old` is that tree; the new one reuses old's entries
        wherever their XML is unchanged. Only `change.scratch` is written: validate and
        prepare may run beside libyang's validation, and the commit may yet be refused."""
        got = change.scratch.get("xfrm.translations")
        if got is None:
            tree, running = self._running
            with ikeless.paused_gc():
                old = (running if change.old is tree
                       else translate(ikeless.parse(change.old, running.cfg), running))
                new = translate(ikeless.parse(change.new, old.cfg), old)
            got = change.scratch["xfrm.translations"] = (old, new)
        return got  # type: ignore[return-value]

    def validate(self, change: ConfigChange) -> None:
        self._translations(change)

    def prepare(self, change: ConfigChange) -> None:
        old, new = self._translations(change)
        with ikeless.paused_gc():
            ops = change.scratch["xfrm.ops"] = self._skip_absent(kernel_ops(old, new), new)
        if self._larval:
            change.scratch["xfrm.larval"] = self._adopt_larval(ops)
        # The netlink messages are packed here, not in apply: prepare may run while libyang
        # still validates the tree, apply is on the commit's critical path.
        if ops:
            with ikeless.paused_gc():
                change.scratch["xfrm.batch"] = self._pack([(o.kind, o.obj) for o in ops])

    def _pack(self, ops: list[tuple[str, Policy | State]]) -> Batch:
        """The messages for `ops`, packed; nothing is sent."""
        batch = self.xfrm.batch()
        for kind, obj in ops:
            getattr(batch, kind)(obj)
        return batch

    def _submit(self, batch: Batch) -> list[XfrmError | None]:
        return batch.submit()

    def _run(self, ops: list[tuple[str, Policy | State]]) -> list[XfrmError | None]:
        return self._submit(self._pack(ops))

    def apply(self, change: ConfigChange) -> None:
        ops: list[Op] = change.scratch.get("xfrm.ops", [])  # type: ignore[assignment]
        if not ops:
            self._running = (change.new, self._translations(change)[1])
            return
        with self._lock:
            batch: Batch | None = change.scratch.get("xfrm.batch")  # type: ignore[assignment]
            if batch is None:
                batch = self._pack([(o.kind, o.obj) for o in ops])
            old_t, new_t = self._translations(change)
            if any(o.kind in ("add_state", "update_state") and state_key(o.obj) not in
                   old_t.states for o in ops if isinstance(o.obj, State)):
                # The ledger says "installed before" ahead of the kernel add: after a crash
                # right after the add, reconcile must know the SA may have sent packets.
                self._save_ledger(set(old_t.states) | set(new_t.states))
            with ikeless.paused_gc():  # (framing 10,000 messages: no garbage to find)
                results = self._submit(batch)
            failed = [(o, r) for o, r in zip(ops, results, strict=True) if r is not None]
            if failed:
                done = [o for o, r in zip(ops, results, strict=True) if r is None]
                self._undo(done)
                self._restore_larval(change, done)
                op, err = failed[0]
                raise self._rpc_error(op, err)
            for k in change.scratch.get("xfrm.larval", {}):  # type: ignore[attr-defined]
                self._larval.pop(k, None)  # completed: now an SA of the running config
            new = self._translations(change)[1]
            self._save_ledger(set(new.states))
            self._running = (change.new, new)
            self._settle_absent(new)
        log.info("xfrm: applied %d kernel operations", len(ops))

    def _settle_absent(self, new: Translation) -> None:
        """Absent states whose entry is gone or now holds other keys are no longer absent."""
        if self._absent:
            self._absent = {k for k in self._absent if k in new.states
                            and self._absent_entry_kept(k, new)}
        self._prune(new.cfg)

    def _absent_entry_kept(self, k: StateKey, new: Translation) -> bool:
        name = new.states[k][1]
        return name in self._rekey and _sa_id(new.sad[name][0]) == self._rekey[name][2]

    def _undo(self, done: list[Op]) -> None:
        undo = [o.undo for o in reversed(done) if o.undo is not None]
        if not undo:
            return
        res = self._run(undo)  # type: ignore[arg-type]
        bad = [r for r in res if r is not None]
        if bad:
            log.error("xfrm: %d kernel operations could not be undone: %s", len(bad), bad[0])

    def abort(self, change: ConfigChange) -> None:
        ops: list[Op] = change.scratch.get("xfrm.ops", [])  # type: ignore[assignment]
        with self._lock:
            self._undo(ops)
            self._restore_larval(change, ops)
            old = self._translations(change)[0]
            self._running = (change.old, old)
            self._save_ledger(old.states)

    def _rpc_error(self, op: Op, err: XfrmError) -> RpcError:
        proto = int(op.obj.proto) if isinstance(op.obj, State) else None
        err = explain(err, proto)
        what = "SAD" if isinstance(op.obj, State) else "SPD"
        lst = "sad/sad-entry" if what == "SAD" else "spd/spd-entry"
        return RpcError(
            "application", "operation-failed",
            f"{what} entry {op.name!r}: the kernel refused {op.kind.replace('_', ' ')}: {err}",
            path=f"/ietf-i2nsf-ikeless:ipsec-ikeless/{lst}[name='{op.name}']",
        )

    # ---- i2nsf-sadb RPCs (SADB_GETSPI) ------------------------------------------------------

    def rpcs(self) -> dict[tuple[str, str], Handler]:
        return {sadb.ALLOCATE_SPI: self._allocate_spi}

    def _allocate_spi(self, srv: NetconfServer, sess: NetconfSession,
                      op: etree._Element) -> list[etree._Element]:
        """XFRM_MSG_ALLOCSPI: the kernel picks the SPI and keeps a larval state for it, which
        the SAD entry with that SPI completes (see _adopt_larval)."""
        req = sadb.parse_allocate_spi(srv, op)
        if req.reqid > 0xFFFFFFFF:
            raise RpcError("application", "invalid-value",
                           f"reqid {req.reqid} does not fit the kernel's 32-bit reqid",
                           path="/i2nsf-sadb:allocate-spi/reqid", info={"bad-element": "reqid"})
        proto = Proto.ESP if req.protocol == "esp" else Proto.AH
        mode = Mode.TUNNEL if req.mode == "tunnel" else Mode.TRANSPORT
        with self._lock:
            try:
                st = self.xfrm.allocspi(str(req.src), str(req.dst), proto,
                                        spi_min=req.spi_min, spi_max=req.spi_max,
                                        reqid=req.reqid, mode=mode)
            except XfrmError as err:
                if err.errno == errno.ENOENT:  # (6.1 gives no extack text for it)
                    raise RpcError(
                        "application", "resource-denied",
                        f"no unused {req.protocol} SPI for {req.dst} in "
                        f"[{req.spi_min}, {req.spi_max}]") from None
                raise RpcError("application", "operation-failed",
                               f"the kernel refused to allocate an SPI: {err}") from None
            self._larval[state_key(st)] = st
        log.info("xfrm: allocated %s SPI 0x%08x for %s -> %s (larval)", req.protocol, st.spi,
                 req.src, req.dst)
        return sadb.spi_reply(st.spi)

    def _adopt_larval(self, ops: list[Op]) -> dict[tuple[str, int, int], State]:
        """New SAD entries whose SPI allocate-spi reserved complete the kernel's larval
        state (UPDSA; NEWSA would fail with EEXIST). Returns the adopted reservations."""
        adopted: dict[tuple[str, int, int], State] = {}
        for i, op in enumerate(ops):
            if op.kind != "add_state" or not isinstance(op.obj, State):
                continue
            k = state_key(op.obj)
            larval = self._larval.get(k)
            if larval is None:
                continue
            try:
                cur = self.xfrm.get_state(op.obj.dst, op.obj.spi, op.obj.proto)
            except XfrmError:
                self._larval.pop(k, None)  # the reservation expired: a plain add
                continue
            a = cur.algorithms
            if a.aead or a.crypt or a.auth or a.comp:
                continue  # no longer larval (someone completed it): let the add fail
            ops[i] = Op("update_state", op.obj, op.name, ("delete_state", op.obj))
            adopted[k] = larval
        return adopted

    def _restore_larval(self, change: ConfigChange, undone: list[Op]) -> None:
        """After undoing a commit that completed reserved SPIs, reserve them again."""
        adopted: dict[tuple[str, int, int], State] = change.scratch.get(  # type: ignore[assignment]
            "xfrm.larval", {})
        for op in undone:
            if op.kind != "update_state" or not isinstance(op.obj, State):
                continue
            larval = adopted.get(state_key(op.obj))
            if larval is None:
                continue
            try:
                self.xfrm.allocspi(larval.src, larval.dst, larval.proto, spi_min=larval.spi,
                                   spi_max=larval.spi, reqid=larval.reqid, mode=larval.mode)
                self._larval[state_key(larval)] = larval
            except XfrmError as err:
                log.warning("xfrm: cannot re-reserve SPI 0x%08x after rollback: %s",
                            larval.spi, err)

    # ---- start-up reconciliation -----------------------------------------------------------

    def reconcile(self, running: etree._Element) -> None:
        """Make the kernel match `running` without disturbing SAs in use (issue 24.1): a
        kernel state equal to its configuration is kept (its sequence counter and replay
        window go on); only what differs or is missing is written. An outbound SA this
        agent had installed before (ledger) that the kernel lost (reboot, flush) is not
        installed again: its counter is unknown, and starting again at 1 would repeat
        sequence numbers (and AES-GCM nonces) under the same key (issue 13.1). What could
        not be kept is reported in i2nsf-sadb nsf-status for the controller to rekey."""
        with ikeless.paused_gc():
            want = translate(ikeless.parse(running))
        have_pols = {
            policy_key(p): p for p in self.xfrm.dump_policies()
            if PRIORITY_BASE <= p.priority < PRIORITY_BASE + PRIORITY_SPAN
        }
        have_states = {state_key(s): s for s in self.xfrm.dump_states()}
        owned = self._ledger()
        ops: list[tuple[str, Policy | State]] = []
        rekey: dict[str, tuple[str, bool, tuple[object, ...]]] = {}
        absent: set[StateKey] = set()
        for k, s in have_states.items():
            if k in owned and k not in want.states:
                ops.append(("delete_state", s))
        entries = {name: e for name, (e, _) in want.sad.items()}
        for k, (st, name) in want.states.items():
            e = entries[name]
            out = e.direction == "outbound"
            have = have_states.get(k)
            if have is not None and same_state(st, have):
                continue  # in use: keep it as it is
            if have is not None:
                ops.append(("delete_state", have))
                if out and same_keys(st, have):
                    # re-created it would count from 1 again under the same key
                    absent.add(k)
                    rekey[name] = ("sequence-unknown", True, _sa_id(e))
                    continue
                rekey[name] = ("not-kept", False, _sa_id(e))
            elif k in owned:
                first = owned[k]
                if e.hard.time and first is not None and time.time() - first >= e.hard.time:
                    # its hard lifetime ended while the NSF was down: not used again
                    absent.add(k)
                    rekey[name] = ("hard-expired", out, _sa_id(e))
                    continue
                if out:
                    absent.add(k)
                    rekey[name] = ("sequence-unknown", True, _sa_id(e))
                    continue
                rekey[name] = ("replay-state-lost", False, _sa_id(e))
            ops.append(("add_state", st))
        for k, p in have_pols.items():
            if k not in want.policies:
                ops.append(("delete_policy", p))
        for k, (pol, _) in want.policies.items():
            h = have_pols.get(k)
            if h is None:
                ops.append(("add_policy", pol))
            elif not same_policy(pol, h):
                ops.append(("update_policy", pol))
        results = self._run(ops) if ops else []
        errors = [r for r in results if r is not None]
        for e in errors:
            log.error("xfrm reconcile: %s", e)
        self._save_ledger(want.states)  # (absent ones too: installed before, still ours)
        for name, (reason, _, _) in rekey.items():
            if reason == "hard-expired" and self.notify is not None:
                n = etree.Element(Q + "sadb-expire", nsmap={None: NS})
                etree.SubElement(n, Q + "ipsec-sa-name").text = name
                etree.SubElement(n, Q + "soft-lifetime-expire").text = "false"
                etree.SubElement(n, Q + "lifetime-current")
                self.notify(n)
        self._running = (running, want)
        self._absent = absent
        self._rekey = rekey
        log.info("xfrm: reconciled (%d operations, %d failed, %d states kept)", len(ops),
                 len(errors), len(want.states) - sum(1 for o in ops if o[0] == "add_state")
                 - len(absent))
        if rekey:
            log.warning("xfrm: SAs to be replaced by the controller: %s",
                        ", ".join(f"{n} ({r[0]})" for n, r in sorted(rekey.items())))

    def rekey_required(self) -> dict[str, tuple[str, bool]]:
        """SAs the controller must replace (i2nsf-sadb nsf-status)."""
        return {n: (r, s) for n, (r, s, _) in self._rekey.items()}

    def _prune(self, cfg: IkelessConfig) -> None:
        if not self._rekey:
            return
        by_name = {e.name: e for e in cfg.sad}
        for name, (_, _, ident) in list(self._rekey.items()):
            e = by_name.get(name)
            if e is None or _sa_id(e) != ident:
                del self._rekey[name]

    def _skip_absent(self, ops: list[Op], new: Translation) -> list[Op]:
        """Operations on states that reconcile left out of the kernel (outbound SAs whose
        counter was lost): a deletion has nothing to delete; an add of the same keys would
        send from 1 again, so it stays out (still suspended); other keys are another SA."""
        if not self._absent:
            return ops
        running = self._running[1].states
        out = []
        for o in ops:
            if isinstance(o.obj, State):
                k = state_key(o.obj)
                if k in self._absent:
                    if o.kind == "delete_state":
                        continue
                    was = running.get(k)
                    if o.kind == "add_state" and was is not None and same_keys(o.obj, was[0]):
                        continue
            out.append(o)
        return out

    # ---- operational state -----------------------------------------------------------------

    def state(self, running: etree._Element) -> list[etree._Element]:
        t = self._running[1]
        out = []
        glob = self._xfrm_stat() if self.sadb_state else None
        if glob is not None:
            out.append(glob)
        if not t.cfg.sad:
            return out
        kernel = {state_key(s): s for s in self.xfrm.dump_states()}
        root = etree.Element(Q + "ipsec-ikeless", nsmap={None: NS})
        sad = etree.SubElement(root, Q + "sad")
        for e in t.cfg.sad:
            st = kernel.get(t.sad[e.name][1][0])
            if st is None:
                continue
            ent = etree.SubElement(sad, Q + "sad-entry")
            etree.SubElement(ent, Q + "name").text = e.name
            ss = etree.SubElement(ent, Q + "ipsec-sa-state")
            cur = etree.SubElement(ss, Q + "sa-lifetime-current")
            if st.curlft is not None:
                now = int(time.time())
                age = max(0, now - st.curlft.add_time) if st.curlft.add_time else 0
                etree.SubElement(cur, Q + "time").text = str(age)
                etree.SubElement(cur, Q + "bytes").text = str(st.curlft.bytes)
                etree.SubElement(cur, Q + "packets").text = str(min(st.curlft.packets, 2**32 - 1))
                idle = max(0, now - st.curlft.use_time) if st.curlft.use_time else 0
                etree.SubElement(cur, Q + "idle").text = str(idle)
            rs = etree.SubElement(ss, Q + "replay-stats")
            stats = st.stats or {}
            rw = etree.SubElement(rs, Q + "replay-window")
            etree.SubElement(rw, Q + "w").text = str(e.anti_replay_window)
            # RFC 9061: packet-dropped = replays, failed = outside the window; integrity
            # failures are in i2nsf-sadb:sa-drops (the kernel counts no other reason per SA)
            window = int(stats.get("replay_window", 0))
            dropped = int(stats.get("replay", 0)) + window
            etree.SubElement(rs, Q + "packet-dropped").text = str(dropped)
            etree.SubElement(rs, Q + "failed").text = str(window)
            seq = 0
            if st.replay_esn is not None:
                seq = (st.replay_esn.oseq_hi << 32) | st.replay_esn.oseq
            elif st.replay:
                seq = int(st.replay.get("oseq", 0))
            etree.SubElement(rs, Q + "seq-number-counter").text = str(seq)
            if self.sadb_state:
                drops = etree.SubElement(ss, sadb.Q + "sa-drops", nsmap={None: sadb.NS})
                etree.SubElement(drops, sadb.Q + "integrity-failed").text = str(
                    int(stats.get("integrity_failed", 0)))
                etree.SubElement(drops, sadb.Q + "replay").text = str(dropped)
        out.append(root)
        return out

    def _xfrm_stat(self) -> etree._Element | None:
        """/i2nsf-sadb:sadb-statistics from the namespace's /proc/net/xfrm_stat (Linux
        counts drops per namespace, not per SA; bad ESP padding counts as a protocol error
        there, i.e. under integrity-failed)."""
        text = _read_xfrm_stat(self.netns)
        if text is None:
            return None
        v: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                v[parts[0]] = int(parts[1])
        root = etree.Element(sadb.Q + "sadb-statistics", nsmap={None: sadb.NS})
        for leaf, keys in _XFRM_STAT:
            if any(k in v for k in keys):
                etree.SubElement(root, sadb.Q + leaf).text = str(sum(v.get(k, 0) for k in keys))
        return root



    # ---- kernel events → RFC 9061 notifications --------------------------------------------

    def _listen(self) -> None:
        from nsf_agent.xfrm.events import AcquireEvent, ExpireEvent, XfrmListener

        try:
            listener = XfrmListener(self.netns)
        except OSError:
            log.exception("xfrm: cannot subscribe to kernel events")
            return
        with listener:
            while not self._stop.is_set():
                for ev in listener.events(timeout=0.5):
                    try:
                        if isinstance(ev, AcquireEvent):
                            self._on_acquire(ev)
                        elif isinstance(ev, ExpireEvent):
                            self._on_expire(ev)
                    except Exception:
                        log.exception("xfrm: cannot turn a kernel event into a notification")
                    if self._stop.is_set():
                        break

    def _on_acquire(self, ev) -> None:
        idx = ev.policy.priority - PRIORITY_BASE
        spd = self._running[1].cfg.spd
        entry = spd[idx] if 0 <= idx < len(spd) else None  # index is the position
        if entry is None or self.notify is None:
            return
        n = etree.Element(Q + "sadb-acquire", nsmap={None: NS})
        etree.SubElement(n, Q + "ipsec-policy-name").text = entry.name
        ts = etree.SubElement(n, Q + "traffic-selector")
        sel = ev.selector
        local, remote = (sel.src, sel.dst) if entry.direction == "outbound" else (sel.dst, sel.src)
        etree.SubElement(ts, Q + "local-prefix").text = _host_prefix(local)
        etree.SubElement(ts, Q + "remote-prefix").text = _host_prefix(remote)
        etree.SubElement(ts, Q + "inner-protocol").text = str(sel.proto) if sel.proto else "any"
        self.notify(n)

    def _on_expire(self, ev) -> None:
        found = self._running[1].states.get(state_key(ev.state))
        if found is None or self.notify is None:
            return
        name = found[1]
        n = etree.Element(Q + "sadb-expire", nsmap={None: NS})
        etree.SubElement(n, Q + "ipsec-sa-name").text = name
        etree.SubElement(n, Q + "soft-lifetime-expire").text = "false" if ev.hard else "true"
        cur = etree.SubElement(n, Q + "lifetime-current")
        c = ev.state.curlft
        if c is not None:
            etree.SubElement(cur, Q + "bytes").text = str(c.bytes)
            etree.SubElement(cur, Q + "packets").text = str(min(c.packets, 2**32 - 1))
        self.notify(n)


# i2nsf-sadb sadb-statistics leaf -> /proc/net/xfrm_stat counters (linux xfrm_proc.c)
_XFRM_STAT = (
    ("unknown-spi", ("XfrmInNoStates",)),
    ("integrity-failed", ("XfrmInStateProtoError",)),
    ("replay", ("XfrmInStateSeqError",)),
    ("wrong-next-header", ("XfrmInStateModeError",)),
    ("malformed", ("XfrmInHdrError", "XfrmInBufferError")),
    ("policy-violation", ("XfrmInTmplMismatch", "XfrmInNoPols")),
    ("no-sa", ("XfrmOutNoStates",)),
    ("discarded", ("XfrmInPolBlock", "XfrmOutPolBlock")),
    ("sequence-overflow", ("XfrmOutStateSeqError",)),
)


def _read_xfrm_stat(netns: str | None) -> str | None:
    """The counters of `netns` (read from a thread that entered it) or of our own."""
    try:
        if netns is None:
            with open("/proc/net/xfrm_stat") as f:
                return f.read()
        from pyroute2 import netns as pnetns

        box: list[str | None] = [None]

        def read() -> None:
            pnetns.pushns(netns)
            try:
                with open("/proc/thread-self/net/xfrm_stat") as f:
                    box[0] = f.read()
            finally:
                pnetns.popns()

        t = threading.Thread(target=read, name="xfrm-stat")
        t.start()
        t.join(5)
        return box[0]
    except OSError:
        return None  # (kernel without CONFIG_XFRM_STATISTICS)


def _host_prefix(addr: str | None) -> str:
    if not addr:
        return "0.0.0.0/0"
    a = ipaddress.ip_network(addr, strict=False)
    return str(a)
