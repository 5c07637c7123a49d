"""The SFC lab with the controller in charge: real agents (sfc applier, userspace data path)
in the classifier/SFF namespaces, the controller in a management namespace, SF instances
behind F's proxies, registered with the controller's catalog over NETCONF.

    hostA ── C (classifier+SFF) ── F (SFF + proxies ─ SF namespaces) ── E (SFF) ── hostB
               │                    │                                   │
               └──────────────── mgmt (controller) ─────────────────────┘

Used by the SFC controller integration tests, bench/sfc_controller.py and the SFC demo.
Everything is torn down by `destroy()` (processes in our namespaces, the namespaces).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from pyroute2 import netns

from netconf_core.auth import hash_password
from nsf_agent.sfc import lab as dp
from nsf_agent.userspace.lab import in_netns, sysctl, unique_prefix, wait_until

BIN = Path(sys.executable).parent
CTL_PORT = 8300
AGENT_PORT = 830
ADMIN_PASSWORD = "sfc-lab-admin-pw"
NODES = ("c", "f", "e")
MGMT = {"c": ("10.254.11.1", "10.254.11.2"), "f": ("10.254.12.1", "10.254.12.2"),
        "e": ("10.254.13.1", "10.254.13.2")}
LOCATOR = {"c": dp.C_F, "f": dp.F_C, "e": dp.E_F}
SFCP = "urn:i2nsf-sdn:yang:i2nsf-sfc-policy"
CAT = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"
FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"


def write_key(path: Path) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return str(key.export_public_key().decode().strip())


@dataclass
class Daemon:
    name: str
    ns: str
    cmd: list[str]
    log_path: Path
    ready_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait_ready(timeout)

    def spawn(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.cmd],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc is not None
        wait_until(lambda: self.ready_file.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   timeout, f"{self.name} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see "
                               f"{self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout)

    def kill(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)


@dataclass
class SfcControllerLab:
    workdir: Path
    sfs: int = 1
    net: dp.SfcLab = field(init=False)
    agents: dict[str, Daemon] = field(default_factory=dict)
    controller: Daemon | None = None
    host_keys: dict[str, str] = field(default_factory=dict)
    client_pub: str = ""
    mgmt: str = ""
    extra_namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.net = dp.SfcLab.unique(self.sfs, "i2sc")
        self.mgmt = self.net.ns("mg")

    def ns_of(self, node: str) -> str:
        return {"c": self.net.c, "f": self.net.f, "e": self.net.e}[node]

    # ---- topology ---------------------------------------------------------------------------

    def build(self) -> None:
        self.net.build()
        netns.create(self.mgmt)
        self.net.namespaces.append(self.mgmt)
        subprocess.run(["ip", "-n", self.mgmt, "link", "set", "lo", "up"], check=True)
        for node in NODES:
            a, b = MGMT[node]
            tmp = f"{self.net.prefix[:9]}m{node}"
            _ip(None, "link", "add", tmp, "netns", self.mgmt, "type", "veth", "peer", "name",
                "mgmt", "netns", self.ns_of(node))
            _ip(self.mgmt, "link", "set", tmp, "name", f"to-{node}")
            _ip(self.mgmt, "addr", "add", f"{a}/30", "dev", f"to-{node}")
            _ip(self.mgmt, "link", "set", f"to-{node}", "up")
            _ip(self.ns_of(node), "addr", "add", f"{b}/30", "dev", "mgmt")
            _ip(self.ns_of(node), "link", "set", "mgmt", "up")

    # ---- daemons ----------------------------------------------------------------------------

    def agent_state(self, node: str) -> Path:
        return self.workdir / f"agent-{node}"

    def setup_agent(self, node: str) -> None:
        st = self.agent_state(node)
        st.mkdir(parents=True, exist_ok=True)
        os.chmod(st, 0o700)
        key = st / "ssh_host_ed25519_key"
        if not key.exists():
            self.host_keys[node] = write_key(key)
        cfg = self.workdir / f"agent-{node}.toml"
        cfg.write_text(
            f'[server]\nhost = "{MGMT[node][1]}"\nport = {AGENT_PORT}\nstate_dir = "{st}"\n'
            'confirm_timeout = 60\n\n[dataplane]\nappliers = ["sfc"]\n\n'
            f'[[users]]\nname = "controller"\nauthorized_keys = ["{self.client_pub}"]\n')
        self.agents[node] = Daemon(
            f"agent {node}", self.ns_of(node),
            [str(BIN / "i2nsf-agent"), "run", "-c", str(cfg), "--ready-file",
             str(self.workdir / f"agent-{node}.ready")],
            self.workdir / f"agent-{node}.log", self.workdir / f"agent-{node}.ready")

    def setup_controller(self) -> None:
        st = self.workdir / "controller"
        opts = {"reconnect_min": 0.2, "reconnect_max": 2.0, "retry_max": 2.0,
                "confirm_timeout": 30}
        body = "\n".join(f"{k} = {v}" for k, v in opts.items())
        cfg = self.workdir / "controller.toml"
        cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {CTL_PORT}\nstate_dir = "{st}"\n\n'
            f"[controller]\n{body}\n\n"
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(ADMIN_PASSWORD)}"\n')
        self.controller = Daemon(
            "controller", self.mgmt,
            [str(BIN / "i2nsf-controller"), "serve", "-c", str(cfg), "--ready-file",
             str(self.workdir / "controller.ready"), "--log-level", "DEBUG"],
            self.workdir / "controller.log", self.workdir / "controller.ready")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_pub = write_key(self.workdir / "controller_id_ed25519")
        self.build()
        for node in NODES:
            self.setup_agent(node)
        self.setup_controller()
        assert self.controller is not None
        # all four daemons start side by side (the controller connects when agents are up)
        daemons = [*self.agents.values(), self.controller]
        for d in daemons:
            d.spawn()
        for d in daemons:
            d.wait_ready(60)

    def destroy(self) -> None:
        daemons = [*self.agents.values(), *([self.controller] if self.controller else [])]
        for d in daemons:  # all told at once, then waited for
            if d.proc is not None and d.proc.poll() is None:
                with contextlib.suppress(OSError):
                    d.proc.terminate()
        for d in daemons:
            with contextlib.suppress(Exception):
                d.stop(5)
        for ns in [*self.net.namespaces, *self.extra_namespaces]:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                     text=True, timeout=10).stdout.split()
                for pid in out:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        for ns in self.extra_namespaces:
            with contextlib.suppress(OSError):
                netns.remove(ns)
        self.net.destroy()

    # ---- talking to the controller ----------------------------------------------------------

    def connect(self) -> Any:
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001
        with in_netns(self.mgmt):
            return manager.connect(host="127.0.0.1", port=CTL_PORT, username="admin",
                                   password=ADMIN_PASSWORD, hostkey_verify=False,
                                   allow_agent=False, look_for_keys=False, timeout=30)

    def connect_agent(self, node: str) -> Any:
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001
        with in_netns(self.mgmt):
            return manager.connect(host=MGMT[node][1], port=AGENT_PORT, username="controller",
                                   key_filename=str(self.workdir / "controller_id_ed25519"),
                                   hostkey_verify=False, allow_agent=False,
                                   look_for_keys=False, timeout=30)

    def inventory_xml(self) -> str:
        key = self.workdir / "controller_id_ed25519"
        nsfs = "".join(
            f"<nsf><name>{n}</name><management><address>{MGMT[n][1]}</address>"
            f"<port>{AGENT_PORT}</port><username>controller</username>"
            f"<private-key-file>{key}</private-key-file>"
            f"<host-key>{self.host_keys[n]}</host-key></management>"
            f"<data-plane-address>{LOCATOR[n]}</data-plane-address>"
            "<dataplane>userspace</dataplane></nsf>" for n in NODES)
        return f'<flow-protection xmlns="{FP}"><nsfs>{nsfs}</nsfs></flow-protection>'

    @staticmethod
    def forwarders_xml(egress: bool = True) -> str:
        return (
            f"<forwarders><forwarder><name>c</name><sff-id>1</sff-id>"
            f"<locator>{LOCATOR['c']}</locator><classifier>true</classifier>"
            "<ingress-interface>a</ingress-interface></forwarder>"
            f"<forwarder><name>f</name><sff-id>2</sff-id><locator>{LOCATOR['f']}</locator>"
            + (f"<egress-locator>{LOCATOR['e']}</egress-locator>" if egress else "")
            + "</forwarder>"
            f"<forwarder><name>e</name><sff-id>3</sff-id><locator>{LOCATOR['e']}</locator>"
            "</forwarder></forwarders>")

    def configure(self, m: Any, sfc_body: str, inventory: bool = True,
                  replace: bool = False) -> None:
        op = f' xmlns:nc="{NC}" nc:operation="replace"' if replace else ""
        cfg = (f'<config xmlns="{NC}">' + (self.inventory_xml() if inventory else "")
               + f'<sfc xmlns="{SFCP}"{op}>{sfc_body}</sfc></config>')
        m.edit_config(target="running", config=cfg)

    def wait_sessions(self, m: Any, timeout: float = 20.0) -> None:
        """Until the controller's sessions to the three agents are up."""
        from lxml import etree

        q = f"{{{FP}}}"

        def up() -> bool:
            data = m.get(filter=("subtree", f'<flow-protection xmlns="{FP}"><nsfs/>'
                                 "</flow-protection>")).data_ele
            states = {(n.findtext(q + "name") or ""): n.findtext(f"{q}session/{q}state")
                      for n in data.iter(q + "nsf")}
            return all(states.get(n) == "connected" for n in NODES)

        del etree
        wait_until(up, timeout, "the controller's sessions to the agents")

    def register(self, m: Any, i: int, name: str, sf_type: str, capacity: int = 10000,
                 dms: str = "lab-dms", report_socket: str | None = None) -> None:
        """Register SF namespace `i` (behind F's proxy interfaces i<i>/o<i>) as an instance,
        the way a DMS does (register-instance RPC)."""
        from lxml import etree

        rpc = etree.fromstring(
            f'<register-instance xmlns="{CAT}"><name>{name}</name><type>{sf_type}</type>'
            f"<dms>{dms}</dms><host>f</host><locator><address>{LOCATOR['f']}</address>"
            f"</locator><interfaces><to-sf>i{i}</to-sf><from-sf>o{i}</from-sf>"
            f"<sf-mac>{self.net.sf_mac(i)}</sf-mac></interfaces>"
            + (f"<report-socket>{report_socket}</report-socket>" if report_socket else "")
            + f"<capacity>{capacity}</capacity></register-instance>")
        m.dispatch(rpc)

    def sfc_state(self, m: Any) -> Any:
        from lxml import etree

        reply = m.get(filter=("subtree", f'<sfc-state xmlns="{SFCP}"/>'))
        return etree.fromstring(reply.xml.encode()) if isinstance(reply.xml, str) else (
            reply.data_ele)

    def paths(self, m: Any) -> dict[str, dict[str, str]]:
        """chain name → {spi, status, error}."""
        root = self.sfc_state(m)
        q = f"{{{SFCP}}}"
        out = {}
        for p in root.iter(q + "path"):
            out[p.findtext(q + "chain") or ""] = {
                "spi": p.findtext(q + "spi") or "", "status": p.findtext(q + "status") or "",
                "error": p.findtext(q + "error-message") or ""}
        return out

    def events(self, m: Any) -> list[tuple[str, str]]:
        root = self.sfc_state(m)
        q = f"{{{SFCP}}}"
        return [(e.findtext(q + "kind") or "", e.findtext(q + "detail") or "")
                for e in root.iter(q + "event")]

    def agent_running(self, node: str) -> str:
        m = self.connect_agent(node)
        from lxml import etree

        try:
            reply = m.get_config(source="running", filter=("subtree", f'<sfc xmlns="{dp.NS}"/>'))
            return etree.tostring(reply.data_ele).decode()
        finally:
            m.close_session()

    def steering_counters(self, node: str) -> dict[str, int]:
        """The agent's own counters (get of its `sfc` state): packets per
        'next-function:<type>' and 'reclassify:<result>' entry, and the unknown counters."""
        from lxml import etree

        q = f"{{{dp.NS}}}"
        m = self.connect_agent(node)
        try:
            reply = m.get(filter=("subtree", f'<sfc xmlns="{dp.NS}"><classifier/></sfc>'))
            root = etree.fromstring(reply.xml.encode())
        finally:
            m.close_session()
        out: dict[str, int] = {}
        for tag, key in (("next-function", "sf-type"), ("reclassify", "result")):
            for e in root.iter(q + tag):
                if e.find(q + "statistics") is not None and e.findtext(q + key):
                    out[f"{tag}:{e.findtext(q + key)}"] = int(
                        e.findtext(f"{q}statistics/{q}packets") or 0)
        for leaf in ("next-function-unknown", "reclassify-unknown"):
            for e in root.iter(q + leaf):
                out[leaf] = int(e.text or 0)
        return out

    def proxy_counters(self, node: str) -> dict[str, dict[str, int | str]]:
        """The agent's proxy entries (config and statistics): name → spi, si, to-sf,
        from-sf, to-sf-interface."""
        from lxml import etree

        q = f"{{{dp.NS}}}"
        m = self.connect_agent(node)
        try:
            reply = m.get(filter=("subtree", f'<sfc xmlns="{dp.NS}"><proxies/></sfc>'))
            root = etree.fromstring(reply.xml.encode())
        finally:
            m.close_session()
        out: dict[str, dict[str, int | str]] = {}
        for p in root.iter(q + "proxy"):
            out[p.findtext(q + "name") or ""] = {
                "spi": int(p.findtext(q + "spi") or 0), "si": int(p.findtext(q + "si") or 0),
                "to-sf": int(p.findtext(f"{q}statistics/{q}to-sf") or 0),
                "from-sf": int(p.findtext(f"{q}statistics/{q}from-sf") or 0),
                "to-sf-interface": p.findtext(q + "to-sf-interface") or ""}
        return out


