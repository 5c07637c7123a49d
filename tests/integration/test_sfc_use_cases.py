"""The seed's SFC use cases end to end with real security functions (nsf_agent.functions:
nftables firewall and DDoS mitigator, Hyperscan IDS on NFQUEUE) in the SF namespaces
behind F's proxies, real agents, the controller, traffic from hostA, tshark on the wire.

Use case 1 (seed §5.1, dynamic path alternation): SFP-1 firewall → IDS; the IDS matches
the flood's signature and asks for re-classification ("ddos-suspected"); the SFF that got
the tagged packet re-classifies it (rule pushed by the controller) onto SFP-2 firewall →
DDoS mitigator → IDS, where the mitigator caps the flood.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None
                       or shutil.which("tshark") is None or shutil.which("nft") is None,
                       reason="needs root, iproute2, nftables and tshark"),
    pytest.mark.root,
    pytest.mark.slow,
]

from tests.integration.sfc_ctl_lab import (  # noqa: E402
    Capture,
    SfcControllerLab,
    poll,
    sfc_controller_lab,
    tshark_nsh,
)

ROOT = Path(__file__).resolve().parents[2]
SIG = ('alert udp any any -> any 9000 (msg:"flood pattern"; content:"ATTACK"; sid:100; '
       'reclassify:"ddos-suspected";)\n'
       'alert udp any any -> any 9000 (msg:"exploit attempt"; content:"EXPLOIT"; sid:101; '
       'next-function:"ips";)')
IPS_SIG = 'drop udp any any -> any 9000 (msg:"exploit"; content:"EXPLOIT"; sid:200;)'
# One instance per path hop (the agent's proxy serves an instance on one path): sfp-1 gets
# fw-1 and ids-1, sfp-2 fw-2, ddos-1 and ids-2 (the controller shares them out by name).
FW = {"firewall": {"default_action": "accept"}}
FUNCS = [("fw-1", "firewall", FW), ("ids-1", "ids", {"signatures": SIG}),
         ("fw-2", "firewall", FW),
         ("ddos-1", "ddos", {"ddos": {"per_source_pps": 50, "per_source_burst": 10}}),
         ("ids-2", "ids", {"signatures": SIG}), ("ips-1", "ips", {"signatures": IPS_SIG})]
CONFIG = """<sf-types><sf-type><name>firewall</name></sf-type><sf-type><name>ids</name>
</sf-type><sf-type><name>ddos</name></sf-type><sf-type><name>ips</name></sf-type></sf-types>
<chains>
<chain><name>sfp-1</name><sf-type>firewall</sf-type><sf-type>ids</sf-type></chain>
<chain><name>sfp-2</name><sf-type>firewall</sf-type><sf-type>ddos</sf-type>
<sf-type>ids</sf-type></chain></chains>
<policies><policy><name>from-a</name><match><source-prefix>198.51.100.0/24</source-prefix>
</match><chain>sfp-1</chain></policy></policies>
<reclassification><rule><name>ddos</name><from-sf-type>ids</from-sf-type>
<inspection-result>ddos-suspected</inspection-result><from-chain>sfp-1</from-chain>
<to-chain>sfp-2</to-chain></rule></reclassification>"""


class Function:
    """One security function process in SF namespace `i` of the lab (what the DMS starts),
    reporting to the proxy's result socket and to a socket of the test."""

    def __init__(self, lab: SfcControllerLab, i: int, name: str, sf_type: str,
                 spec: dict[str, Any]) -> None:
        d = lab.workdir / f"sf-{name}"
        d.mkdir()
        self.proxy_socket = str(d / "proxy.sock")
        self.test_path = str(d / "test.sock")
        self.test = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.test.bind(self.test_path)
        rules = d / "rules.json"
        rules.write_text(json.dumps({"type": sf_type, **spec}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.sf_type = sf_type
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.net.sf(i), sys.executable, "-m", "nsf_agent.functions",
             "--instance", name, "--type", sf_type, "--rules", str(rules),
             "--report-socket", self.proxy_socket, "--report-socket", self.test_path,
             "--load-interval", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)

    def ready(self) -> Function:
        """Wait for the process's READY line (start them all first: they start in parallel)."""
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if line.strip() != "READY":
            raise RuntimeError(f"{self.sf_type} did not start: {line!r} "
                               f"{self.proc.stderr.read() if self.proc.stderr else ''}")
        return self

    def results(self, timeout: float = 0.3) -> list[dict[str, Any]]:
        out = []
        self.test.settimeout(timeout)
        with contextlib.suppress(TimeoutError, socket.timeout):
            while True:
                out.append(json.loads(self.test.recv(65536)))
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.test.close()


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[SfcControllerLab, dict[str, Function]]]:
    with sfc_controller_lab(sfs=len(FUNCS)) as lab:
        funcs: dict[str, Function] = {}
        try:
            for i, (name, t, spec) in enumerate(FUNCS):
                funcs[name] = Function(lab, i, name, t, spec)
            for f in funcs.values():
                f.ready()
            m = lab.connect()
            try:
                lab.configure(m, lab.forwarders_xml() + CONFIG.split("<chains>")[0])
                for i, (name, t, _spec) in enumerate(FUNCS):
                    lab.register(m, i, name, t, report_socket=funcs[name].proxy_socket)
            finally:
                m.close_session()
            yield lab, funcs
        finally:
            for f in funcs.values():
                f.close()


