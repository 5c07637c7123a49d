"""The DMS's instances: create (journal, namespace and links, rules file, process, wait until
it forwards), remove, restart, replace rules, supervise (a process that exits is reported
and can be restarted), collect what the processes report, and reconcile after a restart.

Every method runs on the server's event loop thread (RPC handlers, socket readers, process
exit watchers), so no two operations interleave; kernel and process work is short (tens of
milliseconds) and done inline so that an RPC's reply states the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lxml import etree

import nsf_agent
from netconf_core.errors import RpcError
from nsf_agent.dms import plumbing, xmlio
from nsf_agent.dms.config import DmsConfig
from nsf_agent.dms.journal import CREATING, FAILED, REMOVING, RUNNING, Journal
from nsf_agent.functions.spec import Spec, SpecError, check

log = logging.getLogger(__name__)
Notify = Callable[[etree._Element], None]


@dataclass
class Instance:
    name: str
    type: str
    spec: Spec
    netns: str
    to_sf: str
    from_sf: str
    report_sockets: list[str]
    sf_mac: str = ""
    host_mac: str = ""
    state: str = CREATING
    pid: int = 0
    pid_start: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    started: datetime | None = None
    restarts: int = 0
    last_error: str = ""
    registered: bool = False
    expected_exit: bool = False
    load: dict[str, Any] = field(default_factory=dict)

    def journal_entry(self) -> dict[str, Any]:
        return {"type": self.type, "spec": self.spec.to_json(), "netns": self.netns,
                "to_sf": self.to_sf, "from_sf": self.from_sf, "sf_mac": self.sf_mac,
                "host_mac": self.host_mac, "report_sockets": self.report_sockets,
                "phase": self.state, "pid": self.pid, "pid_start": self.pid_start,
                "restarts": self.restarts, "last_error": self.last_error}


def _proc_start(pid: int) -> int:
    """Start time of a process (clock ticks since boot), to tell a pid reused from ours."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _exit_reason(rc: int | None) -> str:
    if rc is None:
        return "the process exited"
    if rc < 0:
        return f"killed by signal {signal.Signals(-rc).name}"
    return f"exited with status {rc}"


