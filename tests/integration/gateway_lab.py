"""A gateway-to-gateway lab with real daemons, for controller tests and benchmarks.

Topology (network namespaces, names prefixed per run):

    hostA ── gwA ══ gwB ── hostB          data plane (nsf_agent.userspace.lab.Lab)
              │      │
              └ mgmt ┘                     management: controller ⇄ agents (SSH, NETCONF)

With `nat=True` gwB sits behind a NAT namespace (seed section 6, NAT traversal):

    hostA ── gwA ══ natB ── gwB ── hostB   natB masquerades gwB's private address
                                           (NAT_PRIVATE_B) to NAT_PUBLIC_B; ESP-in-UDP
                                           from gwB's port 4500 leaves from `nat_port`

natB is a filtering NAT (nftables): from outside, only replies to what gwB sent get in.
The inventory then gives gwB its private data-plane address and a `nat` container with the
public address and port.

Agents run as `i2nsf-agent run` subprocesses inside gwA/gwB (userspace ESP data plane), the
controller as `i2nsf-controller serve` inside mgmt, each with its own log file. Host keys are
generated beforehand so the inventory can pin them; the controller logs in to the agents
with its own key. `destroy()` kills every process left in the lab's namespaces (the
userspace data path outlives its agent by design) and removes the namespaces.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
from pyroute2 import IPRoute, NetNS, netns

from netconf_core.auth import hash_password
from nsf_agent.userspace.lab import (
    GW_A,
    GW_B,
    NET_A,
    NET_B,
    Lab,
    in_netns,
    sysctl,
    wait_until,
)

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
CTL_PORT = 8300
AGENT_PORT = 830
ADMIN_PASSWORD = "lab-admin-pw"
METRICS_PORT = 9109  # /metrics of each daemon (when GatewayLab.metrics), in its namespace
MGMT = {"a": ("10.254.1.1", "10.254.1.2"), "b": ("10.254.2.1", "10.254.2.2")}
NAT_PUBLIC_B = "192.0.2.20"  # natB's outside address, on the gateway link
NAT_INSIDE_B = "10.77.0.1"  # natB's inside address (namespace-local, never routed out)
NAT_PRIVATE_B = "10.77.0.2"  # gwB's data-plane address behind natB
NATT_PORT = 4500


def nat_ruleset(inside: str, outside: str, private: str, port: int) -> str:
    """nftables for natB: masquerade gwB (its ESP-in-UDP to `port`), and like a home router
    let in from outside only what belongs to connections gwB opened."""
    return f"""
table ip i2nsf_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{outside}" ip saddr {private} udp sport {NATT_PORT} masquerade to :{port}
        oifname "{outside}" ip saddr {private} masquerade
    }}
    chain input {{
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname {{ "lo", "{inside}" }} accept
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "{inside}" oifname "{outside}" accept
    }}
}}
"""


def write_key(path: Path) -> str:
    """A new ed25519 private key at `path` (0600); returns the public key line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key.export_public_key().decode().strip()