def _udp_receiver(lab: SfcControllerLab, port: int) -> socket.socket:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.host_b):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("203.0.113.10", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s


def _count(s: socket.socket, settle: float = 0.5) -> int:
    n = 0
    s.settimeout(settle)
    with contextlib.suppress(TimeoutError, socket.timeout):
        while True:
            s.recv(65536)
            n += 1
    return n


def _send(lab: SfcControllerLab, n: int, pace: float, payload: bytes, sport: int) -> None:
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.host_a):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("198.51.100.10", sport))
    t0 = time.monotonic()
    for i in range(n):
        s.sendto(payload, ("203.0.113.10", 9000))
        due = t0 + (i + 1) * pace
        while time.monotonic() < due:
            pass
    s.close()


def test_dynamic_path_alternation(lab: tuple[SfcControllerLab, dict[str, Function]],
                                  tmp_path: Path) -> None:
    net, funcs = lab
    m = net.connect()
    try:
        net.configure(m, CONFIG, inventory=False)
        p = poll(lambda: (x := net.paths(m)) and all(
            x.get(c, {}).get("status") == "active" for c in ("sfp-1", "sfp-2")) and x, 20,
            "both paths active")
        spi1, spi2 = int(p["sfp-1"]["spi"]), int(p["sfp-2"]["spi"])
        rx = _udp_receiver(net, 9000)
        # a clean flow first: SFP-1 end to end, nothing dropped
        _send(net, 20, 0.005, b"hello " * 10, 40001)
        assert _count(rx) == 20
        for f in funcs.values():
            f.results(0.05)
        cap_fe = Capture(net.net.f, "e", tmp_path / "fe.pcap")  # F → E, after the last SF
        cap_dd = Capture(net.net.f, "i3", tmp_path / "ddos.pcap", bpf="udp")  # to the mitigator
        try:
            _send(net, 400, 0.002, b"ATTACK" + b"x" * 50, 40002)  # 500 pps for 0.8 s
            got = _count(rx)
        finally:
            time.sleep(0.2)
            rows_fe = tshark_nsh(cap_fe.stop())
            dd = cap_dd.stop()
        alerts = [r for r in funcs["ids-1"].results() if r.get("sid") == 100]
        assert alerts and alerts[0]["action"] == {"reclassify": "ddos-suspected"}
        t_alert = min(float(r["time"]) for r in alerts)
        first_dd = subprocess.run(
            ["tshark", "-r", str(dd), "-Y", "udp.dstport == 9000", "-T", "fields", "-e",
             "frame.time_epoch", "-c", "1"], capture_output=True, text=True).stdout.split()
        assert first_dd, "nothing reached the DDoS mitigator"
        latency = float(first_dd[0]) - t_alert
        print(f"\ndetection -> first packet on SFP-2 at the mitigator: {latency * 1000:.1f} ms; "
              f"flood 400 sent, {got} delivered")
        assert latency <= 0.2
        spis = {(spi, si) for src, spi, si in rows_fe if src == "198.51.100.10"}
        # the flood left F on SFP-2 after its last SF (SI 252); SFP-1 ends at SI 253
        assert (spi2, 252) in spis, (spi1, spis)
        assert 0 < got < 200  # the mitigator capped the flood (50 pps per source + burst)
        ddos_drops = [r for r in funcs["ddos-1"].results() if r.get("verdict") == "drop"]
        assert ddos_drops
        events = [k for k, _d in net.events(m)]
        assert "inspection-result" in events  # the controller was told, with the flow
        assert any(k == "inspection-result" and "flow 198.51.100.10 -> 203.0.113.10 proto 17 "
                   "40002 -> 9000" in d for k, d in net.events(m))
    finally:
        m.close_session()


