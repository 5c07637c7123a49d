"""A real DMS daemon (`python -m nsf_agent.dms`) for tests, with its host-side links in the
sflab host namespace, reached by ncclient over SSH; and a real netconf_core server serving
i2nsf-sfc-catalog that records what the DMS registers (the controller's side is not needed to
test the DMS's half of the interface)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ncclient.transport.session as nc_session
from lxml import etree
from ncclient import manager
from sflab import ROOT, Lab

from netconf_core.auth import User, UserDb, hash_password, load_or_create_host_key
from netconf_core.errors import RpcError
from netconf_core.features import set_features
from netconf_core.polling import wait_until
from netconf_core.schema import YangSchema
from netconf_core.server import NetconfServer, ServerConfig
from netconf_core.ssh import SshConfig, SshTransport
from netconf_core.yang_context import create_context
from nsf_agent.agent import NETCONF_FEATURES, PROTOCOL_MODULES
from nsf_agent.sadb import parse_rpc_input

nc_session.TICK = 0.001
PASSWORD = "dms-test-pw"
DMS_NS = "urn:i2nsf-sdn:yang:i2nsf-dms"
CAT_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"


def q(name: str, ns: str = DMS_NS) -> str:
    return f"{{{ns}}}{name}"


class DmsProcess:
    def __init__(self, lab: Lab, state: Path, *, max_instances: int = 4,
                 controller: str = "", env: dict[str, str] | None = None,
                 auto_restart: bool = False) -> None:
        self.lab = lab
        self.state = state
        self.prefix = f"sfd{lab.tag}-"
        state.mkdir(parents=True, exist_ok=True)
        self.cfg = state / "dms.toml"
        self.cfg.write_text(f"""
[server]
host = "127.0.0.1"
port = 0
state_dir = "{state}"
[dms]
name = "dms-{lab.tag}"
host = "agent-{lab.tag}"
host_netns = "{lab.host}"
locator = "192.0.2.1"
netns_prefix = "{self.prefix}"
max_instances = {max_instances}
load_interval = 0.2
auto_restart = {"true" if auto_restart else "false"}
{controller}
[[users]]
name = "admin"
password_hash = "{hash_password(PASSWORD)}"
""")
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> DmsProcess:
        ready = self.state / "ready"
        if ready.exists():
            ready.unlink()
        env = {**os.environ, "PYTHONPATH": str(ROOT), **self.env}
        self.log = open(self.state / "dms.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nsf_agent.dms", "-c", str(self.cfg), "--ready-file",
             str(ready), "--log-level", "DEBUG"], env=env, stdout=self.log, stderr=self.log)
        wait_until(lambda: ready.exists() or self.proc.poll() is not None, 30, "DMS ready",
                   interval=0.01)
        if not ready.exists():
            raise RuntimeError("DMS did not start: " + (self.state / "dms.log").read_text())
        self.port = int(ready.read_text())
        return self

    def connect(self) -> manager.Manager:
        return manager.connect(host="127.0.0.1", port=self.port, username="admin",
                               password=PASSWORD, hostkey_verify=False, allow_agent=False,
                               look_for_keys=False, timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def cleanup(self) -> None:
        """Whatever a failed test left of this DMS's instances (processes included)."""
        from nsf_agent.dms import plumbing

        for ns in self.namespaces():
            plumbing.destroy(ns, None, None)

    def namespaces(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir("/run/netns") if n.startswith(self.prefix))
        except FileNotFoundError:
            return []


def rpc(m: manager.Manager, xml: str) -> etree._Element:
    reply = m.dispatch(etree.fromstring(xml))
    return etree.fromstring(reply.xml.encode())


def create_xml(name: str, sf_type: str, body: str = "", to_sf: str = "",
               from_sf: str = "", report: str = "") -> str:
    extra = (f"<to-sf>{to_sf}</to-sf>" if to_sf else "") + (
        f"<from-sf>{from_sf}</from-sf>" if from_sf else "") + (
        f"<report-socket>{report}</report-socket>" if report else "")
    return (f'<create-instance xmlns="{DMS_NS}"><name>{name}</name><type>{sf_type}</type>'
            f"{extra}{body}</create-instance>")


def dms_state(m: manager.Manager) -> etree._Element:
    reply = m.get(filter=("subtree", f'<dms xmlns="{DMS_NS}"/>'))
    root = etree.fromstring(reply.xml.encode())
    found = root.find(f".//{q('dms')}")
    assert found is not None
    return found


def instance_state(m: manager.Manager, name: str) -> dict[str, str]:
    for inst in dms_state(m).findall(q("instance")):
        if inst.findtext(q("name")) == name:
            return {etree.QName(c).localname: c.text or "" for c in inst if len(c) == 0}
    return {}


class CatalogServer:
    """A netconf_core server with i2nsf-sfc-catalog, recording valid calls."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.calls: list[tuple[str, etree._Element]] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.key_path = state / "ssh_host_ed25519_key"
        key = load_or_create_host_key(self.key_path)
        self.host_key = key.export_public_key("openssh").decode().split()
        self.host_key_line = " ".join(self.host_key[:2])
        self.fail_register: str | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def _handler(self, op_name: str):  # type: ignore[no-untyped-def]
        def handle(srv: NetconfServer, sess: Any, op: etree._Element) -> None:
            inp = parse_rpc_input(srv, op)  # validated against i2nsf-sfc-catalog
            if op_name == "register-instance" and self.fail_register:
                raise RpcError("application", "data-exists", self.fail_register)
            with self.lock:
                self.calls.append((op_name, inp))
        return handle

    def start(self) -> CatalogServer:
        self._thread.start()

        async def go() -> int:
            ctx = create_context([*PROTOCOL_MODULES, "i2nsf-sfc-catalog"])
            set_features(ctx, "ietf-netconf", list(NETCONF_FEATURES))
            srv = NetconfServer(YangSchema(ctx), ServerConfig())
            srv.bind_loop(asyncio.get_running_loop())
            for op in ("register-instance", "unregister-instance", "report-load"):
                srv.register_rpc(CAT_NS, op, self._handler(op))
            from netconf_core.datastore import Datastores

            srv.attach(Datastores(srv.schema, [], self.state / "nc"))
            self.ssh = SshTransport(srv, UserDb([User("dms", hash_password("cat-pw"))]),
                                    SshConfig(host="127.0.0.1", port=0,
                                              host_key_path=self.key_path))
            await self.ssh.start()
            return self.ssh.port

        self.port = asyncio.run_coroutine_threadsafe(go(), self.loop).result(30)
        (self.state / "cat.pw").write_text("cat-pw\n")
        return self

    def controller_section(self, host_key: str | None = None) -> str:
        return f"""[controller]
address = "127.0.0.1"
port = {self.port}
username = "dms"
password_file = "{self.state / 'cat.pw'}"
host_key = "{host_key or self.host_key_line}"
"""

    def named(self, op: str) -> list[etree._Element]:
        with self.lock:
            return [inp for o, inp in self.calls if o == op]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.ssh.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def link_exists(ns: str, name: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "show", "dev", name],
                          capture_output=True).returncode == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is gone for this purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def until(cond: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    return wait_until(cond, timeout, what, interval=0.01)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