class Manager:
    def __init__(self, cfg: DmsConfig, notify: Notify,
                 on_change: Callable[[Instance, str], None] | None = None) -> None:
        self.cfg = cfg
        self.notify = notify
        self.on_change = on_change or (lambda inst, what: None)  # registrar hook
        self.dir = cfg.state_dir
        (self.dir / "instances").mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.dir / "journal.json")
        self.instances: dict[str, Instance] = {}
        self.results_path = str(self.dir / "results.sock")
        self.load_path = str(self.dir / "load.sock")
        self._socks: list[socket.socket] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._auto: dict[str, list[float]] = {}  # automatic restart times per instance

    # -- start / stop -------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for path, handler in ((self.results_path, self._on_result),
                              (self.load_path, self._on_load)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind(path)
            os.chmod(path, 0o600)
            s.setblocking(False)
            loop.add_reader(s.fileno(), handler, s)
            self._socks.append(s)
        self.reconcile()

    def close(self) -> None:
        """Stop serving; instances keep running (the next start adopts them)."""
        for inst in self.instances.values():
            self._unwatch(inst)
        for s in self._socks:
            if self.loop is not None:
                self.loop.remove_reader(s.fileno())
            s.close()
        self._socks.clear()

    def reconcile(self) -> None:
        """Adopt complete instances from the journal; remove what anything else left."""
        for name, e in list(self.journal.entries.items()):
            inst = Instance(name, e["type"], Spec.from_json(e["spec"]), e["netns"], e["to_sf"],
                            e["from_sf"], list(e.get("report_sockets", [])), e.get("sf_mac", ""),
                            e.get("host_mac", ""), e["phase"], int(e.get("pid", 0)),
                            int(e.get("pid_start", 0)), restarts=int(e.get("restarts", 0)),
                            last_error=e.get("last_error", ""))
            intact = plumbing.netns_exists(inst.netns) and plumbing.link_exists(
                inst.to_sf, self.cfg.host_netns) and plumbing.link_exists(
                inst.from_sf, self.cfg.host_netns)
            if inst.state in (CREATING, REMOVING) or not intact:
                log.warning("instance %s: removing what a %s left behind", name,
                            "crash" if inst.state in (CREATING, REMOVING) else "lost link")
                self._destroy(inst)
                self.journal.drop(name)
                if inst.state not in (CREATING, REMOVING):
                    self.on_change(inst, "unregister")
                continue
            self.instances[name] = inst
            if inst.state == RUNNING and inst.pid and _proc_start(inst.pid) == inst.pid_start:
                self._watch(inst)
                inst.started = datetime.now(UTC)
                log.info("instance %s: adopted running process %d", name, inst.pid)
                self.on_change(inst, "register")
            else:
                if inst.state == RUNNING:
                    inst.last_error = "process gone when the DMS restarted"
                inst.state = FAILED
                self.journal.put(name, inst.journal_entry())
        # namespaces of ours the journal does not know (cannot happen unless edited by hand)
        known = {i.netns for i in self.instances.values()}
        with contextlib.suppress(FileNotFoundError):
            for ns in os.listdir(plumbing.NETNS_DIR):
                if ns.startswith(self.cfg.netns_prefix) and ns not in known:
                    log.warning("removing namespace %s that no journal entry names", ns)
                    plumbing.destroy(ns, None, None, self.cfg.host_netns)

    # -- operations ---------------------------------------------------------------------------

    def _names(self, name: str) -> tuple[str, str]:
        h = hashlib.sha1(f"{self.cfg.name}/{name}".encode()).hexdigest()[:8]
        return f"sf{h}i", f"sf{h}o"

    def create(self, name: str, sf_type: str, spec: Spec, to_sf: str | None,
               from_sf: str | None, report_sockets: list[str]) -> Instance:
        if name in self.instances:
            raise RpcError("application", "data-exists", f"instance {name!r} exists",
                           path="/i2nsf-dms:create-instance/name", info={"bad-element": "name"})
        if len(self.instances) >= self.cfg.max_instances:
            raise RpcError("application", "resource-denied",
                           f"no capacity left: {len(self.instances)} of "
                           f"{self.cfg.max_instances} instances exist")
        try:
            check(spec)
        except SpecError as exc:
            raise RpcError("application", "invalid-value", str(exc),
                           path=f"/i2nsf-dms:create-instance/{exc.path}" if exc.path else None,
                           info={"bad-element": exc.path.split("/")[0] or "type"}) from None
        for p in report_sockets:
            # the function (root, in its namespace) sends to these: plain absolute socket paths
            if not p.startswith("/") or "/../" in p + "/" or len(p.encode()) > 107 or \
                    "\0" in p:
                raise RpcError("application", "invalid-value",
                               f"report-socket {p!r} is not an absolute path of at most 107 "
                               "bytes", path="/i2nsf-dms:create-instance/report-socket",
                               info={"bad-element": "report-socket"})
        d_in, d_out = self._names(name)
        to_sf, from_sf = to_sf or d_in, from_sf or d_out
        netns = self.cfg.netns_prefix + name
        if to_sf == from_sf:
            raise RpcError("application", "invalid-value", "to-sf and from-sf are the same name",
                           info={"bad-element": "from-sf"})
        for other in self.instances.values():
            if {to_sf, from_sf} & {other.to_sf, other.from_sf}:
                raise RpcError("application", "data-exists",
                               f"interface name used by instance {other.name}",
                               info={"bad-element": "to-sf"})
        for ln in (to_sf, from_sf):
            if plumbing.link_exists(ln, self.cfg.host_netns):
                raise RpcError("application", "data-exists", f"interface {ln} exists",
                               info={"bad-element": "to-sf" if ln == to_sf else "from-sf"})
        if plumbing.netns_exists(netns):
            raise RpcError("application", "data-exists", f"namespace {netns} exists")
        inst = Instance(name, sf_type, spec, netns, to_sf, from_sf, list(report_sockets))
        self.journal.put(name, inst.journal_entry())  # before anything exists
        try:
            links = plumbing.create(netns, to_sf, from_sf, self.cfg.host_netns)
            inst.sf_mac, inst.host_mac = links.sf_mac, links.host_mac
            _crash_point("after-plumbing")
            self._spawn(inst)
            _crash_point("after-spawn")
        except (plumbing.PlumbingError, RpcError, OSError) as exc:
            self._destroy(inst)
            self.journal.drop(name)
            if isinstance(exc, RpcError):
                raise
            raise RpcError("application", "operation-failed",
                           f"cannot create instance {name}: {exc}") from None
        inst.state = RUNNING
        self.instances[name] = inst
        self.journal.put(name, inst.journal_entry())
        log.info("instance %s (%s) created: namespace %s, pid %d", name, sf_type, netns,
                 inst.pid)
        self.on_change(inst, "register")
        return inst

    def rules_for_new(self, sf_type: str, source: str | None, spec: Spec, given: bool
                      ) -> Spec:
        """The rules of a new instance given none (or copy-rules-from): those of `source`,
        else of the newest instance of the type (scaling out keeps the policy)."""
        if source is not None:
            if given:
                raise RpcError("application", "invalid-value",
                               "copy-rules-from and rules are exclusive",
                               info={"bad-element": "copy-rules-from"})
            src = self.instances.get(source)
            if src is None:
                raise RpcError("application", "invalid-value", f"no instance {source!r}",
                               path="/i2nsf-dms:create-instance/copy-rules-from",
                               info={"bad-element": "copy-rules-from"})
            if src.type != sf_type:
                raise RpcError("application", "invalid-value",
                               f"instance {source} is a {src.type}, not a {sf_type}",
                               info={"bad-element": "copy-rules-from"})
            return Spec.from_json(src.spec.to_json())
        same = [i for i in self.instances.values() if i.type == sf_type]
        if same:
            newest = max(same, key=lambda i: i.started or datetime.min.replace(tzinfo=UTC))
            return Spec.from_json(newest.spec.to_json())
        return spec

    def get(self, name: str, what: str) -> Instance:
        inst = self.instances.get(name)
        if inst is None:
            raise RpcError("application", "invalid-value", f"no instance {name!r}",
                           path=f"/i2nsf-dms:{what}/name", info={"bad-element": "name"})
        return inst

    def remove(self, name: str) -> None:
        inst = self.get(name, "remove-instance")
        inst.state = REMOVING
        self.journal.put(name, inst.journal_entry())
        self._stop_process(inst)
        _crash_point("mid-remove")
        self._destroy(inst)
        del self.instances[name]
        self._auto.pop(name, None)
        self.journal.drop(name)
        log.info("instance %s removed", name)
        self.on_change(inst, "unregister")

    def restart(self, name: str) -> Instance:
        inst = self.get(name, "restart-instance")
        self._stop_process(inst)
        plumbing.kill_all(inst.netns)
        try:
            self._spawn(inst)
        except RpcError as exc:
            inst.state, inst.last_error = FAILED, exc.message
            self.journal.put(name, inst.journal_entry())
            raise
        inst.state = RUNNING
        inst.restarts += 1
        self.journal.put(name, inst.journal_entry())
        self.on_change(inst, "register")
        return inst

    def set_rules(self, name: str, spec: Spec) -> None:
        inst = self.get(name, "set-rules")
        try:
            check(spec)
        except SpecError as exc:
            raise RpcError("application", "invalid-value", str(exc),
                           info={"bad-element": exc.path.split("/")[0] or "name"}) from None
        if inst.state != RUNNING:
            raise RpcError("application", "resource-denied",
                           f"instance {name} is {inst.state}; restart it first")
        reply = self._control(inst, {"op": "rules", "spec": spec.to_json()}, timeout=10)
        if not reply.get("ok"):
            raise RpcError("application", "operation-failed",
                           f"instance {name} kept its rules: {reply.get('error')}")
        inst.spec = spec
        self._rules_file(inst).write_text(json.dumps(spec.to_json()))
        self.journal.put(name, inst.journal_entry())

    def current_load(self, name: str | None) -> dict[str, dict[str, Any]]:
        names = [name] if name else list(self.instances)
        out: dict[str, dict[str, Any]] = {}
        for n in names:
            inst = self.get(n, "get-load")
            if inst.state == RUNNING:
                with contextlib.suppress(OSError, ValueError):
                    reply = self._control(inst, {"op": "load"})
                    if reply.get("ok"):
                        inst.load = reply["load"]
            out[n] = inst.load
        return out

    # -- processes ----------------------------------------------------------------------------

    def _inst_dir(self, inst: Instance) -> Path:
        return self.dir / "instances" / inst.name

    def _rules_file(self, inst: Instance) -> Path:
        return self._inst_dir(inst) / "rules.json"

    def _spawn(self, inst: Instance) -> None:
        d = self._inst_dir(inst)
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._rules_file(inst).write_text(json.dumps(inst.spec.to_json()))
        root = str(Path(nsf_agent.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        cmd = ["ip", "netns", "exec", inst.netns, sys.executable, "-m", "nsf_agent.functions",
               "--instance", inst.name, "--type", inst.type, "--rules",
               str(self._rules_file(inst)), "--report-socket", self.results_path,
               *(a for p in inst.report_sockets for a in ("--report-socket", p)),
               "--load-socket", self.load_path, "--control-socket", str(d / "ctl.sock"),
               "--load-interval", str(self.cfg.load_interval)]
        logf = open(d / "sf.log", "ab")  # noqa: SIM115 (handed to the child)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=logf, env=env, start_new_session=True)
        finally:
            logf.close()
        assert proc.stdout is not None
        deadline = time.monotonic() + self.cfg.ready_timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            r, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                break
            line += chunk
        proc.stdout.close()
        if line.strip() != b"READY":
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            err = (d / "sf.log").read_bytes()[-2000:].decode(errors="replace").strip()
            last = err.splitlines()[-1] if err else _exit_reason(proc.returncode)
            raise RpcError("application", "operation-failed",
                           f"instance {inst.name}: the function did not start: {last}")
        inst.proc, inst.pid = proc, proc.pid
        inst.pid_start = _proc_start(proc.pid)
        inst.started = datetime.now(UTC)
        inst.last_error = ""
        inst.expected_exit = False
        self._watch(inst)

    def _watch(self, inst: Instance) -> None:
        if self.loop is None:
            return
        try:
            inst.pidfd = os.pidfd_open(inst.pid)
        except ProcessLookupError:
            self.loop.call_soon(self._on_exit, inst.name, inst.pid)
            return
        self.loop.add_reader(inst.pidfd, self._on_exit, inst.name, inst.pid)

    def _unwatch(self, inst: Instance) -> None:
        if inst.pidfd >= 0:
            if self.loop is not None:
                self.loop.remove_reader(inst.pidfd)
            os.close(inst.pidfd)
            inst.pidfd = -1

    def _on_exit(self, name: str, pid: int) -> None:
        inst = self.instances.get(name)
        if inst is None or inst.pid != pid:
            return
        self._unwatch(inst)
        rc = inst.proc.wait() if inst.proc is not None else None
        if inst.expected_exit:
            return
        inst.state = FAILED
        inst.last_error = _exit_reason(rc)
        log.warning("instance %s: %s", name, inst.last_error)
        self.journal.put(name, inst.journal_entry())
        self.notify(xmlio.instance_failed(name, inst.type, inst.last_error))
        self.on_change(inst, "failed")
        if self.cfg.auto_restart and self.loop is not None:
            now = time.monotonic()
            recent = self._auto.setdefault(name, [])
            recent[:] = [t for t in recent if now - t < 60.0]
            if len(recent) < self.cfg.restart_limit:
                recent.append(now)
                self.loop.call_later(1.0, self._auto_restart, name, pid)
            else:
                log.error("instance %s failed %d times within a minute: left failed", name,
                          len(recent) + 1)

    def _auto_restart(self, name: str, pid: int) -> None:
        inst = self.instances.get(name)
        if inst is None or inst.state != FAILED or inst.pid != pid:
            return  # removed or restarted by hand meanwhile
        try:
            self.restart(name)
            log.info("instance %s restarted automatically", name)
        except RpcError as exc:
            log.error("instance %s: automatic restart failed: %s", name, exc.message)

    def _stop_process(self, inst: Instance) -> None:
        inst.expected_exit = True
        self._unwatch(inst)
        if inst.pid and _proc_start(inst.pid) == inst.pid_start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(inst.pid, signal.SIGTERM)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and _proc_start(inst.pid) == inst.pid_start:
                if inst.proc is not None and inst.proc.poll() is not None:
                    break
                time.sleep(0.01)
            with contextlib.suppress(ProcessLookupError):
                if _proc_start(inst.pid) == inst.pid_start:
                    os.kill(inst.pid, signal.SIGKILL)
        if inst.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                inst.proc.wait(2)
            inst.proc = None

    def _destroy(self, inst: Instance) -> None:
        plumbing.destroy(inst.netns, inst.to_sf, inst.from_sf, self.cfg.host_netns)
        shutil.rmtree(self._inst_dir(inst), ignore_errors=True)

    def _control(self, inst: Instance, req: dict[str, Any], timeout: float = 3.0
                 ) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self._inst_dir(inst) / "ctl.sock"))
            s.sendall(json.dumps(req).encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                buf += chunk
        return dict(json.loads(buf.decode()))

    # -- reports from the processes -----------------------------------------------------------

    def _datagrams(self, sock: socket.socket) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return out
            try:
                msg = json.loads(data)
            except ValueError:
                log.warning("dropping a report that is not JSON")
                continue
            if isinstance(msg, dict) and msg.get("instance") in self.instances:
                out.append(msg)

    def _on_result(self, sock: socket.socket) -> None:
        for msg in self._datagrams(sock):
            self.notify(xmlio.inspection_alert(msg))

    def _on_load(self, sock: socket.socket) -> None:
        for msg in self._datagrams(sock):
            inst = self.instances[msg["instance"]]
            inst.load = msg
            self.notify(xmlio.instance_load(inst.name, msg))
            self.on_change(inst, "load")


def _crash_point(where: str) -> None:
    """Fault injection for the crash-recovery tests: I2NSF_DMS_CRASH_AT=<where> (or =@FILE, a
    file naming the point, read each time) makes the DMS die there as a SIGKILL would (no
    clean-up runs)."""
    at = os.environ.get("I2NSF_DMS_CRASH_AT")
    if at and at.startswith("@"):
        try:
            at = Path(at[1:]).read_text().strip()
        except OSError:
            return
    if at == where:
        os._exit(137)