def test_nsf_triggered_steering(lab: tuple[SfcControllerLab, dict[str, Function]],
                                tmp_path: Path) -> None:
    """Seed §6: no chain leads to the IPS; the IDS's advanced action for an exploit asks for
    the flow to go to an IPS, and F (the SFF that got the request) puts it on the IPS's
    controller-made steering path itself: no classifier round trip, no predefined chain.
    The IPS drops the exploit; a clean flow on the same chain never meets the IPS."""
    net, funcs = lab
    m = net.connect()
    try:
        net.configure(m, net.forwarders_xml() + CONFIG.split("<chains>")[0].replace(
            "<name>ips</name>", "<name>ips</name><steering-target>true</steering-target>")
            + "<chains><chain><name>inspect</name><sf-type>ids</sf-type></chain></chains>"
            "<policies><policy><name>all</name><match><source-prefix>198.51.100.0/24"
            "</source-prefix></match><chain>inspect</chain></policy></policies>",
            inventory=False, replace=True)
        try:
            p = poll(lambda: (x := net.paths(m)) and {k: v["status"] for k, v in x.items()}
                     == {"inspect": "active", "ips": "active"} and x, 20,
                     "inspect and the ips steering path active")
        except TimeoutError:
            print(net.paths(m), net.events(m)[-8:])
            raise
        spi_inspect, spi_ips = int(p["inspect"]["spi"]), int(p["ips"]["spi"])
        before = {n: net.steering_counters(n) for n in ("c", "f")}
        # F holds the controller's next-function map: ips → its steering path
        assert "next-function:ips" in before["f"] and "next-function:ips" in before["c"]
        rx = _udp_receiver(net, 9000)
        cap_cf = Capture(net.net.f, "c", tmp_path / "cf.pcap")
        cap_fe = Capture(net.net.f, "e", tmp_path / "fe.pcap")
        ips_if = f"i{[n for n, _t, _s in FUNCS].index('ips-1')}"
        cap_ips = Capture(net.net.f, ips_if, tmp_path / "ips.pcap", bpf="udp")
        try:
            _send(net, 30, 0.005, b"hello clean", 40010)
            clean = _count(rx)
            _send(net, 30, 0.005, b"EXPLOIT payload", 40011)
            exploit = _count(rx)
        finally:
            time.sleep(0.2)
            rows_cf = tshark_nsh(cap_cf.stop())
            rows_fe = tshark_nsh(cap_fe.stop())
            ips_pcap = cap_ips.stop()
        at_ips = subprocess.run(["tshark", "-r", str(ips_pcap), "-T", "fields", "-e",
                                 "udp.srcport"], capture_output=True, text=True).stdout.split()
        print(f"\nsteering: clean flow {clean}/30 delivered, exploit flow {exploit}/30 "
              f"delivered, {len(at_ips)} exploit packets reached the IPS")
        assert clean == 30
        assert exploit <= 2  # the IDS is passive: the packets before its verdict pass
        assert at_ips and set(at_ips) == {"40011"}  # only the exploit flow met the IPS
        assert {spi for _s, spi, _si in rows_cf} == {spi_inspect}  # C never re-classified
        # what the IPS let through (nothing of the exploit after the verdict) and the clean
        # flow leave F on their paths' last SI
        assert (spi_inspect, 254) in {(spi, si) for _s, spi, si in rows_fe}
        assert all(spi in (spi_inspect, spi_ips) for _s, spi, _si in rows_fe)
        drops = [r for f in funcs.values() if f is funcs["ips-1"] for r in f.results()
                 if r.get("sid") == 200]
        assert drops and drops[0]["verdict"] == "drop"
        # the request was the MD2 next-function TLV, acted on by F's next-function entry
        # (not a re-classification, not at the classifier C)
        after = {n: net.steering_counters(n) for n in ("c", "f")}
        steered = after["f"]["next-function:ips"] - before["f"]["next-function:ips"]
        print(f"F steered {steered} packets by next-function 'ips'")
        assert steered >= len(at_ips) > 0
        assert after["c"] == before["c"]  # C did nothing for it
        for n in ("c", "f"):
            assert {k: v for k, v in after[n].items() if k.startswith("reclassify")} == {
                k: v for k, v in before[n].items() if k.startswith("reclassify")}
        assert after["f"]["next-function-unknown"] == before["f"]["next-function-unknown"]
        # the controller's event for the IDS's result names the flow (5-tuple)
        q = "{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}"

        def flows() -> list[tuple[str | None, ...]]:
            return [tuple(e.findtext(f"{q}flow/{q}{leaf}") for leaf in (
                "source", "destination", "protocol", "source-port", "destination-port"))
                for e in net.sfc_state(m).iter(q + "event")
                if e.findtext(q + "kind") == "inspection-result"
                and "next-function ips" in (e.findtext(q + "detail") or "")]
        poll(lambda: flows(), 5, "the inspection-result event")
        assert ("198.51.100.10", "203.0.113.10", "17", "40011", "9000") in flows()
    finally:
        m.close_session()


