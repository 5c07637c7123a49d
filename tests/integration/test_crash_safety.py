"""Issue #13.1: kill -9 of a gateway's agent *and* its userspace data path under a 50/s ping,
restart: the saved running configuration brings the same SPIs and keys back, and no
(SPI, sequence number) — for AES-GCM no IV — may be sent twice. Traffic must be back within
2 s of the agent being ready, and the agent must say it restarted uncleanly and which SAs
lost state (i2nsf-sadb nsf-status, nsf-restarted).

Real processes: gateway A's agent (`python -m nsf_agent.cli run`) in A's namespace, spawning
its data path; gateway B an in-process applier with its own data path. Every ESP packet A
sends is captured on B's side (AF_PACKET) and decrypted with scapy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lxml import etree
from ncclient import manager
from ncharness import PASSWORD, PASSWORD_HASH, wait_for
from test_userspace_applier import KEY_AB, Gateway, side_config

from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent.userspace.client import DatapathClient

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 for network namespaces, TUN and raw sockets",
)

ROOT = Path(__file__).resolve().parents[2]
SADB = "urn:i2nsf-sdn:yang:i2nsf-sadb"
S = f"{{{SADB}}}"
SPI_AB = 0x1001  # A's outbound SA (side_config)


class Capture:
    """Every IPv4 ESP packet from `src` seen in namespace `ns` (AF_PACKET, all links)."""

    def __init__(self, lab, ns: str, src: str) -> None:  # type: ignore[no-untyped-def]
        self.sock = lab.socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.sock.settimeout(0.2)
        self.src = socket.inet_aton(src)
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ip = frame  # SOCK_RAW on a veth: Ethernet header first
            if len(frame) >= 14 and frame[12:14] == b"\x08\x00":
                ip = frame[14:]
            if len(ip) >= 20 and ip[9] == 50 and ip[12:16] == self.src:
                self.packets.append(bytes(ip))

    def stop(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def agent_config(path: Path, state: Path) -> Path:
    path.write_text(f"""[server]
host = "127.0.0.1"
port = 0
state_dir = "{state}"

[dataplane]
appliers = ["userspace"]

