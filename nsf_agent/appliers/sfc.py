"""The `sfc` applier: `i2nsf-sfc-nsf` configuration → the userspace SFC data path process
(classifier, SFF, SFC proxies), and its events → NETCONF notifications.

A commit is all or nothing: the whole table is checked (here, then by the data path, which
knows the namespace's interfaces and addresses) before anything changes, and the data path
swaps to the new generation in one step. With `forwarder/fast-path/enabled`, each committed
generation is also handed to `nsf_agent.sfc.fastpath` (tc-BPF, hot entries); if the fast
path refuses it, the userspace path goes back to the previous generation and the commit fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError
from nsf_agent.sfc import config as sfcconf
from nsf_agent.sfc.client import SfcClient, SfcDatapathError, spawn
from nsf_agent.sfc.model import ModelError, SfcConfig

if TYPE_CHECKING:
    from nsf_agent.config import AgentConfig

log = logging.getLogger(__name__)

MODULE = "i2nsf-sfc-nsf"


def create(cfg: AgentConfig) -> SfcApplier:
    """Factory for the `sfc` dataplane name: the data path runs in the agent's namespace,
    and the agent serves the module it is configured with."""
    if MODULE not in cfg.modules:
        cfg.modules.append(MODULE)
    return SfcApplier(cfg.state_dir, dataplane=getattr(cfg, "sfc_dataplane", "auto"))


def _rpc_error(exc: ModelError | SfcDatapathError) -> RpcError:
    path = getattr(exc, "path", None)
    return RpcError("application", "invalid-value", str(exc),
                    path=f"{sfcconf.ROOT}/{path}" if path else sfcconf.ROOT)


class SfcApplier:
    """Applier feeding the SFC data path over its control socket."""

    name = "sfc"

    def __init__(self, state_dir: Path, netns: str | None = None,
                 connect_timeout: float = 15.0, log_level: str = "info",
                 dataplane: str = "auto") -> None:
        # --sfc-dataplane: "userspace" refuses forwarder/fast-path, "bpf" requires it to
        # work, "auto" uses it when the kernel takes it and falls back to userspace only
        self.dataplane = dataplane
        self._fast_ok: tuple[bool, str] | None = None
        state_dir.mkdir(parents=True, exist_ok=True)
        self.control = str(state_dir / "sfc-datapath.sock")
        self.log_path = str(state_dir / "sfc-datapath.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.dp_pid = 0
        self.netns = netns
        self._spawn_args = (netns, connect_timeout, log_level)
        self.restarts = 0
        self.client = self._connect_or_spawn(netns, connect_timeout, log_level)
        self.notify: Notify | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pump: threading.Thread | None = None
        self.cfg = SfcConfig()
        self.generation = 0
        self.fastpath: Any = None

    def _connect_or_spawn(self, netns: str | None, timeout: float, level: str) -> SfcClient:
        if os.path.exists(self.control):
            try:
                client = SfcClient(self.control, timeout=2.0)
                self.dp_pid = int(client.ping()["pid"])
                log.info("sfc: reattached to the running data path (pid %d)", self.dp_pid)
                return client
            except (OSError, TimeoutError, SfcDatapathError):
                os.unlink(self.control)
        self.proc = spawn(self.control, netns=netns, extra=("--log-level", level),
                          log_path=self.log_path)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SFC data path exited ({self.proc.returncode}); "
                                   f"see {self.log_path}")
            try:
                client = SfcClient(self.control, timeout=10.0)
                self.dp_pid = int(client.ping()["pid"])
                return client
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the child is starting; poll its socket

    # ---- lifecycle -------------------------------------------------------------------------

    def bind(self, notify: Notify) -> None:
        self.notify = notify
        # events come on a connection of their own, so that waiting for them never holds
        # up a commit (a table miss is answered by a commit: both must be quick)
        self._evc = SfcClient(self.control, timeout=10.0)
        self._evc.call("subscribe")
        self._pump = threading.Thread(target=self._events, name="sfc-events", daemon=True)
        self._pump.start()

    def close(self, stop_datapath: bool = False) -> None:
        self._stop.set()
        if self.fastpath is not None:
            with contextlib.suppress(Exception), self._in_netns():
                self.fastpath.close()
        with self._lock:
            if stop_datapath:
                with contextlib.suppress(OSError, TimeoutError, SfcDatapathError):
                    self.client.shutdown()
            self.client.close()
        evc = getattr(self, "_evc", None)
        if evc is not None:
            evc.close()
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(timeout=2)
        if stop_datapath and self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # ---- transaction -----------------------------------------------------------------------

    def _parsed(self, change: ConfigChange) -> tuple[SfcConfig, dict[str, Any]]:
        got = change.scratch.get("sfc.new")
        if got is None:
            cfg, fast = sfcconf.parse(change.new)
            try:
                cfg.check()
            except ModelError as exc:
                raise _rpc_error(exc) from exc
            got = change.scratch["sfc.new"] = (cfg, fast)
        return got  # type: ignore[return-value]

    def _call(self, op: str, *args: Any) -> Any:
        """A request to the data path; if the process died or its channel broke, start a
        new one, give it the configuration in force, and ask once more (a crashed data
        path is back with its tables before the next commit or get completes)."""
        with self._lock:
            try:
                return getattr(self.client, op)(*args)
            except (OSError, ConnectionError, TimeoutError) as exc:
                if self._stop.is_set():
                    raise
                log.warning("sfc: data path unreachable (%s): restarting it", exc)
                self._restart()
                return getattr(self.client, op)(*args)

    def _restart(self) -> None:
        with contextlib.suppress(OSError):
            self.client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        elif self.proc is None and self.dp_pid:
            # a data path we reattached to (not our child) that stopped answering: it must
            # not keep its sockets next to the new one (both would forward every packet)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.dp_pid, signal.SIGKILL)
        self.client = self._connect_or_spawn(*self._spawn_args)
        self.restarts += 1
        self.client.replace(self.cfg)
        log.warning("sfc: data path restarted (%d), generation %d re-applied", self.restarts,
                    self.generation)

    def validate(self, change: ConfigChange) -> None:
        cfg, fast = self._parsed(change)
        try:
            self._call("check", cfg)
        except SfcDatapathError as exc:
            raise _rpc_error(exc) from exc
        if fast["enabled"]:
            self._fastpath_available(fast)

    def prepare(self, change: ConfigChange) -> None:
        self._parsed(change)

    def _replace(self, cfg: SfcConfig) -> None:
        self._call("replace", cfg)

    def apply(self, change: ConfigChange) -> None:
        cfg, fast = self._parsed(change)
        cfg.generation = self.generation + 1
        try:
            self._replace(cfg)
        except SfcDatapathError as exc:
            raise _rpc_error(exc) from exc
        except (OSError, TimeoutError) as exc:
            raise RpcError("application", "operation-failed",
                           f"SFC data path unreachable: {exc}") from exc
        try:
            self._fastpath_apply(cfg, fast)
        except Exception as exc:
            with contextlib.suppress(Exception):
                self._replace(self.cfg)
            raise RpcError("application", "operation-failed",
                           f"the SFC fast path refused the table: {exc}") from exc
        self.cfg, self.generation = cfg, cfg.generation

    def abort(self, change: ConfigChange) -> None:
        old, fast = sfcconf.parse(change.old)
        old.generation = self.generation + 1
        self._replace(old)
        with contextlib.suppress(Exception):
            self._fastpath_apply(old, fast)
        self.cfg, self.generation = old, old.generation

    def reconcile(self, running: etree._Element) -> None:
        cfg, fast = sfcconf.parse(running)
        cfg.generation = self.generation + 1
        try:
            self._replace(cfg)
            self._fastpath_apply(cfg, fast)
        except Exception:
            # a table the namespace cannot carry any more (an interface went away while
            # the agent was down): start empty rather than not at all, and say so
            log.exception("sfc: running configuration cannot be applied; data path left empty")
            cfg = SfcConfig(generation=cfg.generation)
            self._replace(cfg)
        self.cfg, self.generation = cfg, cfg.generation

    # ---- fast path hook (nsf_agent.sfc.fastpath, owned by the fast path's issue) ----------

    def _fastpath_usable(self) -> tuple[bool, str]:
        """Whether forwarder/fast-path can be honoured here (cached: a kernel probe)."""
        if self.dataplane == "userspace":
            return False, "the agent runs with --sfc-dataplane userspace"
        if self._fast_ok is None:
            try:
                from nsf_agent.sfc.fastpath import FastPath
            except ImportError as exc:
                self._fast_ok = (False, f"the SFC fast path is not installed: {exc}")
            else:
                self._fast_ok = FastPath.available()
        return self._fast_ok

    def _fastpath_available(self, fast: dict[str, Any] | None = None) -> None:
        """validate(): forwarder/fast-path enabled. Refused under --sfc-dataplane userspace
        (and bpf, should the kernel stop taking it); under auto an unusable fast path
        means the userspace path alone, said in the log. Its interfaces must exist in the
        data path's namespace."""
        ok, reason = self._fastpath_usable()
        if not ok and self.dataplane != "auto":
            raise RpcError("application", "operation-not-supported",
                           f"the SFC fast path is not available: {reason}",
                           path=f"{sfcconf.ROOT}/forwarder/fast-path/enabled")
        if not ok or not fast:
            return
        from pyroute2 import IPRoute

        with self._in_netns(), IPRoute() as ipr:
            have = {ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for name in fast.get("interfaces", []):
            if name not in have:
                raise RpcError("application", "invalid-value",
                               f"fast path interface {name!r} does not exist in the NSF's "
                               "namespace", path=f"{sfcconf.ROOT}/forwarder/fast-path/interface")

    def _fastpath_apply(self, cfg: SfcConfig, fast: dict[str, Any]) -> None:
        """Hand the committed generation to the fast path (attach/detach as configured)."""
        with self._in_netns():
            enabled = bool(fast.get("enabled"))
            if enabled:
                ok, reason = self._fastpath_usable()
                if not ok:
                    log.warning("sfc: fast path requested but not used (%s): userspace path "
                                "only", reason)
                    enabled = False
            if not enabled:
                if self.fastpath is not None:
                    self.fastpath.close()
                    self.fastpath = None
                return
            from nsf_agent.sfc.fastpath import FastPath

            # the fast path takes the same SfcConfig and leaves to userspace what it
            # cannot carry out exactly as userspace would (nsf_agent/sfc/fastpath/tables.py)
            if self.fastpath is None:
                self.fastpath = FastPath()
            self.fastpath.attach(list(fast.get("interfaces", [])))
            self.fastpath.apply(cfg)

    def _in_netns(self) -> contextlib.AbstractContextManager[None]:
        """The fast path's netlink and BPF calls act on the data path's namespace (the
        agent's own unless it drives a data path in another one, as tests do)."""
        if self.netns is None:
            return contextlib.nullcontext()
        from nsf_agent.userspace.lab import in_netns

        return in_netns(self.netns)

    # ---- operational state -----------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self._call("stats")  # type: ignore[no-any-return]

    def state(self, running: etree._Element) -> list[etree._Element]:
        if self.cfg.empty() and not self.cfg.sff_id:
            return []
        snap = self.stats()
        if self.fastpath is not None:
            with contextlib.suppress(Exception):
                from nsf_agent.sfc.fastpath.merge import merge_stats

                snap = merge_stats(snap, self.fastpath.counters())
        return [sfcconf.state(self.cfg, snap)]

    # ---- data path events → notifications ----------------------------------------------------

    def _resubscribe(self) -> None:
        """Subscribe again once a data path answers (the one `_call` restarts, or this
        one, which does the restart itself if no request comes)."""
        with contextlib.suppress(OSError):
            self._evc.close()
        while not self._stop.is_set():
            try:
                evc = SfcClient(self.control, timeout=1.0)
                evc.call("subscribe")
                self._evc = evc
                return
            except (OSError, TimeoutError, ConnectionError, SfcDatapathError):
                with contextlib.suppress(Exception):
                    self._call("ping")   # restarts a dead data path
                self._stop.wait(0.05)

    def _events(self) -> None:
        while not self._stop.is_set():
            try:
                evs = self._evc.events(timeout=0.5)
            except (OSError, ValueError, ConnectionError):
                if self._stop.is_set():
                    return
                log.warning("sfc: lost the data path's event channel; reconnecting")
                self._resubscribe()
                continue
            for ev in evs:
                try:
                    n = sfcconf.notification(ev)
                    if n is not None and self.notify is not None:
                        self.notify(n)
                except Exception:
                    log.exception("sfc: cannot turn a data path event into a notification")