# ---- use case 3: load balancing with dynamic instantiation (seed §5.3) ----------------------

DMS_NS = "urn:i2nsf-sdn:yang:i2nsf-dms"
ACCEPT = f'<firewall xmlns="{DMS_NS}"><default-action>accept</default-action></firewall>'


def _start_dms(net: SfcControllerLab, name: str, node: str, capacity: int) -> Any:
    """A real DMS (python -m nsf_agent.dms) in the management namespace whose instances'
    host-side links are in `node`'s namespace; registers with the controller as admin.
    Spawned only: `_dms_ready` waits for it (so several start side by side)."""
    import asyncssh

    from tests.integration.sfc_ctl_lab import ADMIN_PASSWORD, LOCATOR, Daemon

    st = net.workdir / name
    st.mkdir(mode=0o700)
    pw = net.workdir / "admin.pw"
    pw.write_text(ADMIN_PASSWORD + "\n")
    ctl_key = asyncssh.read_private_key(
        str(net.workdir / "controller" / "ssh_host_ed25519_key")).export_public_key().decode()
    cfg = st / "dms.toml"
    cfg.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = 0\nstate_dir = "{st}"\n\n'
        f'[dms]\nname = "{name}"\nhost = "{node}"\nhost_netns = "{net.ns_of(node)}"\n'
        f'locator = "{LOCATOR[node]}"\nnetns_prefix = "{net.net.prefix}-{node}x"\n'
        f"max_instances = 4\nload_interval = 0.3\n\n[dms.capacity]\nfirewall = {capacity}\n\n"
        f'[controller]\naddress = "127.0.0.1"\nport = 8300\nusername = "admin"\n'
        f'password_file = "{pw}"\nhost_key = "{ctl_key.strip()}"\n\n'
        f'[[users]]\nname = "ctl"\nauthorized_keys = ["{net.client_pub}"]\n')
    d = Daemon(name, net.mgmt, [sys.executable, "-m", "nsf_agent.dms", "-c", str(cfg),
                                "--ready-file", str(st / "ready")], st / "log", st / "ready")
    d.spawn()
    net.agents[name] = d  # stopped with the lab
    return d


def _dms_ready(d: Any) -> tuple[int, str]:
    """(port, host key) of a spawned DMS once it is ready."""
    import asyncssh

    d.wait_ready(60)
    st = d.ready_file.parent
    port = int((st / "ready").read_text().split()[0])
    host_key = asyncssh.read_private_key(
        str(st / "ssh_host_ed25519_key")).export_public_key().decode().strip()
    return port, host_key


def _dms_session(net: SfcControllerLab, port: int) -> Any:
    import ncclient.transport.session as nc_session
    from ncclient import manager

    from nsf_agent.userspace.lab import in_netns

    nc_session.TICK = 0.001
    with in_netns(net.mgmt):
        return manager.connect(host="127.0.0.1", port=port, username="ctl",
                               key_filename=str(net.workdir / "controller_id_ed25519"),
                               hostkey_verify=False, allow_agent=False, look_for_keys=False,
                               timeout=30)


