"""The ike applier end to end below NETCONF: two gateways in network namespaces, each with
its own charon (kernel-libipsec where the kernel has no ESP) driven through the datastore
layer with RFC 9061 ietf-i2nsf-ike configuration; a host behind each gateway.

    h1 (192.0.2.10) ── gw1 (192.0.2.1 | 198.51.100.1) ══ gw2 (198.51.100.2 | 203.0.113.1) ── h2
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree

from netconf_core import polling
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import IPSEC_MODULES, create_context
from nsf_agent.appliers.ike import EV_NS, IkeApplier
from nsf_agent.ike.charon import CHARON, Vici

IKE = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ike"
Q = f"{{{IKE}}}"
EV = f"{{{EV_NS}}}"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces"),
    pytest.mark.skipif(shutil.which("ip") is None or shutil.which("unshare") is None,
                       reason="needs iproute2 and util-linux unshare"),
    pytest.mark.skipif(not Path(CHARON).exists(),
                       reason=f"needs strongSwan charon at {CHARON} (Debian strongswan-charon, "
                              "libcharon-extra-plugins, libstrongswan-extra-plugins)"),
]

GW1, GW2 = "198.51.100.1", "198.51.100.2"
NET1, NET2 = "192.0.2.0/24", "203.0.113.0/24"
H1, H2 = "192.0.2.10", "203.0.113.10"
PSK = "0f:1e:2d:3c:4b:5a:69:78:87:96:a5:b4:c3:d2:e1:f0"


def wait_until(pred: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.1) -> Any:
    return polling.wait_until(pred, timeout, what, interval)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


def nsx(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


# ---- topology ------------------------------------------------------------------------------


@dataclass
class Lab:
    tag: str

    @property
    def gw1(self) -> str:
        return f"ikg1-{self.tag}"

    @property
    def gw2(self) -> str:
        return f"ikg2-{self.tag}"

    @property
    def h1(self) -> str:
        return f"ikh1-{self.tag}"

    @property
    def h2(self) -> str:
        return f"ikh2-{self.tag}"

    @property
    def wan1(self) -> str:  # gw1's end of the gateway link (captured on)
        return f"w1{self.tag}"

    def namespaces(self) -> list[str]:
        return [self.gw1, self.gw2, self.h1, self.h2]

    def build(self) -> None:
        t = self.tag
        for n in self.namespaces():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")

        def link(a_ns: str, a: str, a_addr: str, b_ns: str, b: str, b_addr: str) -> None:
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            for ns, dev, addr in ((a_ns, a, a_addr), (b_ns, b, b_addr)):
                sh("ip", "link", "set", dev, "netns", ns)
                sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
                sh("ip", "-n", ns, "link", "set", dev, "up")

        link(self.gw1, self.wan1, f"{GW1}/24", self.gw2, f"w2{t}", f"{GW2}/24")
        link(self.h1, f"h1{t}", f"{H1}/24", self.gw1, f"l1{t}", "192.0.2.1/24")
        link(self.h2, f"h2{t}", f"{H2}/24", self.gw2, f"l2{t}", "203.0.113.1/24")
        sh("ip", "-n", self.h1, "route", "add", "default", "via", "192.0.2.1")
        sh("ip", "-n", self.h2, "route", "add", "default", "via", "203.0.113.1")
        for gw in (self.gw1, self.gw2):
            nsx(gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")

    def destroy(self) -> None:
        for n in self.namespaces():
            sh("ip", "netns", "del", n, check=False)


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context((*IPSEC_MODULES, "i2nsf-ike-events")))


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(f"{os.getpid() % 10000}{secrets.token_hex(2)}")
    try:
        lab.build()
        yield lab
    finally:
        lab.destroy()


class Inbox:
    """Collects an applier's notifications, each checked against the YANG schema."""

    def __init__(self, schema: YangSchema) -> None:
        self.schema = schema
        self.items: list[etree._Element] = []
        self.invalid: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, elem: etree._Element) -> None:
        try:
            self.schema.validate_notification(elem)
        except RpcError as exc:
            self.invalid.append(f"{etree.tostring(elem)!r}: {exc.message}")
        with self._cond:
            self.items.append(elem)
            self._cond.notify_all()

    def find(self, kind: str, **leaves: str) -> etree._Element | None:
        with self._cond:
            for n in self.items:
                if etree.QName(n).localname == kind and all(
                        n.findtext(EV + k.replace("_", "-")) == v for k, v in leaves.items()):
                    return n
        return None

    def wait(self, kind: str, timeout: float, **leaves: str) -> etree._Element:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = None
                for n in self.items:
                    if etree.QName(n).localname == kind and all(
                            n.findtext(EV + k.replace("_", "-")) == v
                            for k, v in leaves.items()):
                        found = n
                        break
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [etree.QName(n).localname for n in self.items]
                    raise AssertionError(f"no {kind} notification within {timeout}s "
                                         f"(got {got})")
                self._cond.wait(left)