def _ip(ns: str | None, *args: str) -> None:
    subprocess.run(["ip", *(["-n", ns] if ns else []), *args], check=True,
                   capture_output=True, text=True)


def tshark_nsh(pcap: Path) -> list[tuple[str, int, int]]:
    """(inner source, SPI, SI) of every GRE/NSH packet in a capture, decoded by tshark."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "nsh", "-T", "fields", "-e", "ip.src",
         "-e", "nsh.spi", "-e", "nsh.si"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[1]:
            continue
        srcs = parts[0].split(",")
        rows.append((srcs[-1], int(parts[1], 0), int(parts[2], 0)))
    return rows


class Capture:
    """tcpdump on an interface of a namespace, written to a pcap for tshark."""

    def __init__(self, ns: str, ifname: str, path: Path, bpf: str = "ip proto 47") -> None:
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "--immediate-mode", "-i", ifname, "-U", "-w",
             str(path), "-s",
             "256", bpf], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # tcpdump prints "listening on" once the capture is armed
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        buf = b""
        while b"listening on" not in buf and time.monotonic() < deadline:
            chunk = self.proc.stderr.read1(256) if hasattr(self.proc.stderr, "read1") else b""
            if not chunk:
                break
            buf += chunk

    def stop(self) -> Path:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        return self.path


@contextlib.contextmanager
def sfc_controller_lab(sfs: int = 1) -> Iterator[SfcControllerLab]:
    work = Path(tempfile.mkdtemp(prefix="i2nsf-sfcctl-"))
    lab = SfcControllerLab(work, sfs)
    try:
        lab.start()
        yield lab
    finally:
        lab.destroy()
        if not os.environ.get("SFC_LAB_KEEP"):  # keep the logs for a look
            shutil.rmtree(work, ignore_errors=True)


def poll(pred: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    return wait_until(pred, timeout, what, interval)


__all__ = ["Capture", "SfcControllerLab", "poll", "sfc_controller_lab", "sysctl", "tshark_nsh",
           "unique_prefix"]