def _flows(net: SfcControllerLab, sports: range, seconds: float, pps: int,
           stop: Any = None, sent: dict[int, int] | None = None) -> None:
    """UDP flows from hostA, one socket per source port, round robin at `pps` in total, for
    `seconds` or until `stop` (a threading.Event) is set; packets per port into `sent`."""
    from nsf_agent.userspace.lab import in_netns

    socks = []
    with in_netns(net.net.host_a):
        for p in sports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("198.51.100.10", p))
            socks.append(s)
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < seconds and not (stop is not None and stop.is_set()):
        for _ in range(10):  # bursts of 10, paced by sleeping (no busy loop: 2 cores)
            socks[n % len(socks)].sendto(b"load" * 10, ("203.0.113.10", 9001))
            if sent is not None:
                port = sports[n % len(socks)]
                sent[port] = sent.get(port, 0) + 1
            n += 1
        time.sleep(max(0.0, t0 + n / pps - time.monotonic()))
    for s in socks:
        s.close()


def _where(pcap: Path) -> dict[int, set[str]]:
    """inner UDP source port → outer destinations (the SFF the classifier chose)."""
    out = subprocess.run(["tshark", "-r", str(pcap), "-Y", "nsh && udp.dstport == 9001",
                          "-T", "fields", "-e", "ip.dst", "-e", "udp.srcport"],
                         capture_output=True, text=True, check=True).stdout
    res: dict[int, set[str]] = {}
    for line in out.splitlines():
        dst, _, sport = line.partition("\t")
        if sport:
            res.setdefault(int(sport), set()).add(dst.split(",")[0])
    return res


