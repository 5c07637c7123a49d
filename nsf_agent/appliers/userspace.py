"""The `userspace` applier: RFC 9061 IKE-less SPD/SAD → the userspace ESP data path process
(for kernels without ESP, like strongSwan's kernel-libipsec).

The data path runs as its own process so that traffic never stalls the NETCONF server; it
outlives an agent restart (the agent reconnects to its control socket in the state
directory), so a restarted agent does not interrupt protected traffic.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import secrets
import select
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError
from netconf_core.rpc import Handler
from nsf_agent import ikeless, sadb
from nsf_agent.ikeless import IkelessConfig, SadEntry
from nsf_agent.ikeless import SpdEntry as CfgSpd
from nsf_agent.userspace import model as um
from nsf_agent.userspace.client import DatapathClient, DatapathError, spawn

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer
    from netconf_core.session import NetconfSession

log = logging.getLogger(__name__)

NS = ikeless.NS
Q = ikeless.Q
PORT_SUFFIX = "#"  # an SPD entry with several port ranges becomes name#1, name#2, ...
SPI_RESERVE_SECONDS = 30.0  # how long an allocate-spi reservation lasts (as Linux's default)


def _path(kind: str, name: str) -> str:
    lst = "sad/sad-entry" if kind == "sad" else "spd/spd-entry"
    return f"/ietf-i2nsf-ikeless:ipsec-ikeless/{lst}[name='{name}']"


def to_spd(e: CfgSpd) -> list[um.SpdEntry]:
    """One RFC 9061 SPD entry → data path entries (one per pair of local and remote port ranges)."""
    sel = e.selector
    lports = [um.PortRange(r.start, r.end) for r in sel.local_ports] or [um.ANY_PORTS]
    rports = [um.PortRange(r.start, r.end) for r in sel.remote_ports] or [um.ANY_PORTS]
    combos = list(itertools.product(lports, rports))
    out = []
    for i, (lp, rp) in enumerate(combos):
        name = e.name if len(combos) == 1 else f"{e.name}{PORT_SUFFIX}{i + 1}"
        try:
            out.append(um.SpdEntry(
                name=name,
                direction=um.Direction(e.direction),
                selector=um.Selector(sel.local_prefix, sel.remote_prefix, sel.protocol, lp, rp),
                action=um.Action(e.action),
                reqid=e.reqid,
                priority=e.index,
            ))
        except um.ModelError as exc:
            raise RpcError("application", "invalid-value", f"SPD entry {e.name!r}: {exc}",
                           path=_path("spd", e.name)) from exc
    return out


def to_sa(e: SadEntry) -> um.SaConfig:
    ikeless.check_transport_hosts(e, _path("sad", e.name))
    if e.protocol != "esp":
        raise RpcError("application", "invalid-value",
                       f"SAD entry {e.name!r}: the userspace data path does ESP only",
                       path=_path("sad", e.name))
    enc = e.encryption.number if e.encryption else um.EncAlg.NULL
    integ = e.integrity.number if e.integrity else um.IntegAlg.NONE
    if enc not in um.EncAlg.__members__.values() or integ not in um.IntegAlg.__members__.values():
        raise RpcError(
            "application", "invalid-value",
            f"SAD entry {e.name!r}: the userspace data path supports encryption "
            f"{[int(a) for a in um.EncAlg]} and integrity {[int(a) for a in um.IntegAlg]}",
            path=_path("sad", e.name) + "/ipsec-sa-config/esp-sa",
        )
    if e.encap is not None and e.encap.kind != "espinudp":
        raise RpcError("application", "invalid-value",
                       f"SAD entry {e.name!r}: only ESP-in-UDP encapsulation is supported",
                       path=_path("sad", e.name) + "/ipsec-sa-config/encapsulation-type")
    try:
        return um.SaConfig(
            name=e.name, spi=e.spi, direction=um.Direction(e.direction),
            src=e.src, dst=e.dst, mode=um.Mode(e.mode),
            enc_alg=um.EncAlg(enc), enc_key=e.enc_key,
            integ_alg=um.IntegAlg(integ), integ_key=e.integ_key,
            reqid=e.reqid, replay_window=e.anti_replay_window, esn=e.ext_seq_num,
            soft=um.Lifetime(bytes=e.soft.bytes, packets=e.soft.packets, time=e.soft.time,
                             idle=e.soft.idle),
            hard=um.Lifetime(bytes=e.hard.bytes, packets=e.hard.packets, time=e.hard.time,
                             idle=e.hard.idle),
            encap=um.UdpEncap(e.encap.sport, e.encap.dport) if e.encap else None,
        )
    except um.ModelError as exc:
        raise RpcError("application", "invalid-value", f"SAD entry {e.name!r}: {exc}",
                       path=_path("sad", e.name)) from exc


def translate(cfg: IkelessConfig) -> tuple[list[um.SaConfig], list[um.SpdEntry]]:
    return [to_sa(e) for e in cfg.sad], [s for e in cfg.spd for s in to_spd(e)]


class UserspaceApplier:
    """Applier feeding the userspace ESP data path over its control socket."""

    name = "userspace"
    sadb_state = True  # serve i2nsf-sadb counters (the agent clears it if not loaded)

    def __init__(
        self,
        state_dir: Path,
        netns: str | None = None,
        tun: str = "i2u0",
        extra_args: tuple[str, ...] = (),
        connect_timeout: float = 15.0,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.control = str(state_dir / "datapath.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        # Sequence-number marks (nsf_agent/userspace/seqstore.py): a data path started anew
        # resumes every SA it had installed above its mark.
        seq_path = state_dir / "datapath-seq"
        self._seq_store_existed = seq_path.exists()
        extra_args = ("--seq-store", str(seq_path), *extra_args)
        self._spawn_args = (netns, tun, extra_args, connect_timeout,
                            str(state_dir / "datapath.log"))
        self.client = self._connect_or_spawn(*self._spawn_args)
        # called (no arguments) when SAs lost data-path state while the agent runs (the data
        # path died and was started again): the agent sends nsf-restarted
        self.on_state_lost: Callable[[], None] | None = None
        self.respawns = 0
        # SAs whose data-path state did not survive a restart:
        # name -> (reason, suspended, identity of the SA, see _sa_id)
        self._rekey: dict[str, tuple[str, bool, tuple[object, ...]]] = {}
        self.notify: Notify | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cfg = IkelessConfig()
        self._pump: threading.Thread | None = None
        # allocate-spi reservations: (dst, spi) → monotonic expiry time
        self._reserved: dict[tuple[str, int], float] = {}
        self._spi_lock = threading.Lock()

    def _connect_or_spawn(self, netns: str | None, tun: str, extra: tuple[str, ...],
                          timeout: float, log_path: str) -> DatapathClient:
        if os.path.exists(self.control):
            try:
                client = DatapathClient(self.control, timeout=2.0)
                client.ping()
                log.info("userspace: reattached to the running data path")
                return client
            except (OSError, TimeoutError, DatapathError):
                os.unlink(self.control)
        self.proc = spawn(self.control, tun=tun, netns=netns, extra=extra, log_path=log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"userspace data path exited ({self.proc.returncode}); "
                                   f"see {log_path}")
            try:
                client = DatapathClient(self.control, timeout=10.0)
                client.ping()
                return client
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the child is starting; poll its socket

    # ---- lifecycle ---------------------------------------------------------------------

    def bind(self, notify: Notify) -> None:
        self.notify = notify
        self._pump = threading.Thread(target=self._events, name="datapath-events", daemon=True)
        self._pump.start()

    def close(self, stop_datapath: bool = False) -> None:
        self._stop.set()
        with self._lock:
            if stop_datapath:
                with contextlib.suppress(OSError, TimeoutError, DatapathError):
                    self.client.shutdown()
            self.client.close()
        if stop_datapath and self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # ---- transaction -------------------------------------------------------------------

    def _translated(self, change: ConfigChange,
                    ) -> tuple[IkelessConfig, tuple[list[um.SaConfig], list[um.SpdEntry]]]:
        """The new configuration and the data path's messages for it, once per transaction;
        entries whose XML is unchanged since the configuration in place are reused, not
        parsed again. Writes only change.scratch (the commit may still be refused)."""
        got = change.scratch.get("userspace.new")
        if got is None:
            with ikeless.paused_gc():
                cfg = ikeless.parse(change.new, self._cfg)
                got = change.scratch["userspace.new"] = (cfg, translate(cfg))
        return got  # type: ignore[return-value]

    def validate(self, change: ConfigChange) -> None:
        self._translated(change)

    def prepare(self, change: ConfigChange) -> None:
        self._translated(change)

    def _replace(self, sas: list[um.SaConfig], spd: list[um.SpdEntry],
                 suspend: frozenset[str] = frozenset()) -> None:
        with self._lock:
            res = self.client.replace(sas, spd, suspend)
        if not isinstance(res, dict):
            return
        by_name = {s.name: s for s in sas}
        for name, reason in (res.get("restored") or {}).items():
            if name in by_name:
                self._rekey[name] = (reason, False, _sa_id(by_name[name]))
        for name in res.get("suspended") or ():
            if name in by_name:
                reason = self._rekey.get(name, ("sequence-unknown",))[0]
                self._rekey[name] = (reason, True, _sa_id(by_name[name]))

    def _prune_rekey(self, cfg: IkelessConfig) -> None:
        """Entries whose SA was removed or replaced (other SPI or keys) are done."""
        if not self._rekey:
            return
        by_name = {e.name: e for e in cfg.sad}
        for name, (_, _, ident) in list(self._rekey.items()):
            e = by_name.get(name)
            if e is None or _sa_id(e) != ident:
                del self._rekey[name]

    def rekey_required(self) -> dict[str, tuple[str, bool]]:
        """SAs to be replaced by the controller (i2nsf-sadb nsf-status)."""
        return {n: (r, s) for n, (r, s, _) in self._rekey.items()}

    def apply(self, change: ConfigChange) -> None:
        cfg, (sas, spd) = self._translated(change)
        try:
            self._replace(sas, spd)
        except (DatapathError, OSError, TimeoutError) as exc:
            # A refused replace changes nothing in the data path.
            raise RpcError("application", "operation-failed",
                           f"userspace data path refused the change: {exc}") from exc
        self._cfg = cfg
        self._prune_rekey(cfg)
        with self._spi_lock:  # reserved SPIs now held by SAs are no longer reservations
            for e in self._cfg.sad:
                self._reserved.pop((str(e.dst), e.spi), None)

    def abort(self, change: ConfigChange) -> None:
        old = ikeless.parse(change.old, self._cfg)
        self._replace(*translate(old))
        self._cfg = old

    def reconcile(self, running: etree._Element) -> None:
        cfg = ikeless.parse(running)
        sas, spd = translate(cfg)
        suspend: frozenset[str] = frozenset()
        if self.proc is not None and not self._seq_store_existed and sas:
            # A data path started anew without its marks (state directory of an older
            # version, or lost): the counters these SAs used are unknown. Receive, but do
            # not send with them (sending could repeat sequence numbers and GCM nonces).
            suspend = frozenset(s.name for s in sas if s.direction is um.Direction.OUTBOUND)
            for s in sas:
                self._rekey[s.name] = (*(("sequence-unknown", True) if s.name in suspend
                                         else ("replay-state-lost", False)), _sa_id(s))
            log.warning("userspace: no sequence marks for %d SAs of the saved configuration: "
                        "outbound ones suspended until replaced", len(sas))
        self._replace(sas, spd, suspend)
        self._cfg = cfg
        if self._rekey:
            log.warning("userspace: %d SAs lost data-path state in a restart: %s",
                        len(self._rekey), ", ".join(sorted(self._rekey)))

    # ---- i2nsf-sadb RPCs (SADB_GETSPI) ------------------------------------------------------

    def rpcs(self) -> dict[tuple[str, str], Handler]:
        return {sadb.ALLOCATE_SPI: self._allocate_spi}

    def _allocate_spi(self, srv: NetconfServer, sess: NetconfSession,
                      op: etree._Element) -> list[etree._Element]:
        """A random SPI in range that no SA of the running config (same destination) holds
        and no live reservation holds; reserved for SPI_RESERVE_SECONDS (there is no kernel
        larval state here: the SAD entry with that SPI simply uses it)."""
        req = sadb.parse_allocate_spi(srv, op)
        if req.protocol != "esp":
            raise RpcError("application", "operation-not-supported",
                           "the userspace data path does ESP only",
                           path="/i2nsf-sadb:allocate-spi/protocol",
                           info={"bad-element": "protocol"})
        dst = str(req.dst)
        with self._spi_lock:
            now = time.monotonic()
            self._reserved = {k: t for k, t in self._reserved.items() if t > now}
            used = {e.spi for e in self._cfg.sad if ipaddress.ip_address(e.dst) == req.dst}
            used |= {spi for (d, spi) in self._reserved if d == dst}
            spi = _free_spi(req.spi_min, req.spi_max, used)
            if spi is None:
                raise RpcError("application", "resource-denied",
                               f"no unused esp SPI for {dst} in [{req.spi_min}, {req.spi_max}]")
            self._reserved[(dst, spi)] = now + SPI_RESERVE_SECONDS
        log.info("userspace: reserved SPI 0x%08x for %s -> %s", spi, req.src, dst)
        return sadb.spi_reply(spi)

    # ---- operational state ---------------------------------------------------------------

    def stats(self) -> dict:
        with self._lock:
            return self.client.stats()

    def state(self, running: etree._Element) -> list[etree._Element]:
        snap = self.stats()
        out = [_statistics(snap.get("global", {}))] if self.sadb_state else []
        if not self._cfg.sad:
            return out
        by_name = {s["sa"]: s for s in snap.get("sas", [])}
        root = etree.Element(Q + "ipsec-ikeless", nsmap={None: NS})
        sad = etree.SubElement(root, Q + "sad")
        for e in self._cfg.sad:
            s = by_name.get(e.name)
            if s is None:
                continue
            ent = etree.SubElement(sad, Q + "sad-entry")
            etree.SubElement(ent, Q + "name").text = e.name
            st = etree.SubElement(ent, Q + "ipsec-sa-state")
            cur = etree.SubElement(st, Q + "sa-lifetime-current")
            etree.SubElement(cur, Q + "time").text = str(int(s.get("age", 0)))
            etree.SubElement(cur, Q + "bytes").text = str(int(s.get("bytes", 0)))
            etree.SubElement(cur, Q + "packets").text = str(min(int(s.get("packets", 0)),
                                                                 2**32 - 1))
            rs = etree.SubElement(st, Q + "replay-stats")
            rw = etree.SubElement(rs, Q + "replay-window")
            etree.SubElement(rw, Q + "w").text = str(e.anti_replay_window)
            etree.SubElement(rw, Q + "t").text = str(int(s.get("replay_top", 0)))
            # RFC 9061: packet-dropped = replays, failed = outside the window (other drop
            # reasons are in i2nsf-sadb:sa-drops)
            replay, window = int(s.get("replay", 0)), int(s.get("out_of_window", 0))
            etree.SubElement(rs, Q + "packet-dropped").text = str(replay + window)
            etree.SubElement(rs, Q + "failed").text = str(window)
            etree.SubElement(rs, Q + "seq-number-counter").text = str(int(s.get("seq", 0)))
            if self.sadb_state:
                _drops(etree.SubElement(st, sadb.Q + "sa-drops", nsmap={None: sadb.NS}), s)
        out.append(root)
        return out

    # ---- data path events → RFC 9061 notifications -----------------------------------------

    def _events(self) -> None:
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self.client.sock], [], [], 0.5)
                with self._lock:
                    # Requests may have queued events already; a readable socket holds more.
                    evs = self.client.events(timeout=0.05 if readable else 0.0)
            except (OSError, ValueError, ConnectionError):
                if self._stop.is_set():
                    return
                log.error("userspace: lost the data path (it died?): starting it again")
                try:
                    self._respawn()
                except Exception:
                    log.exception("userspace: cannot start the data path again")
                    self._stop.wait(1.0)
                continue
            for ev in evs:
                try:
                    self._on_event(ev)
                except Exception:
                    log.exception("userspace: cannot turn a data path event into a notification")

    def _respawn(self) -> None:
        """A new data path with the configuration in place. Its sequence marks make every
        SA resume above what the dead one may have sent; the SAs that lost state are
        reported (nsf-status, nsf-restarted) for the controller to replace."""
        with self._lock:
            with contextlib.suppress(OSError):
                self.client.close()
            if self.proc is not None:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    self.proc.wait(timeout=0.1)  # (reap the dead child)
            self.proc = None
            self.client = self._connect_or_spawn(*self._spawn_args)
        self.respawns += 1
        while True:  # (a commit may apply meanwhile: end with the configuration in place)
            cfg = self._cfg
            self._replace(*translate(cfg))
            if cfg is self._cfg:
                break
        log.warning("userspace: data path started again; %d SAs to be replaced: %s",
                    len(self._rekey), ", ".join(sorted(self._rekey)))
        if self._rekey and self.on_state_lost is not None:
            self.on_state_lost()

    def _on_event(self, ev: dict) -> None:
        if self.notify is None:
            return
        kind = ev.get("event")
        if kind == "expire":
            if ev.get("trigger") == "seq-overflow":
                n = etree.Element(Q + "sadb-seq-overflow", nsmap={None: NS})
                etree.SubElement(n, Q + "ipsec-sa-name").text = str(ev["sa"])
                self.notify(n)
            n = etree.Element(Q + "sadb-expire", nsmap={None: NS})
            etree.SubElement(n, Q + "ipsec-sa-name").text = str(ev["sa"])
            etree.SubElement(n, Q + "soft-lifetime-expire").text = (
                "false" if ev.get("hard") else "true")
            cur = etree.SubElement(n, Q + "lifetime-current")
            for k in ("bytes", "packets"):
                if k in ev:
                    etree.SubElement(cur, Q + k).text = str(int(ev[k]))
            self.notify(n)
        elif kind == "acquire":
            name = str(ev.get("spd", "")).split(PORT_SUFFIX)[0]
            entry = self._cfg.spd_by_name().get(name)
            n = etree.Element(Q + "sadb-acquire", nsmap={None: NS})
            etree.SubElement(n, Q + "ipsec-policy-name").text = name
            ts = etree.SubElement(n, Q + "traffic-selector")
            src, dst = ev.get("src"), ev.get("dst")
            if entry is not None and entry.direction == "inbound":
                src, dst = dst, src
            etree.SubElement(ts, Q + "local-prefix").text = _host(src)
            etree.SubElement(ts, Q + "remote-prefix").text = _host(dst)
            proto = ev.get("protocol")
            etree.SubElement(ts, Q + "inner-protocol").text = str(proto) if proto else "any"
            self.notify(n)


_DROPS = (("integrity-failed", ("integrity_failed",)), ("replay", ("replay", "out_of_window")),
          ("bad-padding", ("decrypt_failed",)), ("wrong-next-header", ("wrong_next_header",)),
          ("malformed", ("malformed",)), ("policy-violation", ("policy_violation",)))
_GLOBAL = (("unknown-spi", ("unknown_spi",)), *_DROPS, ("no-policy", ("no_policy",)),
           ("no-sa", ("no_sa",)), ("discarded", ("discarded",)),
           ("sending-suspended", ("sending_suspended",)),
           ("sequence-overflow", ("seq_overflow", "seq_store_failed")))


def _drops(parent: etree._Element, counters: dict, table=_DROPS) -> etree._Element:  # type: ignore[no-untyped-def]
    for leaf, keys in table:
        etree.SubElement(parent, sadb.Q + leaf).text = str(
            sum(int(counters.get(k, 0)) for k in keys))
    return parent


def _statistics(glob: dict) -> etree._Element:  # type: ignore[type-arg]
    """/i2nsf-sadb:sadb-statistics from the data path's global counters."""
    return _drops(etree.Element(sadb.Q + "sadb-statistics", nsmap={None: sadb.NS}), glob,
                  _GLOBAL)


def _sa_id(e: SadEntry | um.SaConfig) -> tuple[object, ...]:
    """What makes an SA another one (a rekey changes it): SPI, addresses and keys."""
    return (e.spi, str(e.dst), str(e.src), bytes(e.enc_key or b""), bytes(e.integ_key or b""))


def _free_spi(lo: int, hi: int, used: set[int]) -> int | None:
    """A uniformly random SPI in [lo, hi] not in `used` (None if there is none)."""
    size = hi - lo + 1
    taken = {s for s in used if lo <= s <= hi}
    if len(taken) >= size:
        return None
    if size > 4 * len(taken) + 64:  # sparse: random draws almost always hit a free one
        while True:
            spi = lo + secrets.randbelow(size)
            if spi not in taken:
                return spi
    free = [s for s in range(lo, hi + 1) if s not in taken]
    return free[secrets.randbelow(len(free))]


def _host(addr: object) -> str:
    import ipaddress

    if not addr:
        return "0.0.0.0/0"
    return str(ipaddress.ip_network(str(addr), strict=False))
