"""The IKE case end to end: two real agents (`i2nsf-agent run` with the `userspace` and `ike`
appliers, each agent's own charon with kernel-libipsec) in gateway namespaces, the controller
(`i2nsf-controller serve`) in a management namespace, real SSH; a road-warrior host with
stock strongSwan (its own charon, `swanctl --load-all`).

    hostA ── gwA ══ gwB ── hostB
                    │
                    rw (10.77.0.2, inner 10.77.1.1)

One lab for the module; every test leaves the controller without policies.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (network namespaces, TUN, raw sockets)"),
    pytest.mark.skipif(not Path("/usr/lib/ipsec/charon").exists()
                       or shutil.which("swanctl") is None,
                       reason="needs strongSwan (charon, swanctl, libcharon-extra-plugins)"),
    pytest.mark.root,
    pytest.mark.slow,
]

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
IKE = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ike"
EV = "urn:i2nsf-sdn:yang:i2nsf-ike-events"
NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
HOST_B = "203.0.113.10"
RW_OUTER, RW_GW, RW_INNER = "10.77.0.2", "10.77.0.1", "10.77.1.1"


@pytest.fixture(scope="module")
def gl() -> Iterator[Any]:
    from gateway_lab import GatewayLab

    from nsf_agent.userspace.lab import unique_prefix

    work = Path(tempfile.mkdtemp(prefix="i2nsf-ike-"))
    lab = GatewayLab(unique_prefix("i2k"), work, soft=300, hard=400,
                     appliers=("userspace", "ike"), ctl_options={"status_interval": 0.5})
    try:
        lab.start()
        edit(lab, inventory(lab))
        yield lab
    finally:
        lab.destroy()
        shutil.rmtree(work, ignore_errors=True)


# ---- helpers --------------------------------------------------------------------------------


def poll(pred: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    from gateway_lab import poll as _poll

    return _poll(pred, timeout, what, interval)


def inventory(gl: Any) -> str:
    xml = gl.inventory_xml(policy=None)
    return xml  # NSFs gwa/gwb and profile "lab"


def edit(gl: Any, body: str, op: str = "merge") -> None:
    m = gl.connect()
    try:
        if not body.startswith("<config"):
            body = f'<config xmlns="{NC}"><flow-protection xmlns="{FP}">{body}' \
                   "</flow-protection></config>"
        m.edit_config(target="running", default_operation=op, config=body)
    finally:
        m.close_session()


def policy(name: str, auth: str = "psk", a_prefix: str = "", b_prefix: str = "",
           ike: bool = True, extra: str = "") -> str:
    ap = f"<prefix>{a_prefix}</prefix>" if a_prefix else ""
    bp = f"<prefix>{b_prefix}</prefix>" if b_prefix else ""
    km = f"<ike><auth-method>{auth}</auth-method>{extra}</ike>" if ike else ""
    return (f"<policies><policy><name>{name}</name><endpoint-a><nsf>gwa</nsf>{ap}</endpoint-a>"
            f"<endpoint-b><nsf>gwb</nsf>{bp}</endpoint-b><crypto-profile>lab</crypto-profile>"
            f"{km}</policy></policies>")


def delete_policy(gl: Any, name: str) -> None:
    edit(gl, f'<policies><policy xmlns:nc="{NC}" nc:operation="delete"><name>{name}</name>'
             "</policy></policies>")


def state(gl: Any) -> etree._Element:
    m = gl.connect()
    try:
        return etree.fromstring(m.get(filter=("subtree", f'<flow-protection-state xmlns="{FP}"/>'
                                              )).xml.encode())
    finally:
        m.close_session()


def status(gl: Any, name: str, kind: str = "policy") -> tuple[str | None, str | None]:
    for p in state(gl).iter(f"{{{FP}}}{kind}"):
        if p.findtext(f"{{{FP}}}name") == name:
            return p.findtext(f"{{{FP}}}status"), p.findtext(f"{{{FP}}}error-message")
    return None, None


def vici(gl: Any, side: str) -> str:
    return str(gl.agent_state(side) / "ike" / "charon.vici")


def swanctl(gl: Any, side: str, *args: str) -> str:
    r = subprocess.run(["swanctl", *args, "--uri", f"unix://{vici(gl, side)}"],
                       capture_output=True, text=True, timeout=20)
    return r.stdout


def conns(gl: Any, side: str) -> str:
    return swanctl(gl, side, "--list-conns")


def sas(gl: Any, side: str) -> str:
    return swanctl(gl, side, "--list-sas")


def agent_ike_state(gl: Any, side: str) -> etree._Element:
    m = gl.connect(side)
    try:
        return etree.fromstring(m.get(filter=("subtree", f'<ipsec-ike xmlns="{IKE}"><conn-entry>'
                                              "<name/><state/></conn-entry></ipsec-ike>"
                                              )).data_xml.encode())
    finally:
        m.close_session()


def child_spis(gl: Any, side: str) -> set[int]:
    out = set()
    for cs in agent_ike_state(gl, side).iter(f"{{{EV}}}child-sa"):
        if cs.findtext(f"{{{EV}}}sa-state") == "INSTALLED":
            for k in ("spi-in", "spi-out"):
                v = cs.findtext(f"{{{EV}}}{k}")
                if v:
                    out.add(int(v, 16) if not v.isdigit() else int(v))
    return out


def ike_spi(gl: Any, side: str) -> str | None:
    return agent_ike_state(gl, side).findtext(f".//{{{IKE}}}initiator-ikesa-spi")


def ping(gl: Any, dst: str = HOST_B, src: str | None = None, count: int = 1,
         ns: str | None = None) -> bool:
    cmd = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", dst]
    if src:
        cmd[1:1] = ["-I", src]
    return gl.lab.run(ns or gl.lab.host_a, cmd, timeout=30).returncode == 0


def capture(gl: Any, path: Path, flt: str, count: int) -> subprocess.Popen[str]:
    cap = subprocess.Popen(
        ["ip", "netns", "exec", gl.lab.gw_a, "tcpdump", "-i", gl.lab.gw_link_a, "-nn", "-U",
         "-c", str(count), "-w", str(path), flt],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert cap.stderr is not None
    line = cap.stderr.readline()
    assert "listening" in line, line
    return cap


def wait_active(gl: Any, name: str, timeout: float = 30) -> None:
    poll(lambda: status(gl, name)[0] == "active", timeout, f"policy {name} active "
         f"(last: {status(gl, name)})", interval=0.2)


# ---- tests ------------------------------------------------------------------------------------


def test_psk_gateway_to_gateway(gl: Any) -> None:
    t0 = time.monotonic()
    edit(gl, policy("ikp"))
    wait_active(gl, "ikp")
    assert "fp/gwa/gwb" in conns(gl, "a") and "fp/gwa/gwb" in conns(gl, "b")
    poll(lambda: ping(gl), 20, "hostA → hostB through the IKE tunnel", interval=0.2)
    setup = time.monotonic() - t0

    # ESP in UDP 4500 on the gateway link, with the SPIs of the negotiated Child SA
    pcap = Path(gl.workdir) / "ike-psk.pcap"
    cap = capture(gl, pcap, "udp port 4500 and greater 100", 4)
    try:
        assert ping(gl, count=4)
        cap.wait(timeout=15)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    spis = child_spis(gl, "a")
    seen = {int.from_bytes(bytes(p[UDP].payload)[:4], "big") for p in rdpcap(str(pcap))}
    assert seen and seen <= spis, (seen, spis)
    # the PSK never reaches a log
    from controller.core.store import SqliteStore

    st = SqliteStore(gl.workdir / "controller" / "controller.db")
    try:
        psk = st.get_meta("ike:psk:gwa:gwb")
    finally:
        st.close()
    assert psk and len(psk) == 64
    for log in (gl.workdir / "controller.log", gl.workdir / "agent-a.log",
                gl.agent_state("a") / "ike" / "charon.log"):
        text = log.read_text().lower()
        assert psk not in text and ":".join(psk[i:i + 2] for i in range(0, 64, 2)) not in text

    # delete: connections unloaded, SAs gone on both, no traffic
    delete_policy(gl, "ikp")
    poll(lambda: "fp/" not in conns(gl, "a") + conns(gl, "b"), 20, "connections unloaded")
    poll(lambda: "fp/" not in sas(gl, "a") + sas(gl, "b"), 20, "SAs gone")
    assert status(gl, "ikp") == (None, None)
    assert not ping(gl)
    print(f"PSK tunnel: policy apply → ping in {setup:.2f} s")


def test_wrong_psk_reports_auth_failure(gl: Any) -> None:
    edit(gl, policy("ikw"))
    wait_active(gl, "ikw")
    # inject a wrong key on gwA directly (and touch its connection, so charon renegotiates)
    m = gl.connect("a")
    try:
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC}"><ipsec-ike xmlns="{IKE}"><pad><pad-entry>'
            "<name>fp/peer/gwb/psk</name><peer-authentication><pre-shared><secret>"
            + ":".join(["5a"] * 32) + "</secret></pre-shared></peer-authentication>"
            "</pad-entry></pad><conn-entry><name>fp/gwa/gwb</name><ike-sa-lifetime-soft>"
            "<rekey-time>7200</rekey-time></ike-sa-lifetime-soft></conn-entry></ipsec-ike>"
            "</config>"))
    finally:
        m.close_session()
    poll(lambda: status(gl, "ikw")[0] == "failed", 30, "policy failed after auth failure",
         interval=0.2)
    err = status(gl, "ikw")[1] or ""
    assert "authentication failed" in err.lower(), err
    assert not ping(gl)
    # the controller puts its configuration back: the tunnel returns
    r = gl.cli("resync", "gwa")
    assert r.returncode == 0, r.stderr
    wait_active(gl, "ikw")
    poll(lambda: ping(gl), 20, "ping after the resync", interval=0.2)
    delete_policy(gl, "ikw")
    poll(lambda: "fp/" not in conns(gl, "a"), 20, "connections unloaded")


def test_mismatched_traffic_selector_reports_child_sa_failed(gl: Any) -> None:
    edit(gl, policy("ikt"))
    wait_active(gl, "ikt")
    m = gl.connect("a")
    try:
        running = etree.fromstring(m.get_config("running", filter=(
            "subtree", f'<ipsec-ike xmlns="{IKE}"><conn-entry><name>fp/gwa/gwb</name><spd>'
            "<spd-entry><name/></spd-entry></spd></conn-entry></ipsec-ike>")).data_xml.encode())
        [spd] = [e.text for e in running.iter(f"{{{IKE}}}name") if e.text.startswith("fp/ikt/")]
        # gwA now asks for a remote network gwB does not protect: TS_UNACCEPTABLE
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC}"><ipsec-ike xmlns="{IKE}"><conn-entry><name>fp/gwa/gwb</name>'
            f"<spd><spd-entry><name>{spd}</name><ipsec-policy-config><traffic-selector>"
            "<remote-prefix>10.123.0.0/24</remote-prefix></traffic-selector>"
            "</ipsec-policy-config></spd-entry></spd></conn-entry></ipsec-ike></config>"))
    finally:
        m.close_session()
    poll(lambda: status(gl, "ikt")[0] == "failed", 30, "policy failed after the Child SA "
         f"failure (last: {status(gl, 'ikt')})", interval=0.2)
    err = status(gl, "ikt")[1] or ""
    assert "child sa failed" in err.lower() and "unacceptable" in err.lower(), err
    r = gl.cli("resync", "gwa")
    assert r.returncode == 0, r.stderr
    wait_active(gl, "ikt")
    poll(lambda: ping(gl), 20, "ping after the resync", interval=0.2)
    delete_policy(gl, "ikt")
    poll(lambda: "fp/" not in conns(gl, "a") + conns(gl, "b"), 20, "connections unloaded")


def _under_ping(gl: Any, action: Any, settle: Any) -> tuple[int, int, str]:
    """Run `action` while hostA pings hostB every 50 ms; (sent, received, ping's output)."""
    pinger = gl.lab.popen(gl.lab.host_a, ["ping", "-n", "-i", "0.05", "-W", "1", HOST_B],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.5)
        action()
        settle()
        time.sleep(1.0)
    finally:
        pinger.send_signal(signal.SIGINT)  # ping prints its statistics on SIGINT
        out, _ = pinger.communicate(timeout=10)
    tx = int(out.split(" packets transmitted")[0].rsplit("\n", 1)[-1])
    rx = int(out.split(" received")[0].rsplit(", ", 1)[-1])
    return tx, rx, out


def test_certificates_and_rotation_without_tunnel_loss(gl: Any) -> None:
    r = gl.cli("policy", "apply", "ikc", "-a", "gwa", "-b", "gwb", "--profile", "lab",
               "--ike", "certificate")
    assert r.returncode == 0, r.stderr
    wait_active(gl, "ikc")
    poll(lambda: ping(gl), 20, "ping through the certificate tunnel", interval=0.2)
    assert "public key" in conns(gl, "a").lower()  # "local public key authentication"
    spi = ike_spi(gl, "a")
    assert spi
    child = child_spis(gl, "a")

    def keys(side: str) -> str:
        return (gl.agent_state(side) / "ike-keys.json").read_text()

    # responder (gwb), initiator (gwa: autostartup start), then a new CA for everyone
    for cmd, sides in ((("nsf", "rotate-cert", "gwb"), "b"), (("nsf", "rotate-cert", "gwa"),
                                                              "a"), (("ca", "rotate"), "ab")):
        before = {s: keys(s) for s in sides}

        def act(cmd: tuple[str, ...] = cmd) -> None:
            r = gl.cli(*cmd)
            assert r.returncode == 0, r.stderr

        def settle(before: dict[str, str] = before) -> None:
            poll(lambda: all(keys(s) != k for s, k in before.items()), 20,
                 f"new keys loaded into {sorted(before)}'s charon")

        tx, rx, out = _under_ping(gl, act, settle)
        assert tx >= 20 and tx - rx <= 1, (cmd, out[-300:])
        # the same IKE SA and Child SA: charon kept both, no renegotiation
        assert ike_spi(gl, "a") == spi, cmd
        assert child_spis(gl, "a") == child, cmd
        assert status(gl, "ikc")[0] == "active"
    assert "fp/gwa/gwb" in conns(gl, "a")
    # the new credentials work: reauthentication makes a new IKE SA with them
    r = subprocess.run(["swanctl", "--rekey", "--reauth", "--ike", "i2nsf-fp/gwa/gwb", "--uri",
                        f"unix://{vici(gl, 'a')}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    poll(lambda: ike_spi(gl, "a") not in (None, spi), 30, "a new IKE SA after reauth")
    poll(lambda: ping(gl), 20, "ping through the re-established tunnel", interval=0.2)
    delete_policy(gl, "ikc")
    poll(lambda: "fp/" not in conns(gl, "a") + conns(gl, "b"), 20, "connections unloaded")


def test_ike_and_ikeless_side_by_side(gl: Any) -> None:
    hb, ha = gl.lab.host_b, gl.lab.host_a
    gl.lab.run(ha, ["ip", "addr", "add", "198.51.100.200/24", "dev", "eth0"])
    gl.lab.run(hb, ["ip", "addr", "add", "203.0.113.200/24", "dev", "eth0"])
    edit(gl, policy("mix-ike", a_prefix="198.51.100.0/25", b_prefix="203.0.113.0/25")
         + policy("mix-esp", a_prefix="198.51.100.128/25", b_prefix="203.0.113.128/25",
                  ike=False))
    wait_active(gl, "mix-ike")
    wait_active(gl, "mix-esp")
    poll(lambda: ping(gl), 20, "ping over the IKE policy", interval=0.2)
    poll(lambda: ping(gl, "203.0.113.200", "198.51.100.200"), 20,
         "ping over the IKE-less policy", interval=0.2)
    pcap = Path(gl.workdir) / "mix.pcap"
    cap = capture(gl, pcap, "(udp port 4500 and greater 100) or ip proto 50", 8)
    try:
        assert ping(gl, count=3) and ping(gl, "203.0.113.200", "198.51.100.200", count=3)
        cap.wait(timeout=15)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    from scapy.layers.inet import IP, UDP
    from scapy.utils import rdpcap

    pkts = rdpcap(str(pcap))
    assert any(UDP in p for p in pkts) and any(p[IP].proto == 50 for p in pkts)
    edit(gl, f'<policies xmlns:nc="{NC}"><policy nc:operation="delete"><name>mix-ike</name>'
             '</policy><policy nc:operation="delete"><name>mix-esp</name></policy></policies>')
    poll(lambda: status(gl, "mix-esp") == (None, None), 20, "IKE-less policy removed")


def test_bad_input_leaves_charon_unchanged(gl: Any, tmp_path: Path) -> None:
    from ncclient.operations.rpc import RPCError

    from controller.ipsec.ca import ControllerCA, write_private

    edit(gl, policy("ikb"))
    wait_active(gl, "ikb")
    before = {s: conns(gl, s) for s in ("a", "b")}

    def refused(body: str) -> RPCError:
        with pytest.raises(RPCError) as ei:
            edit(gl, body)
        return ei.value

    e = refused(policy("ikb2", "kerberos", a_prefix="198.51.100.0/26"))
    assert e.tag in ("invalid-value", "bad-element")
    e = refused(policy("ikb", extra=f"<pre-shared-key-file>{tmp_path}/nope"
                       "</pre-shared-key-file>"))
    assert e.tag == "data-missing" and "pre-shared key" in e.message
    ca = ControllerCA(gl.workdir / "controller")  # the controller's own CA issued it
    cred = ca.issue("wrong", "192.0.2.99")
    write_private(tmp_path / "c.pem", cred.cert_pem)
    write_private(tmp_path / "k.pem", cred.key_pem)
    e = refused(f'<nsfs><nsf><name>gwa</name><ike><certificate-file>{tmp_path}/c.pem'
                f"</certificate-file><private-key-file>{tmp_path}/k.pem</private-key-file>"
                "</ike></nsf></nsfs>" + policy("ikb", "certificate"))
    assert "identity" in e.message
    time.sleep(0.5)
    assert {s: conns(gl, s) for s in ("a", "b")} == before
    assert status(gl, "ikb")[0] == "active"
    delete_policy(gl, "ikb")
    poll(lambda: "fp/" not in conns(gl, "a"), 20, "connections unloaded")


def _rw_host(gl: Any, suffix: str, outer: str, gw_addr: str) -> str:
    """A road-warrior namespace linked to gwB by its own veth pair (/30)."""
    from pyroute2 import IPRoute, NetNS, netns

    rw_ns = f"{gl.prefix}-{suffix}"
    netns.create(rw_ns)
    gl.lab.namespaces.append(rw_ns)  # destroyed with the lab
    with IPRoute() as ipr:
        t1, t2 = f"{gl.prefix[:8]}{suffix}1", f"{gl.prefix[:8]}{suffix}2"
        ipr.link("add", ifname=t1, kind="veth", peer=t2)
        for tmp, ns, name, addr in ((t1, rw_ns, "eth0", outer), (t2, gl.lab.gw_b, suffix,
                                                                   gw_addr)):
            ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
            with NetNS(ns) as nsr:
                j = nsr.link_lookup(ifname=tmp)[0]
                nsr.link("set", index=j, ifname=name)
                nsr.addr("add", index=j, address=addr, prefixlen=30)
                nsr.link("set", index=j, state="up")
                nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
    gl.lab.run(rw_ns, ["ip", "route", "add", "192.0.2.2/32", "via", gw_addr])
    return rw_ns


def _load_bundle(gl: Any, name: str, rw_ns: str, vip: bool = False) -> Any:
    """Export the road warrior's bundle and load it into a stock charon in `rw_ns`."""
    from nsf_agent.ike.charon import Charon, CharonSettings

    bundle = gl.workdir / name
    r = gl.cli("roadwarrior", "export", name, "--out", str(bundle))
    assert r.returncode == 0, r.stderr
    assert oct((bundle / "private" / "host.pem").stat().st_mode & 0o777) == "0o600"
    poll(lambda: f"fp/rw/{name}" in conns(gl, "b"), 20, f"gwB accepts road warrior {name}")
    charon = Charon(gl.workdir / f"{name}-charon",
                    CharonSettings(libipsec=True, install_virtual_ip=vip), netns=rw_ns)
    charon.start()
    r = subprocess.run(["swanctl", "--load-all", "--file", str(bundle / "swanctl.conf"),
                        "--uri", f"unix://{charon.vici_socket}"], capture_output=True,
                       text=True, timeout=30, env={**os.environ, "SWANCTL_DIR": str(bundle)})
    if r.returncode != 0:
        charon.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    return charon


def _remove_rw(gl: Any, name: str) -> None:
    edit(gl, f'<road-warriors><road-warrior xmlns:nc="{NC}" nc:operation="delete">'
             f"<name>{name}</name></road-warrior></road-warriors>")
    poll(lambda: f"fp/rw/{name}" not in conns(gl, "b"), 20, "road warrior removed from gwB")


def test_road_warrior(gl: Any) -> None:
    rw_ns = _rw_host(gl, "rw", RW_OUTER, RW_GW)
    gl.lab.run(rw_ns, ["ip", "addr", "add", f"{RW_INNER}/32", "dev", "lo"])
    r = gl.cli("roadwarrior", "add", "alice", "--gateway", "gwb", "--identity",
               "alice.rw.test", "--inner-address", RW_INNER, "--profile", "lab")
    assert r.returncode == 0, r.stderr
    charon = _load_bundle(gl, "alice", rw_ns)
    try:
        poll(lambda: ping(gl, HOST_B, RW_INNER, ns=rw_ns), 30,
             "road warrior → hostB through gwB", interval=0.3)
        poll(lambda: status(gl, "alice", "road-warrior")[0] == "active", 10,
             "road warrior active in the controller's state")
    finally:
        charon.stop()
    _remove_rw(gl, "alice")


def test_road_warrior_virtual_ip_from_a_pool(gl: Any) -> None:
    import ipaddress

    pool = ipaddress.ip_network("10.79.0.0/28")
    rw_ns = _rw_host(gl, "rv", "10.78.0.2", "10.78.0.1")
    r = gl.cli("roadwarrior", "add", "bob", "--gateway", "gwb", "--identity",
               "bob.rw.test", "--pool", str(pool), "--profile", "lab")
    assert r.returncode == 0, r.stderr
    poll(lambda: "i2nsf-fp/rw/bob" in swanctl(gl, "b", "--list-pools"), 20,
         "gwB holds the pool")
    charon = _load_bundle(gl, "bob", rw_ns, vip=True)
    uri = f"unix://{charon.vici_socket}"
    try:
        def vip() -> str | None:
            out = gl.lab.run(rw_ns, ["ip", "-4", "-o", "addr", "show"]).stdout
            for line in out.splitlines():
                addr = line.split()[3].split("/")[0]
                if ipaddress.ip_address(addr) in pool:
                    return addr
            return None

        try:
            addr = poll(vip, 30, "a virtual IP from the pool on the road warrior",
                        interval=0.3)
        except TimeoutError:
            print((gl.workdir / "bob-charon" / "charon.log").read_text()[-3000:])
            print((gl.agent_state("b") / "ike" / "charon.log").read_text()[-3000:])
            raise
        listed = subprocess.run(["swanctl", "--list-sas", "--uri", uri], capture_output=True,
                                text=True, timeout=20).stdout
        assert f"{addr}/32" in listed, listed  # the host's selector is its virtual IP
        poll(lambda: ping(gl, HOST_B, addr, ns=rw_ns), 30,
             "road warrior (virtual IP) → hostB through gwB", interval=0.3)
        poll(lambda: status(gl, "bob", "road-warrior")[0] == "active", 10,
             "road warrior active in the controller's state")
        leases = swanctl(gl, "b", "--list-pools", "--leases")
        assert addr in leases and "online" in leases, leases
    finally:
        charon.stop()
    _remove_rw(gl, "bob")
    poll(lambda: "i2nsf-fp/rw/bob" not in swanctl(gl, "b", "--list-pools"), 20,
         "pool unloaded from gwB")