def test_load_balancing_with_dynamic_instantiation(tmp_path: Path) -> None:
    """The firewall on F is pushed over its high watermark by a load generator; the Catalog
    Manager asks the DMS on E for another firewall; it registers, the Policy Manager spreads
    new flows over both; when the load stops, one instance is drained and removed."""
    from tests.integration.sfc_ctl_lab import LOCATOR

    with sfc_controller_lab(sfs=0) as net:
        (net.workdir / "sock").mkdir()
        # C reaches E's locator through F (the lab routes only the hosts' prefixes)
        subprocess.run(["ip", "-n", net.net.c, "route", "add", "192.0.2.4/30", "via",
                        LOCATOR["f"]], check=True)
        m = net.connect()
        try:
            dms = [_start_dms(net, "dms-f", "f", capacity=400),
                   _start_dms(net, "dms-e", "e", capacity=400)]
            (port_f, key_f), (port_e, key_e) = (_dms_ready(d) for d in dms)
            servers = "".join(
                f"<dms><name>{n}</name><address>127.0.0.1</address><port>{p}</port>"
                f"<username>ctl</username><host-key>{k}</host-key>"
                f"<report-socket-dir>{net.workdir / 'sock'}</report-socket-dir>"
                f"<private-key-file>{net.workdir / 'controller_id_ed25519'}</private-key-file>"
                "</dms>" for n, p, k in (("dms-f", port_f, key_f), ("dms-e", port_e, key_e)))
            net.configure(m, net.forwarders_xml(egress=False)
                          + f"<dms-servers>{servers}</dms-servers>")
            net.wait_sessions(m)
            d = _dms_session(net, port_f)  # the operator's first firewall, on F
            try:
                d.dispatch(etree.fromstring(
                    f'<create-instance xmlns="{DMS_NS}"><name>fw-1</name><type>firewall</type>'
                    f"{ACCEPT}</create-instance>"))
            finally:
                d.close_session()
            poll(lambda: "fw-1" in {n for n, _ in _instances(net, m)}, 20, "fw-1 registered")
            rules = ACCEPT.replace("<", "&lt;").replace(">", "&gt;")
            net.configure(m, f"""<sf-types><sf-type><name>firewall</name><scaling>
              <high-watermark>60</high-watermark><low-watermark>20</low-watermark>
              <min-instances>1</min-instances><max-instances>2</max-instances>
              <hold-time>600</hold-time><dms>dms-e</dms>
              <instance-rules>{rules}</instance-rules></scaling></sf-type></sf-types>
              <chains><chain><name>lb</name><sf-type>firewall</sf-type></chain></chains>
              <policies><policy><name>a</name><match>
              <source-prefix>198.51.100.0/24</source-prefix>
              <protocol>17</protocol></match><chain>lb</chain></policy>
              </policies>""", inventory=False)
            poll(lambda: net.paths(m).get("lb", {}).get("status") == "active", 20, "lb active")
            cap = Capture(net.net.f, "c", tmp_path / "cf.pcap", bpf="ip proto 47")
            t0 = time.monotonic()
            # established flows: 20 flows at 500 pps (fw-1 rated 400 pps) while it scales out
            import threading

            # (they go on until the new flows are sent: established across the rebalance)
            done = threading.Event()
            sent: dict[int, int] = {}
            rx = _udp_receiver(net, 9001)
            got: dict[int, int] = {}

            def receive() -> None:  # what reached hostB, per flow, until quiet after done
                rx.settimeout(0.3)
                while True:
                    try:
                        _d, (_src, sport) = rx.recvfrom(2048)
                    except TimeoutError:
                        if done.is_set():
                            return
                        continue
                    got[sport] = got.get(sport, 0) + 1

            receiver = threading.Thread(target=receive, daemon=True)
            receiver.start()
            load = threading.Thread(target=_flows, args=(net, range(41000, 41020), 15, 500,
                                                         done, sent), daemon=True)
            load.start()
            poll(lambda: len(_instances(net, m)) == 2, 15, "a second firewall instance")
            t_new = time.monotonic() - t0
            new_name = next(n for n, _ in _instances(net, m) if n != "fw-1")
            poll(lambda: LOCATOR["e"] in net.agent_running("c"), 10, "C sending to E too")
            t_rebalanced = time.monotonic() - t0
            try:
                _flows(net, range(42000, 42040), 1.0, 400)  # new flows after the rebalance
            finally:
                done.set()
                load.join()
                receiver.join(10)
                rx.close()
            time.sleep(0.3)
            where = _where(cap.stop())
            new = {p: w for p, w in where.items() if p >= 42000}
            est = {p: w for p, w in where.items() if p < 42000}
            on_e = sum(1 for w in new.values() if w == {LOCATOR["e"]})
            moved = sum(1 for w in est.values() if len(w) > 1)
            print(f"\nscale-out: {new_name} registered {t_new:.1f} s after the load started, "
                  f"C rebalanced at {t_rebalanced:.1f} s; new flows: {len(new) - on_e} to F "
                  f"(fw-1), {on_e} to E ({new_name}); established flows that changed "
                  f"instance: {moved} of {len(est)}")
            lost = {p: sent[p] - got.get(p, 0) for p in sent if got.get(p, 0) != sent[p]}
            print(f"established flows: {sum(sent.values())} packets sent, "
                  f"{sum(got.get(p, 0) for p in sent)} delivered; per-flow shortfall {lost}")
            assert len(new) == 40 and on_e > 0
            # no established flow was dropped across the rebalance (moved, see docs: yes)
            assert all(got.get(p, 0) > 0 for p in sent), lost  # every flow still delivered
            assert sum(lost.values()) <= 0.01 * sum(sent.values()), lost
            kinds = [k for k, _ in net.events(m)]
            assert "scale-out" in kinds
            # load gone: one instance is drained, then removed by its DMS
            poll(lambda: len(_instances(net, m)) == 1, 30, "scale-in to one instance")
            assert "scale-in" in [k for k, _ in net.events(m)]
            left = subprocess.run(["ip", "netns", "list"], capture_output=True,
                                  text=True).stdout
            gone = [n for n in ("fw-1", new_name) if n not in {x for x, _ in _instances(net, m)}]
            assert len(gone) == 1 and f"{net.net.prefix}-{'e' if gone[0] == new_name else 'f'}x"\
                f"{gone[0]}" not in left
        finally:
            m.close_session()
            for n in ("dms-f", "dms-e"):  # the DMSs remove their instances when stopped?
                with contextlib.suppress(Exception):
                    net.agents[n].stop()
            for ns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                     text=True).stdout.split():
                if ns.startswith(f"{net.net.prefix}-") and "x" in ns[len(net.net.prefix):]:
                    net.extra_namespaces.append(ns)


def _instances(net: SfcControllerLab, m: Any) -> list[tuple[str, str]]:
    st = net.sfc_state(m)
    q = "{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}"
    return [(i.findtext(q + "name") or "", i.findtext(q + "state") or "")
            for top in st.iter(q + "sfc-state") for i in top.findall(q + "instance")]