@dataclass
class Daemon:
    name: str
    ns: str
    cmd: list[str]
    log_path: Path
    ready_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self.ready_file.unlink(missing_ok=True)
        logf = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *self.cmd],
                                     stdout=logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        logf.close()
        wait_until(lambda: self.ready_file.exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                   timeout, f"{self.name} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see "
                               f"{self.log_path}:\n{self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

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
class GatewayLab:
    prefix: str
    workdir: Path
    soft: int = 3
    hard: int = 8
    ctl_options: dict[str, Any] = field(default_factory=dict)
    appliers: tuple[str, ...] = ("userspace",)  # ("userspace", "ike") for the IKE case
    nat: bool = False  # gwB behind the NAT namespace natB
    nat_port: int = NATT_PORT  # the public port natB maps gwB's UDP 4500 to
    metrics: bool = False  # Prometheus /metrics: agents on MGMT[side][1], controller on lo
    lab: Lab = field(init=False)
    agents: dict[str, Daemon] = field(default_factory=dict)
    controller: Daemon | None = None
    host_keys: dict[str, str] = field(default_factory=dict)
    client_pub: str = ""

    def __post_init__(self) -> None:
        self.lab = Lab(self.prefix)

    @property
    def mgmt(self) -> str:
        return f"{self.prefix}-mg"

    @property
    def nat_ns(self) -> str:
        return f"{self.prefix}-nb"

    def gw_ns(self, side: str) -> str:
        return self.lab.gw_a if side == "a" else self.lab.gw_b

    def data_plane_address(self, side: str) -> str:
        if side == "b" and self.nat:
            return NAT_PRIVATE_B
        return GW_A if side == "a" else GW_B

    # ---- topology ---------------------------------------------------------------------------

    def build(self) -> None:
        self.lab.build(gro=False)
        if self.nat:
            self._build_nat()
        netns.create(self.mgmt)
        self.lab.namespaces.insert(0, self.mgmt)  # Lab.destroy removes it too
        with NetNS(self.mgmt) as nsr:
            nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        with IPRoute() as ipr:
            for side in ("a", "b"):
                m_addr, g_addr = MGMT[side]
                t1, t2 = f"{self.prefix[:8]}m{side}1", f"{self.prefix[:8]}m{side}2"
                ipr.link("add", ifname=t1, kind="veth", peer=t2)
                for tmp, ns, name, addr in ((t1, self.mgmt, f"gw{side}", m_addr),
                                            (t2, self.gw_ns(side), "mgmt", g_addr)):
                    ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
                    with NetNS(ns) as nsr:
                        j = nsr.link_lookup(ifname=tmp)[0]
                        nsr.link("set", index=j, ifname=name)
                        nsr.addr("add", index=j, address=addr, prefixlen=30)
                        nsr.link("set", index=j, state="up")

    def _build_nat(self) -> None:
        """Put natB between the gateway link and gwB: gwB's link end moves into natB (as
        `out`, the public address) and a new veth pair joins natB (`in`) and gwB (`gba`,
        the private address, default route through natB)."""
        nat, gw_b = self.nat_ns, self.lab.gw_b
        netns.create(nat)
        self.lab.namespaces.append(nat)  # Lab.destroy removes it too
        with NetNS(gw_b) as nsr:
            j = nsr.link_lookup(ifname="gba")[0]
            nsr.link("set", index=j, state="down")
            nsr.link("set", index=j, net_ns_fd=nat)  # addresses stay behind: none move
        tmp1, tmp2 = f"{self.prefix[:8]}n1", f"{self.prefix[:8]}n2"
        with IPRoute() as ipr:
            ipr.link("add", ifname=tmp1, kind="veth", peer=tmp2)
            for tmp, ns in ((tmp1, nat), (tmp2, gw_b)):
                ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
        for ns, old, new, addr in ((nat, "gba", "out", NAT_PUBLIC_B), (nat, tmp1, "in",
                                                                          NAT_INSIDE_B),
                                   (gw_b, tmp2, "gba", NAT_PRIVATE_B)):
            with NetNS(ns) as nsr:
                j = nsr.link_lookup(ifname=old)[0]
                nsr.link("set", index=j, ifname=new)
                nsr.addr("add", index=j, address=addr,
                         prefixlen=24 if addr == NAT_PUBLIC_B else 30)
                nsr.link("set", index=j, state="up")
                nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        with NetNS(gw_b) as nsr:
            nsr.route("replace", dst="0.0.0.0/0", gateway=NAT_INSIDE_B)
        sysctl(nat, "net.ipv4.ip_forward", "1")
        sysctl(nat, "net.ipv6.conf.all.disable_ipv6", "1")
        r = subprocess.run(["ip", "netns", "exec", nat, "nft", "-f", "-"], text=True,
                           input=nat_ruleset("in", "out", NAT_PRIVATE_B, self.nat_port),
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"nft in {nat}: {r.stderr.strip()}")

    # ---- daemons ----------------------------------------------------------------------------

    def agent_state(self, side: str) -> Path:
        return self.workdir / f"agent-{side}"

    def setup_agent(self, side: str) -> None:
        st = self.agent_state(side)
        st.mkdir(parents=True, exist_ok=True)
        os.chmod(st, 0o700)
        key = st / "ssh_host_ed25519_key"
        if not key.exists():
            self.host_keys[side] = write_key(key)
        else:
            self.host_keys[side] = asyncssh.read_private_key(str(key)).export_public_key(
            ).decode().strip()
        cfg = self.workdir / f"agent-{side}.toml"
        cfg.write_text(
            f'[server]\nhost = "{MGMT[side][1]}"\nport = {AGENT_PORT}\nstate_dir = "{st}"\n'
            'confirm_timeout = 60\n\n[dataplane]\nappliers = ['
            + ", ".join(f'"{a}"' for a in self.appliers) + ']\n\n'
            f'[[users]]\nname = "controller"\nauthorized_keys = ["{self.client_pub}"]\n'
            + (f'\n[metrics]\nhost = "{MGMT[side][1]}"\nport = {METRICS_PORT}\n'
               if self.metrics else ""))
        self.agents[side] = Daemon(
            f"agent {side}", self.gw_ns(side),
            [str(BIN / "i2nsf-agent"), "run", "-c", str(cfg), "--ready-file",
             str(self.workdir / f"agent-{side}.ready")],
            self.workdir / f"agent-{side}.log", self.workdir / f"agent-{side}.ready")

    def setup_controller(self) -> None:
        st = self.workdir / "controller"
        opts = {"rekey_grace": 1.0, "reconnect_min": 0.2, "reconnect_max": 2.0,
                "retry_max": 2.0, "confirm_timeout": 30, **self.ctl_options}
        body = "\n".join(f"{k} = {v}" for k, v in opts.items())
        cfg = self.workdir / "controller.toml"
        cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {CTL_PORT}\nstate_dir = "{st}"\n\n'
            f"[controller]\n{body}\n\n"
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(ADMIN_PASSWORD)}"\n'
            + (f'\n[metrics]\nhost = "127.0.0.1"\nport = {METRICS_PORT}\n'
               if self.metrics else ""))
        self.controller = Daemon(
            "controller", self.mgmt,
            [str(BIN / "i2nsf-controller"), "serve", "-c", str(cfg), "--ready-file",
             str(self.workdir / "controller.ready"), "--log-level", "DEBUG"],
            self.workdir / "controller.log", self.workdir / "controller.ready")

    def start(self) -> None:
        """Build everything and start both agents and the controller."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.client_pub = write_key(self.workdir / "controller_id_ed25519")
        self.build()
        for side in ("a", "b"):
            self.setup_agent(side)
            self.agents[side].start()
        self.setup_controller()
        assert self.controller is not None
        self.controller.start()

    def destroy(self) -> None:
        daemons = [*self.agents.values(), *([self.controller] if self.controller else [])]
        for d in daemons:
            with contextlib.suppress(Exception):
                d.stop(5)
        # Whatever is left in our namespaces (the data path processes) we started too.
        for ns in list(self.lab.namespaces):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                     text=True, timeout=10).stdout.split()
                for pid in out:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
        self.lab.destroy()

    # ---- talking to the controller ---------------------------------------------------------

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`i2nsf-controller <args>` inside the management namespace."""
        env = {**os.environ, "I2NSF_PASSWORD": ADMIN_PASSWORD,
               # the CLI verifies the controller's host key before sending the password
               "I2NSF_CONTROLLER_HOST_KEY_FILE": str(self.workdir / "controller" /
                                                     "ssh_host_ed25519_key.pub")}
        return subprocess.run(
            ["ip", "netns", "exec", self.mgmt, str(BIN / "i2nsf-controller"),
             "--port", str(CTL_PORT), "--user", "admin", *args],
            capture_output=True, text=True, timeout=timeout, env=env)

    def policy_state(self, name: str) -> Any:
        """The controller's operational state of policy `name` (an lxml element), or None."""
        from lxml import etree

        fp = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
        m = self.connect()
        try:
            reply = m.get(filter=("subtree", f'<flow-protection-state xmlns="{fp}"/>'))
            data = etree.fromstring(reply.xml.encode())
        finally:
            m.close_session()
        for p in data.iter(f"{{{fp}}}policy"):
            if p.findtext(f"{{{fp}}}name") == name:
                return p
        return None

    def connect(self, side: str | None = None) -> Any:
        """An ncclient session to the controller (side None) or to an agent, opened from
        inside the management namespace."""
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001
        with in_netns(self.mgmt):
            if side is None:
                return manager.connect(host="127.0.0.1", port=CTL_PORT, username="admin",
                                       password=ADMIN_PASSWORD, hostkey_verify=False,
                                       allow_agent=False, look_for_keys=False, timeout=30)
            return manager.connect(host=MGMT[side][1], port=AGENT_PORT, username="controller",
                                   key_filename=str(self.workdir / "controller_id_ed25519"),
                                   hostkey_verify=False, allow_agent=False,
                                   look_for_keys=False, timeout=30)

    def inventory_xml(self, sides: tuple[str, ...] = ("a", "b"), profile: str = "lab",
                      on_demand: bool = False, policy: str | None = "g2g") -> str:
        """`<config>` with both NSFs, a crypto profile with the lab's lifetimes and (unless
        `policy` is None) one policy between them."""
        from controller.core.inventory import NS

        key = self.workdir / "controller_id_ed25519"
        nets = {"a": (self.data_plane_address("a"), NET_A),
                "b": (self.data_plane_address("b"), NET_B)}
        nat = {"a": "", "b": (f"<nat><public-address>{NAT_PUBLIC_B}</public-address>"
                              f"<public-port>{self.nat_port}</public-port></nat>"
                              if self.nat else "")}
        nsfs = "".join(
            f"<nsf><name>gw{s}</name><management><address>{MGMT[s][1]}</address>"
            f"<port>{AGENT_PORT}</port><username>controller</username>"
            f"<private-key-file>{key}</private-key-file>"
            f"<host-key>{self.host_keys[s]}</host-key></management>"
            f"<data-plane-address>{nets[s][0]}</data-plane-address>"
            f"<protected-prefix>{nets[s][1]}</protected-prefix>{nat[s]}"
            "<dataplane>userspace</dataplane></nsf>" for s in sides)
        prof = (f"<crypto-profile><name>{profile}</name><lifetime-soft><time>{self.soft}</time>"
                f"</lifetime-soft><lifetime-hard><time>{self.hard}</time></lifetime-hard>"
                "</crypto-profile>")
        pol = ""
        if policy:
            od = "<ikeless><on-demand>true</on-demand></ikeless>" if on_demand else ""
            pol = (f"<policies><policy><name>{policy}</name><endpoint-a><nsf>gwa</nsf>"
                   "</endpoint-a><endpoint-b><nsf>gwb</nsf></endpoint-b>"
                   f"<crypto-profile>{profile}</crypto-profile>{od}</policy></policies>")
        return (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                f'<flow-protection xmlns="{NS}"><nsfs>{nsfs}</nsfs><crypto-profiles>{prof}'
                f"</crypto-profiles>{pol}</flow-protection></config>")


def poll(pred: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll with a deadline (never sleep-to-wait)."""
    return wait_until(pred, timeout, what, interval)


@contextlib.contextmanager
def gateway_lab(tag: str, **kw: Any) -> Iterator[GatewayLab]:
    """A started GatewayLab in a fresh work directory, with the two NSFs (and no policy) in
    the controller's inventory; always torn down."""
    import shutil
    import tempfile

    from nsf_agent.userspace.lab import unique_prefix

    work = Path(tempfile.mkdtemp(prefix=f"i2nsf-{tag}-"))
    lab = GatewayLab(unique_prefix(tag), work, **kw)
    try:
        lab.start()
        m = lab.connect()
        try:
            m.edit_config(target="running", config=lab.inventory_xml(policy=None))
        finally:
            m.close_session()
        yield lab
    finally:
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)