@dataclass
class Gateway:
    ns: str
    applier: IkeApplier
    store: Datastores
    inbox: Inbox

    @property
    def vici(self) -> Vici:
        return self.applier.vici

    def edit(self, ipsec_ike: etree._Element | str) -> None:
        if isinstance(ipsec_ike, str):
            ipsec_ike = etree.fromstring(ipsec_ike)
        cfg = etree.Element(f"{{{NC_NS}}}config", nsmap={None: NC_NS})
        cfg.append(ipsec_ike)
        self.store.edit_config("running", cfg, default_operation="replace")

    def delete_all(self) -> None:
        self.edit(f'<ipsec-ike xmlns="{IKE}" xmlns:nc="{NC_NS}" nc:operation="delete"/>')

    def conns(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for ev in self.vici.stream("list-conns", "list-conn"):
            out.update(ev)
        return out

    def shared(self) -> list[bytes]:
        return sorted(self.vici.request("get-shared").get("keys", []))

    def sas(self) -> list[tuple[str, dict[str, Any]]]:
        return self.applier.list_sas()

    def installed_child(self) -> dict[str, Any] | None:
        for _, sa in self.sas():
            if sa.get("state") != b"ESTABLISHED":
                continue
            for child in sa.get("child-sas", {}).values():
                if child.get("state") == b"INSTALLED":
                    return dict(child)
        return None


@pytest.fixture
def gateways(lab: Lab, schema: YangSchema, tmp_path: Path) -> Iterator[tuple[Gateway, Gateway]]:
    gws: list[Gateway] = []
    try:
        for i, ns in enumerate((lab.gw1, lab.gw2)):
            state = tmp_path / f"gw{i + 1}"
            state.mkdir()
            ap = IkeApplier(state, netns=ns, dpd_delay=5)
            store = Datastores(schema, [ap], state_dir=state)
            inbox = Inbox(schema)
            gws.append(Gateway(ns, ap, store, inbox))
            ap.bind(inbox)
            store.reconcile()
        yield gws[0], gws[1]
    finally:
        for gw in gws:
            proc = gw.applier.charon.proc if gw.applier.charon else None
            gw.applier.close()
            if proc is not None:
                assert proc.poll() is not None, "charon outlived its applier"
        for gw in gws:
            assert not gw.inbox.invalid, gw.inbox.invalid


# ---- configuration ---------------------------------------------------------------------------


def pad_entry(name: str, ip: str, auth: str) -> str:
    return (f"<pad-entry><name>{name}</name><ipv4-address>{ip}</ipv4-address>"
            f"<peer-authentication>{auth}</peer-authentication></pad-entry>")


def psk_auth(secret: str | None = PSK) -> str:
    s = f"<pre-shared><secret>{secret}</secret></pre-shared>" if secret else ""
    return f"<auth-method>pre-shared</auth-method>{s}"


def conn_entry(name: str, local_pad: str, remote_pad: str, local_ip: str, remote_ip: str,
               local_net: str, remote_net: str, autostartup: str = "start") -> str:
    return f"""
  <conn-entry>
    <name>{name}</name>
    <autostartup>{autostartup}</autostartup>
    <ike-sa-lifetime-soft><rekey-time>3600</rekey-time></ike-sa-lifetime-soft>
    <ike-sa-intr-alg>12</ike-sa-intr-alg>
    <ike-sa-encr-alg><id>1</id><algorithm-type>20</algorithm-type>
      <key-length>256</key-length></ike-sa-encr-alg>
    <dh-group>19</dh-group>
    <local><local-pad-entry-name>{local_pad}</local-pad-entry-name></local>
    <remote><remote-pad-entry-name>{remote_pad}</remote-pad-entry-name></remote>
    <spd>
      <spd-entry>
        <name>{name}-net</name>
        <ipsec-policy-config>
          <traffic-selector>
            <local-prefix>{local_net}</local-prefix>
            <remote-prefix>{remote_net}</remote-prefix>
          </traffic-selector>
          <processing-info>
            <action>protect</action>
            <ipsec-sa-cfg>
              <mode>tunnel</mode>
              <esp-algorithms>
                <encryption><id>1</id><algorithm-type>20</algorithm-type>
                  <key-length>256</key-length></encryption>
              </esp-algorithms>
              <tunnel><local>{local_ip}</local><remote>{remote_ip}</remote></tunnel>
            </ipsec-sa-cfg>
          </processing-info>
        </ipsec-policy-config>
      </spd-entry>
    </spd>
    <child-sa-info>
      <fs-groups>19</fs-groups>
      <child-sa-lifetime-soft><time>1800</time></child-sa-lifetime-soft>
      <child-sa-lifetime-hard><time>2000</time></child-sa-lifetime-hard>
    </child-sa-info>
  </conn-entry>"""


def gw_config(side: int, local_auth: str, remote_auth: str, autostartup: str = "start",
              extra_conns: str = "", extra_pads: str = "") -> str:
    me, peer = (GW1, GW2) if side == 1 else (GW2, GW1)
    mine, theirs = (NET1, NET2) if side == 1 else (NET2, NET1)
    return f"""<ipsec-ike xmlns="{IKE}">
  <pad>
    {pad_entry("me", me, local_auth)}
    {pad_entry("peer", peer, remote_auth)}
    {extra_pads}
  </pad>
  {conn_entry("g2g", "me", "peer", me, peer, mine, theirs, autostartup)}
  {extra_conns}
</ipsec-ike>"""


def ping(lab: Lab, count: int = 1) -> bool:
    return nsx(lab.h1, "ping", "-c", str(count), "-W", "1", H2, check=False).returncode == 0


# ---- tests -----------------------------------------------------------------------------------


def test_psk_tunnel_up_traffic_esp_in_udp_and_delete(
        lab: Lab, gateways: tuple[Gateway, Gateway], tmp_path: Path) -> None:
    gw1, gw2 = gateways
    gw1.edit(gw_config(1, psk_auth(), psk_auth()))
    gw2.edit(gw_config(2, psk_auth(), psk_auth()))
    assert list(gw1.conns()) == ["i2nsf-g2g"]
    assert gw1.shared() == [b"i2nsf-psk:me:peer"]

    child = wait_until(gw1.installed_child, 30, "an installed Child SA on gw1")
    assert child["name"] == b"g2g-net"
    wait_until(gw2.installed_child, 30, "an installed Child SA on gw2")

    # ESP in UDP 4500 on the wire between the gateways while hosts ping through the tunnel
    pcap = tmp_path / "wan.pcap"
    cap = subprocess.Popen(
        ["ip", "netns", "exec", lab.gw1, "tcpdump", "-i", lab.wan1, "-nn", "-U", "-c", "6",
         "-w", str(pcap), "udp port 4500 and greater 100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert cap.stderr is not None
        line = cap.stderr.readline()  # "listening on ..." once the capture is armed
        assert "listening" in line, line
        wait_until(lambda: ping(lab), 20, "h1 → h2 ping through the tunnel", interval=0.2)
        assert ping(lab, count=3)
        cap.wait(timeout=15)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    child = wait_until(gw1.installed_child, 5, "gw1's Child SA")
    spis = {int(child["spi-in"], 16), int(child["spi-out"], 16)}
    seen = set()
    for pkt in rdpcap(str(pcap)):
        payload = bytes(pkt[UDP].payload)
        assert pkt[UDP].sport == 4500 and pkt[UDP].dport == 4500
        spi = int.from_bytes(payload[:4], "big")
        assert spi != 0, "IKE (non-ESP marker) where ESP was expected"
        seen.add(spi)
    assert seen and seen <= spis | {0}, (seen, spis)
    assert int(child["packets-out"]) >= 3

    # operational state and notifications
    data = gw1.store.get_state()
    st = data.find(f"{Q}ipsec-ike/{Q}conn-entry/{Q}state")
    assert st is not None
    assert st.findtext(f"{EV}ike-sa-state") == "ESTABLISHED"
    assert st.findtext(f"{Q}encapsulation-type/{Q}espencap") == "espinudp"
    cs = st.find(f"{EV}child-sa")
    assert cs.findtext(f"{EV}spd-entry-name") == "g2g-net"
    assert int(cs.findtext(f"{EV}packets-out")) >= 3
    assert data.findtext(f"{Q}ipsec-ike/{Q}number-ike-sas/{Q}total") in ("1", "2")
    gw1.inbox.wait("ike-sa-up", 10, connection_name="g2g", peer=GW2)
    gw1.inbox.wait("child-sa-up", 10, connection_name="g2g", spd_entry_name="g2g-net")

    # delete on gw1: connection and secret unloaded, SAs gone on both sides
    gw1.delete_all()
    assert gw1.conns() == {}
    assert gw1.shared() == []
    wait_until(lambda: not gw1.sas(), 15, "gw1's IKE SAs to go")
    wait_until(lambda: not gw2.installed_child(), 15, "gw2's Child SA to go")
    gw1.inbox.wait("ike-sa-down", 10, connection_name="g2g")
    assert not ping(lab)


def test_wrong_psk_raises_auth_failure(gateways: tuple[Gateway, Gateway]) -> None:
    gw1, gw2 = gateways
    other = "aa:" + PSK[3:]
    gw1.edit(gw_config(1, psk_auth(), psk_auth()))
    gw2.edit(gw_config(2, psk_auth(other), psk_auth(other)))
    def failure() -> etree._Element | None:
        for gw in (gw1, gw2):
            n = gw.inbox.find("auth-failure")
            if n is not None:
                return n
        return None

    n = wait_until(lambda: (failure(),)[0] is not None, 30, "an auth-failure notification")
    n = failure()
    assert n is not None
    assert n.findtext(EV + "connection-name") == "g2g"
    assert n.findtext(EV + "peer") in (GW1, GW2)
    assert n.findtext(EV + "reason")
    assert gw1.installed_child() is None and gw2.installed_child() is None


def test_bad_input_leaves_charon_unchanged(gateways: tuple[Gateway, Gateway]) -> None:
    gw1, _ = gateways
    gw1.edit(gw_config(1, psk_auth(), psk_auth(), autostartup="add"))
    conns, shared = gw1.conns(), gw1.shared()
    running = gw1.store.serialize("running")
    assert list(conns) == ["i2nsf-g2g"] and shared == [b"i2nsf-psk:me:peer"]

    def unchanged() -> None:
        assert gw1.conns() == conns
        assert gw1.shared() == shared
        assert gw1.store.serialize("running") == running

    # missing PSK: rejected by the translation before charon is touched
    with pytest.raises(RpcError) as ei:
        gw1.edit(gw_config(1, psk_auth(None), psk_auth(None), autostartup="add"))
    assert ei.value.error_tag == "data-missing"
    assert ei.value.path.endswith("/pre-shared/secret")
    unchanged()

    # unknown auth method: rejected by YANG validation
    with pytest.raises(RpcError) as ei:
        gw1.edit(gw_config(1, "<auth-method>kerberos</auth-method>", psk_auth(), "add"))
    assert ei.value.error_tag in ("invalid-value", "bad-element")
    unchanged()

    # charon itself refuses a connection (NULL authentication is not in this charon's vici)
    # after a new PSK, a changed secret and a new connection were loaded: all undone
    extra = conn_entry("aaa-new", "me", "peer2", GW1, "198.51.100.3", NET1, "203.0.113.64/26",
                       autostartup="add")
    extra += conn_entry("zzz-null", "me", "nullpeer", GW1, "198.51.100.4", NET1,
                        "203.0.113.128/26", autostartup="add")
    pads = pad_entry("peer2", "198.51.100.3", psk_auth()) + (
        '<pad-entry><name>nullpeer</name><ipv4-address>198.51.100.4</ipv4-address>'
        '<peer-authentication><auth-method>null</auth-method></peer-authentication>'
        '</pad-entry>')
    bad = gw_config(1, psk_auth("11:22:33"), psk_auth("11:22:33"), "add", extra, pads)
    with pytest.raises(RpcError) as ei:
        gw1.edit(bad)
    err = ei.value
    assert err.error_tag == "operation-failed"
    assert "zzz-null" in err.message and "load-conn" in err.message
    assert "invalid value for: auth" in err.message  # charon's own words
    assert err.path == "/ietf-i2nsf-ike:ipsec-ike/conn-entry[name='zzz-null']"
    unchanged()

    # a certificate for the wrong identity
    ca = make_ca()
    gw_wrong = make_cert(ca, "gw1", "198.51.100.99")
    with pytest.raises(RpcError) as ei:
        gw1.edit(gw_config(1, cert_auth(gw_wrong), ca_auth(ca), "add"))
    assert ei.value.app_tag == "identity-mismatch"
    unchanged()


# ---- certificates ----------------------------------------------------------------------------


def make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "i2nsf test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str,
              ip: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca[1].subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .sign(ca[0], hashes.SHA256()))
    return key, cert


def _b64der(obj: Any) -> str:
    if isinstance(obj, x509.Certificate):
        der = obj.public_bytes(serialization.Encoding.DER)
    else:
        der = obj.private_bytes(serialization.Encoding.DER,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return base64.b64encode(der).decode()


def cert_auth(own: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> str:
    return ("<auth-method>digital-signature</auth-method><digital-signature>"
            f"<cert-data>{_b64der(own[1])}</cert-data>"
            f"<private-key>{_b64der(own[0])}</private-key></digital-signature>")


def ca_auth(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> str:
    return ("<auth-method>digital-signature</auth-method><digital-signature>"
            f"<ca-data>{_b64der(ca[1])}</ca-data></digital-signature>")


def test_certificates_tunnel(lab: Lab, gateways: tuple[Gateway, Gateway]) -> None:
    gw1, gw2 = gateways
    ca = make_ca()
    gw1.edit(gw_config(1, cert_auth(make_cert(ca, "gw1", GW1)), ca_auth(ca)))
    gw2.edit(gw_config(2, cert_auth(make_cert(ca, "gw2", GW2)), ca_auth(ca)))
    assert gw1.shared() == []
    assert len(gw1.applier._ledger()) == 1  # the private key, by reference
    wait_until(gw1.installed_child, 30, "an installed Child SA (certificates)")
    wait_until(lambda: ping(lab), 20, "h1 → h2 ping through the certificate tunnel", interval=0.2)
    [(_, sa)] = [x for x in gw1.sas() if x[1].get("state") == b"ESTABLISHED"][:1]
    assert sa["remote-id"] == GW2.encode()

    # a restarted charon gets its private key back and brings the tunnel up again
    charon = gw1.applier.charon
    assert charon is not None and charon.proc is not None
    os.kill(charon.proc.pid, signal.SIGKILL)
    wait_until(lambda: charon.restarts >= 1 and charon.running(), 20, "charon restarted")
    wait_until(gw1.installed_child, 40, "the certificate tunnel after a charon restart")
    wait_until(lambda: ping(lab), 20, "ping after the charon restart", interval=0.2)
    gw1.delete_all()
    assert gw1.applier._ledger() == {}
    assert gw1.conns() == {}


# ---- supervision and reconciliation ---------------------------------------------------------


def test_charon_restart_and_reconcile(gateways: tuple[Gateway, Gateway]) -> None:
    gw1, _ = gateways
    gw1.edit(gw_config(1, psk_auth(), psk_auth(), autostartup="add"))
    charon = gw1.applier.charon
    assert charon is not None and charon.proc is not None
    old_pid = charon.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: charon.restarts >= 1 and charon.running(), 20, "charon restarted")
    assert charon.proc.pid != old_pid
    wait_until(lambda: list(gw1.conns()) == ["i2nsf-g2g"], 10,
               "the connection reloaded into the new charon")
    assert gw1.shared() == [b"i2nsf-psk:me:peer"]

    # reconcile: our stale connection goes, a foreign one stays
    stale = {"i2nsf-stale": {"remote_addrs": ["198.51.100.9"], "local": {"auth": "psk"},
                             "remote": {"auth": "psk"}}}
    foreign = {"someone-else": {"remote_addrs": ["198.51.100.9"], "local": {"auth": "psk"},
                                "remote": {"auth": "psk"}}}
    gw1.vici.request("load-conn", stale)
    gw1.vici.request("load-conn", foreign)
    gw1.store.reconcile()
    assert sorted(gw1.conns()) == ["i2nsf-g2g", "someone-else"]


# ---- the whole agent over NETCONF ------------------------------------------------------------


class NetnsAgent:
    """`i2nsf-agent run` inside a gateway namespace with the ike applier, driven by ncclient
    (the agent listens on the namespace's loopback)."""

    def __init__(self, netns: str, state: Path) -> None:
        from netconf_core.auth import hash_password

        self.netns, self.state = netns, state
        self.password = "ike-pw-" + secrets.token_hex(4)
        self.port = 18300 + secrets.randbelow(1000)
        self.cfg = state.parent / f"{state.name}.toml"
        self.cfg.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {self.port}\nstate_dir = "{state}"\n'
            '[yang]\nmodules = ["ietf-i2nsf-ikec", "ietf-i2nsf-ike", "ietf-i2nsf-ikeless", '
            '"i2nsf-ike-events"]\n'
            '[dataplane]\nappliers = ["nsf_agent.appliers.ike:create"]\n'
            f'[[users]]\nname = "admin"\npassword_hash = "{hash_password(self.password)}"\n')
        self.log = state.parent / f"{state.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _sock(self) -> Any:
        import socket

        out: dict[str, Any] = {}

        def work() -> None:
            from pyroute2 import netns as pnetns

            try:
                pnetns.setns(self.netns)
                out["s"] = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError as exc:
                out["e"] = exc

        t = threading.Thread(target=work)
        t.start()
        t.join()
        if "e" in out:
            raise out["e"]
        return out["s"]

    def start(self) -> None:
        import sys

        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "nsf_agent.cli",
                 "run", "-c", str(self.cfg)], stdout=log, stderr=log)

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.log.read_text()[-2000:]}")
            try:
                self._sock().close()
                return True
            except OSError:
                return False

        wait_until(listening, 30, "the agent to listen")

    def connect(self) -> Any:
        from ncclient import manager

        return manager.connect(
            host="127.0.0.1", port=self.port, username="admin", password=self.password,
            sock=self._sock(), hostkey_verify=False, allow_agent=False, look_for_keys=False,
            timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        pidfile = self.state / "ike" / "charon-run" / "charon.pid"
        if pidfile.exists():  # the agent died without stopping its charon
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.fixture
def agents(lab: Lab, tmp_path: Path) -> Iterator[tuple[NetnsAgent, NetnsAgent]]:
    import ncclient.transport.session as nc_session

    nc_session.TICK = 0.001
    started: list[NetnsAgent] = []
    try:
        for i, ns in enumerate((lab.gw1, lab.gw2)):
            a = NetnsAgent(ns, tmp_path / f"agent{i + 1}")
            started.append(a)
            a.start()
        yield started[0], started[1]
    finally:
        for a in started:
            a.stop()


def test_over_netconf(lab: Lab, agents: tuple[NetnsAgent, NetnsAgent]) -> None:
    a1, a2 = agents
    with a1.connect() as m1, a2.connect() as m2:
        assert any("i2nsf-ike-events" in c for c in m1.server_capabilities)
        m1.create_subscription()
        for m, side in ((m1, 1), (m2, 2)):
            m.edit_config(target="candidate", config=(
                f'<config xmlns="{NC_NS}">{gw_config(side, psk_auth(), psk_auth())}</config>'))
            m.commit()
        flt = ("subtree", f'<ipsec-ike xmlns="{IKE}"><conn-entry><state/></conn-entry>'
                          "</ipsec-ike>")

        def child_state() -> etree._Element | None:
            data = etree.fromstring(m1.get(filter=flt).data_xml.encode())
            for cs in data.iter(f"{EV}child-sa"):
                if cs.findtext(f"{EV}sa-state") == "INSTALLED":
                    return cs
            return None

        wait_until(lambda: child_state() is not None, 30, "an INSTALLED child-sa in <get>")
        wait_until(lambda: ping(lab), 20, "ping through the tunnel", interval=0.2)

        def notification(kind: str) -> bool:
            n = m1.take_notification(block=True, timeout=0.5)
            if n is None:
                return False
            root = etree.fromstring(n.notification_xml.encode())
            return any(etree.QName(c).localname == kind and etree.QName(c).namespace == EV_NS
                       for c in root)

        wait_until(lambda: notification("ike-sa-up"), 20, "ike-sa-up over NETCONF")
        m1.edit_config(target="candidate", default_operation="none", config=(
            f'<config xmlns="{NC_NS}"><ipsec-ike xmlns="{IKE}" xmlns:nc="{NC_NS}" '
            'nc:operation="delete"/></config>'))
        m1.commit()
        wait_until(lambda: notification("ike-sa-down"), 20, "ike-sa-down over NETCONF")
        assert not ping(lab)