[[users]]
name = "admin"
password_hash = "{PASSWORD_HASH}"
""")
    return path


class AgentProc:
    """The agent of gateway A as a real process in A's namespace."""

    def __init__(self, lab, cfg: Path, state: Path) -> None:  # type: ignore[no-untyped-def]
        self.lab, self.cfg, self.state = lab, cfg, state
        self.ready = state.parent / "ready"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> float:
        self.ready.unlink(missing_ok=True)
        self.proc = self.lab.popen(
            self.lab.gw_a,
            [sys.executable, "-m", "nsf_agent.cli", "run", "-c", str(self.cfg),
             "--ready-file", str(self.ready), "--log-level", "INFO"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL, stderr=open(self.state.parent / "agent.log", "ab"),  # noqa: SIM115
        )

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError("agent exited: "
                                     + (self.state.parent / "agent.log").read_text()[-3000:])
            return self.ready.exists() and bool(self.ready.read_text().strip())

        wait_for(up, timeout=60, what="agent start")
        self.port = int(self.ready.read_text())
        return time.monotonic()

    def datapath_pid(self) -> int:
        with DatapathClient(str(self.state / "datapath.sock"), timeout=5) as c:
            return int(c.ping()["pid"])

    def connect(self) -> manager.Manager:
        from nsf_agent.userspace.lab import in_netns

        with in_netns(self.lab.gw_a):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return manager.connect(host="127.0.0.1", port=self.port, sock=sock, username="admin",
                               password=PASSWORD, hostkey_verify=False, allow_agent=False,
                               look_for_keys=False, timeout=30)

    def kill9(self) -> None:
        assert self.proc is not None
        dp = self.datapath_pid()
        os.kill(self.proc.pid, signal.SIGKILL)  # (ip netns exec execs: this is the agent)
        os.kill(dp, signal.SIGKILL)
        self.proc.wait(10)
        wait_for(lambda: not Path(f"/proc/{dp}").exists()
                 or "zombie" in Path(f"/proc/{dp}/status").read_text().lower(),
                 timeout=10, what="data path gone")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        sock = self.state / "datapath.sock"
        if sock.exists():
            try:
                with DatapathClient(str(sock), timeout=2) as c:
                    c.shutdown()
            except (OSError, TimeoutError):
                pass


@pytest.fixture
def crash_lab(tmp_path: Path) -> Iterator[tuple]:
    from netconf_core.schema import YangSchema
    from nsf_agent.userspace.lab import Lab, unique_prefix

    lab = Lab(unique_prefix("i2cr"))
    a: AgentProc | None = None
    b: Gateway | None = None
    try:
        lab.build(gro=False)
        (tmp_path / "a").mkdir()
        state = tmp_path / "a" / "state"
        a = AgentProc(lab, agent_config(tmp_path / "a" / "agent.toml", state), state)
        b = Gateway(YangSchema(create_context()), lab.gw_b, tmp_path / "b")
        yield lab, a, b
    finally:
        if a is not None:
            a.stop()
        if b is not None:
            b.stop(datapath=True)
        lab.destroy()


def esp_seq_iv(pkt: bytes) -> tuple[int, int, bytes]:
    ihl = (pkt[0] & 0x0F) * 4
    esp = pkt[ihl:]
    return int.from_bytes(esp[:4], "big"), int.from_bytes(esp[4:8], "big"), esp[8:16]


def sa_in_counters(b: Gateway) -> tuple[int, int]:
    """(packets, replay drops) of B's inbound SA from A."""
    data = b.ds.get_state()
    q = "{urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless}"
    for e in data.iter(q + "sad-entry"):
        if e.findtext(q + "name") == "sa-in":
            return (int(e.findtext(f".//{q}sa-lifetime-current/{q}packets") or 0),
                    int(e.findtext(f".//{q}replay-stats/{q}packet-dropped") or 0))
    return (-1, -1)


def test_kill9_agent_and_datapath_never_repeats_sequence_numbers(crash_lab) -> None:
    from scapy.layers.inet import IP
    from scapy.layers.ipsec import ESP, SecurityAssociation

    from nsf_agent.userspace.lab import HOST_B

    lab, a, b = crash_lab
    a.start()
    with a.connect() as m:
        cfg = etree.tostring(side_config("a")).decode()
        m.edit_config(target="running", config=cfg)
        status = m.get(filter=("subtree", f'<nsf-status xmlns="{SADB}"/>')).data_ele
        assert status.findtext(f".//{S}previous-stop") == "first-start"
        assert status.find(f".//{S}sa-rekey-required") is None
        first_boot = status.findtext(f".//{S}boot-id")
    b.ds.edit_config("running", side_config("b"))
    cap = Capture(lab, lab.gw_b, "192.0.2.1")
    pinger = lab.popen(lab.host_a, ["ping", "-i", "0.02", "-W", "1", HOST_B],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sa_in_counters(b)[0] >= 50, timeout=20, what="50 packets A->B")
        a.kill9()
        before_restart = len(cap.packets)
        ready = a.start()
        packets0, drops0 = sa_in_counters(b)
        # traffic is back at once: B decrypts A's packets again without replay drops
        wait_for(lambda: sa_in_counters(b)[0] > packets0, timeout=10,
                 what="traffic A->B after the restart")
        back_after = time.monotonic() - ready
        assert back_after < 2.0, back_after  # (the acceptance: within 2 s of ready)
        wait_for(lambda: sa_in_counters(b)[0] >= packets0 + 10, timeout=10,
                 what="more traffic A->B after the restart")
        assert sa_in_counters(b)[1] == drops0 == 0
    finally:
        pinger.terminate()
        pinger.wait(5)
        cap.stop()
    assert len(cap.packets) > before_restart + 10

    # no (SPI, sequence number) and no GCM IV twice, and every packet is genuine ESP
    sent = [esp_seq_iv(p) for p in cap.packets]
    ours = [(spi, seq, iv) for spi, seq, iv in sent if spi == SPI_AB]
    assert len(ours) == len(cap.packets)
    seqs = [(spi, seq) for spi, seq, _ in ours]
    assert len(set(seqs)) == len(seqs), "a sequence number was sent twice"
    ivs = [iv for _, _, iv in ours]
    assert len(set(ivs)) == len(ivs), "an AES-GCM IV was used twice under one key"
    key = bytes.fromhex(KEY_AB)
    sa = SecurityAssociation(ESP, spi=SPI_AB, crypt_algo="AES-GCM", crypt_key=key,
                             tunnel_header=IP(src="192.0.2.1", dst="192.0.2.2"))
    for p in cap.packets[:: max(1, len(cap.packets) // 50)] + cap.packets[-5:]:
        inner = sa.decrypt(IP(p))
        assert inner[IP].dst == HOST_B

    # the agent says it crashed and which SAs lost state
    with a.connect() as m:
        status = m.get(filter=("subtree", f'<nsf-status xmlns="{SADB}"/>')).data_ele
    st = status.find(f".//{S}nsf-status")
    assert st is not None
    ctx = create_context([*IPSEC_MODULES, "i2nsf-sadb"])  # (the state is what YANG says)
    ctx.parse_data_mem(etree.tostring(st).decode(), "xml", strict=True, parse_only=True).free()
    assert status.findtext(f".//{S}previous-stop") == "unclean"
    assert status.findtext(f".//{S}previous-boot-id") == first_boot
    assert status.findtext(f".//{S}boot-id") != first_boot
    listed = {e.findtext(f"{S}ipsec-sa-name"): (e.findtext(f"{S}reason"),
                                                e.findtext(f"{S}sending-suspended"))
              for e in status.iter(f"{S}sa-rekey-required")}
    assert listed == {"sa-out": ("sequence-resumed", "false"),
                      "sa-in": ("replay-state-lost", "false")}


def test_datapath_killed_alone_is_started_again(tmp_path: Path) -> None:
    """kill -9 of the data path while the agent runs: the applier starts a new one at once,
    which resumes above the old one's sequence numbers (traffic flows again without replays)
    and reports the SAs for the controller to replace (nsf-restarted)."""
    from netconf_core.schema import YangSchema
    from nsf_agent.restart import BootRecord, StatusApplier
    from nsf_agent.userspace.lab import Lab, unique_prefix

    lab = Lab(unique_prefix("i2rs"))
    gws: list[Gateway] = []
    try:
        lab.build(gro=False)
        schema = YangSchema(create_context())
        gws = [Gateway(schema, lab.gw_a, tmp_path / "a"), Gateway(schema, lab.gw_b, tmp_path / "b")]
        a, b = gws
        notes: list[etree._Element] = []
        status = StatusApplier(BootRecord(tmp_path / "a"), [a.applier])
        status.bind(notes.append)
        a.ds.edit_config("running", side_config("a"))
        b.ds.edit_config("running", side_config("b"))
        from test_userspace_applier import ping

        assert ping(lab, 2)
        seq_before = sa_seq(a, "sa-out")
        pid = DatapathClient(str(tmp_path / "a" / "datapath.sock"), timeout=5).ping()["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: a.applier.respawns == 1, timeout=20, what="a new data path")
        assert ping(lab, 3)
        assert sa_seq(a, "sa-out") > seq_before  # resumed above, not from 1
        assert sa_in_counters(b)[1] == 0  # no replay drops at the peer
        assert a.applier.rekey_required() == {"sa-out": ("sequence-resumed", False),
                                              "sa-in": ("replay-state-lost", False)}
        n = notes[-1]
        assert n.tag == S + "nsf-restarted"
        assert n.findtext(S + "previous-stop") == "unclean"
        schema_s = YangSchema(create_context([*IPSEC_MODULES, "i2nsf-sadb"]))
        schema_s.validate_notification(n)
    finally:
        for g in gws:
            g.stop(datapath=True)
        lab.destroy()


def sa_seq(g: Gateway, name: str) -> int:
    q = "{urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless}"
    for e in g.ds.get_state().iter(q + "sad-entry"):
        if e.findtext(q + "name") == name:
            return int(e.findtext(f".//{q}seq-number-counter") or 0)
    return -1
