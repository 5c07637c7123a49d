"""The agent as a user runs it: `i2nsf-agent run` inside a network namespace with the xfrm
data plane, driven by ncclient over SSH (host key verified). RFC 9061 SPD entries reach the
kernel; SAs on a kernel without ESP fail cleanly; a SIGKILLed agent reconciles on restart."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager
from ncclient.operations.rpc import RPCError
from ncharness import wait_for

from netconf_core.auth import hash_password
from nsf_agent.appliers.xfrm import PRIORITY_BASE
from nsf_agent.xfrm import probe_esp
from nsf_agent.xfrm.iptext import ip_xfrm, parse_policies

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to run an agent in a network namespace",
)

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc9061"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{IKELESS}}}"
PASSWORD = "agent-pw-" + secrets.token_hex(4)


def socket_in_netns(netns: str, port: int) -> socket.socket:
    """A TCP connection to 127.0.0.1:port made inside `netns` (the agent listens there)."""
    out: dict[str, object] = {}

    def work() -> None:
        from pyroute2 import netns as pnetns

        try:
            pnetns.setns(netns)
            out["s"] = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError as exc:
            out["e"] = exc

    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]  # type: ignore[misc]
    return out["s"]  # type: ignore[return-value]


class NetnsAgent:
    def __init__(self, netns: str, state: Path) -> None:
        self.netns, self.state = netns, state
        self.port = 18300 + secrets.randbelow(1000)
        self.cfg = state.parent / f"{state.name}.toml"
        self.cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nstate_dir = "{state}"\n'
            f'[dataplane]\nappliers = ["xfrm"]\n'
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(PASSWORD)}"\n'
        )
        self.log = state.parent / f"{state.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "nsf_agent.cli",
                 "run", "-c", str(self.cfg)], stdout=log, stderr=log)
        wait_for(self._listening, 20, "the agent to listen")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited: {self.log.read_text()[-2000:]}")
        try:
            socket_in_netns(self.netns, self.port).close()
            return True
        except OSError:
            return False

    def connect(self) -> manager.Manager:
        """ncclient with the agent's host key pinned (as the controller does)."""
        import asyncssh

        key = asyncssh.read_private_key(str(self.state / "ssh_host_ed25519_key"))
        pub = key.export_public_key().decode().split()
        return manager.connect(
            host="127.0.0.1", port=self.port, username="admin", password=PASSWORD,
            sock=socket_in_netns(self.netns, self.port), hostkey_verify=True,
            hostkey_b64=pub[1], allow_agent=False, look_for_keys=False, timeout=30,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[NetnsAgent]:
    import ncclient.transport.session as nc_session

    nc_session.TICK = 0.001
    ns = f"i2g-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    a = NetnsAgent(ns, tmp_path / "agent")
    try:
        a.start()
        yield a
    finally:
        a.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False)


def example(with_sad: bool = False) -> str:
    root = etree.parse(str(DATA / "ikeless-g2g-gw1.xml")).getroot()
    if not with_sad:
        root.remove(root.find(Q + "sad"))
    return ('<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
            + etree.tostring(root).decode() + "</config>")


def policies(ns: str) -> list[tuple]:
    return sorted((p["dir"], p["sel"]["src"], p["sel"]["dst"], p["priority"], p["action"])
                  for p in parse_policies(ip_xfrm(ns, "policy")))


EXPECTED = sorted([
    ("in", "203.0.113.0/24", "192.0.2.0/24", PRIORITY_BASE, "block"),
    ("fwd", "203.0.113.0/24", "192.0.2.0/24", PRIORITY_BASE, "block"),
    ("in", "203.0.113.0/24", "192.0.2.0/24", PRIORITY_BASE + 1, "allow"),
    ("fwd", "203.0.113.0/24", "192.0.2.0/24", PRIORITY_BASE + 1, "allow"),
    ("out", "192.0.2.0/24", "203.0.113.0/24", PRIORITY_BASE + 2, "allow"),
])


def test_spd_over_netconf_into_the_kernel(agent: NetnsAgent) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=example())
        assert policies(agent.netns) == EXPECTED
        # Over the candidate with a commit, the same result after a delete-all.
        m.edit_config(target="candidate", config=(
            '<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
            'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0">'
            f'<ipsec-ikeless xmlns="{IKELESS}" nc:operation="remove"/></config>'))
        assert policies(agent.netns) == EXPECTED  # not committed yet
        m.commit()
        assert policies(agent.netns) == []


def test_sa_without_esp_is_a_clean_rpc_error(agent: NetnsAgent) -> None:
    if probe_esp(agent.netns) is None:
        pytest.skip("this kernel has ESP; tests/kernel covers SAs")
    with agent.connect() as m:
        m.edit_config(target="running", config=example())
        before = m.get_config("running").data_xml
        with pytest.raises(RPCError) as ei:
            m.edit_config(target="running", config=example(with_sad=True))
        assert "kernel lacks" in str(ei.value)
        assert m.get_config("running").data_xml == before
        assert policies(agent.netns) == EXPECTED
        assert "spi" not in ip_xfrm(agent.netns, "state")


def test_sigkill_and_restart_reconciles(agent: NetnsAgent) -> None:
    with agent.connect() as m:
        m.edit_config(target="running", config=example())
    agent.kill()
    subprocess.run(["ip", "-n", agent.netns, "xfrm", "policy", "flush"], check=True)
    subprocess.run(["ip", "-n", agent.netns, "xfrm", "policy", "add", "src", "10.7.0.0/16",
                    "dst", "10.6.0.0/16", "dir", "out", "priority", "3"], check=True)
    agent.start()
    wait_for(lambda: [p for p in policies(agent.netns) if p[3] >= PRIORITY_BASE] == EXPECTED,
             10, "the restarted agent to reinstall its policies")
    assert [p for p in policies(agent.netns) if p[3] < PRIORITY_BASE] == [
        ("out", "10.7.0.0/16", "10.6.0.0/16", 3, "allow")]
