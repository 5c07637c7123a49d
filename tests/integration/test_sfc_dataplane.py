"""The SFC data plane end to end in namespaces: classifier (C) → SFF + SFC proxy → a plain
forwarding SF → SFF (F) → SFF that ends the path (E) → host B. C and E are configured through
the datastore layer, F through a real agent over SSH NETCONF (ncclient), whose notifications
(table miss, TTL expiry, loop, inspection result) are received with a subscription. Bytes on
the wire are decoded by tshark."""

from __future__ import annotations

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

from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.polling import wait_until
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent.sfc import nsh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tshark") is None
    or shutil.which("tcpdump") is None,
    reason="needs root, iproute2, tcpdump and tshark (namespaces, raw sockets, captures)",
)

SFC = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"
Q = f"{{{SFC}}}"


class Node:
    """C or E: an sfc applier under a datastore, its data path in the node's namespace."""

    def __init__(self, schema: YangSchema, netns: str, state: Path) -> None:
        self.schema, self.netns, self.state = schema, netns, state
        self.start()

    def start(self) -> None:
        from nsf_agent.appliers.sfc import SfcApplier

        schema, netns, state = self.schema, self.netns, self.state
        self.applier = SfcApplier(state, netns=netns)
        self.notes: list[etree._Element] = []
        self.applier.bind(self.notes.append)
        self.ds = Datastores(schema, [self.applier], state_dir=state)
        self.ds.reconcile()

    def push(self, xml: str) -> None:
        self.ds.edit_config("running", etree.fromstring(f'<config xmlns="{NC_NS}">{xml}</config>'),
                            default_operation="replace")

    def close(self) -> None:
        self.applier.close(stop_datapath=True)


class Lab:
    def __init__(self, tmp: Path) -> None:
        from nsf_agent.agent import Agent
        from nsf_agent.appliers.sfc import SfcApplier
        from nsf_agent.sfc import lab as L
        from tests.integration.ncharness import AgentThread

        self.L = L
        self.net = L.SfcLab.unique(1, tag="i2sfc")
        self.nodes: list[Node] = []
        self.agent: Any = None
        self.fsfc: Any = None
        self.m: Any = None
        try:
            self._start(tmp, Agent, AgentThread, SfcApplier)
        except BaseException:
            self.close()   # never leave namespaces or processes behind a failed set-up
            raise

    def _start(self, tmp: Path, Agent: Any, AgentThread: Any, SfcApplier: Any) -> None:
        self.net.build()
        schema = YangSchema(create_context(["i2nsf-sfc-nsf"]))
        self.c = Node(schema, self.net.c, tmp / "c")
        self.nodes.append(self.c)
        self.e = Node(schema, self.net.e, tmp / "e")
        self.nodes.append(self.e)
        self.results = str(tmp / "sf0-results.sock")
        fsfc = self.fsfc = SfcApplier(tmp / "f", netns=self.net.f)
        t = AgentThread(tmp / "f", modules=["i2nsf-sfc-nsf"])
        t.applier = fsfc  # type: ignore[assignment]
        t.agent = Agent(t.agent.config, appliers=[fsfc])
        self.agent = t.start()
        self.m = t.connect()
        self.m.create_subscription()
        self.configure()

    def configure(self) -> None:
        L = self.L
        self.e.push(L.end_xml(self.net))
        self.edit_f(L.middle_xml(self.net, sockets=[self.results]))
        self.c.push(L.classifier_xml())

    def edit_f(self, sfc_xml: str, op: str = "replace") -> None:
        self.m.edit_config(target="running", default_operation=op,
                           config=f'<config xmlns="{NC_NS}">{sfc_xml}</config>')

    def f_config(self) -> str:
        return str(self.m.get_config(source="running").data_xml)

    def f_stats(self) -> dict[str, Any]:
        return self.fsfc.stats()

    def notifications(self, name: str, timeout: float = 5.0) -> etree._Element:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.m.take_notification(timeout=max(0.05, deadline - time.monotonic()))
            if n is None:
                continue
            root = etree.fromstring(n.notification_xml.encode())
            found = root.find(Q + name)
            if found is not None:
                return found
        raise TimeoutError(f"no {name} notification")

    def ping(self, count: int = 1, wait: float = 2.0) -> bool:
        r = self.net.run(self.net.host_a, ["ping", "-c", str(count), "-i", "0.2", "-W",
                                           str(wait), self.L.HOST_B])
        return r.returncode == 0

    def close(self) -> None:
        with_errors = []
        for fn in (lambda: self.m and self.m.close_session(),
                   lambda: self.agent and self.agent.stop(),
                   lambda: self.fsfc and self.fsfc.close(stop_datapath=True),
                   *(n.close for n in self.nodes), self.net.destroy):
            try:
                fn()
            except Exception as exc:  # keep tearing down
                with_errors.append(exc)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("sfc"))
    try:
        yield lab
    finally:
        lab.close()


class Capture:
    """tcpdump on an interface of a namespace, decoded by tshark afterwards."""

    def __init__(self, netns: str, ifname: str, path: Path) -> None:
        self.path = path
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", netns, "tcpdump", "-i", ifname, "--immediate-mode", "-U",
             "-n", "-w", str(path), "ip proto 47 or ip6 proto 47"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        assert self.p.stderr is not None
        line = self.p.stderr.readline()    # "listening on ..." once the capture runs
        assert b"listening" in line, line

    def frames(self) -> list[dict[str, Any]]:
        self.p.terminate()
        self.p.communicate(timeout=5)
        out = subprocess.run(["tshark", "-r", str(self.path), "-T", "json", "--no-duplicate-keys"],
                             capture_output=True, text=True, check=True).stdout
        # IP fragments of big GRE packets: tshark reassembles them, the NSH shows once
        return [f["_source"]["layers"] for f in json.loads(out or "[]")
                if "nsh" in f["_source"]["layers"]]


def nsh_fields(layers: dict[str, Any]) -> tuple[int, int, int]:
    n = layers["nsh"]
    return int(n["nsh.spi"], 0), int(n["nsh.si"], 0), int(n["nsh.ttl"], 0)


def test_chain_carries_ping_and_tcp_with_expected_nsh_on_the_wire(lab: Lab, tmp_path: Path
                                                                   ) -> None:
    cap1 = Capture(lab.net.c, "f", tmp_path / "c-f.pcap")     # classifier → F
    cap2 = Capture(lab.net.f, "e", tmp_path / "f-e.pcap")     # F (after the SF) → E
    assert lab.ping(3)
    # TCP through the chain: an echo server on host B, a client on host A
    srv = lab.net.popen(lab.net.host_b, [sys.executable, "-c", (
        "import socket\ns=socket.create_server(('203.0.113.10',5001))\nprint('up',flush=True)\n"
        "c,_=s.accept()\nwhile True:\n d=c.recv(65536)\n if not d: break\n c.sendall(d)\n")],
        stdout=subprocess.PIPE)
    assert srv.stdout is not None and srv.stdout.readline().strip() == b"up"
    cli = lab.net.run(lab.net.host_a, [sys.executable, "-c", (
        "import socket,os\nd=os.urandom(200000)\ns=socket.create_connection(('203.0.113.10',5001),"
        "timeout=10)\ns.sendall(d)\ns.shutdown(1)\nb=b''\nwhile True:\n x=s.recv(65536)\n"
        " if not x: break\n b+=x\nprint(b==d)\n")], timeout=30)
    assert cli.stdout.strip() == "True", cli.stderr
    f1, f2 = cap1.frames(), cap2.frames()
    assert f1 and f2
    assert {nsh_fields(f) for f in f1} == {(10, 255, 63)}       # pushed by the classifier
    assert {nsh_fields(f) for f in f2} == {(10, 254, 61)}       # SI-1 by the SF, TTL-1 per SFF
    for f in f1 + f2:
        assert f["gre"]["gre.proto"] == "0x894f"
        ips = f["ip"] if isinstance(f["ip"], list) else [f["ip"]]
        assert ips[0]["ip.proto"] == "47" and len(ips) == 2   # outer IP / GRE / NSH / IP
        assert ips[1]["ip.dst"] == lab.L.HOST_B
    assert any("icmp" in f for f in f1) and any("tcp" in f for f in f2)
    st = lab.f_stats()
    assert st["proxies"]["sf0"]["to-sf"] == st["proxies"]["sf0"]["from-sf"] > 0
    # per-entry counters and per-rule counters in <get>
    data = etree.fromstring(str(lab.m.get(filter=("subtree", f'<sfc xmlns="{SFC}"/>')).data_xml)
                            .encode())
    pk = [int(e.findtext(f"{Q}statistics/{Q}packets")) for e in data.iter(Q + "entry")]
    assert len(pk) == 2 and all(p > 0 for p in pk)
    cst = lab.c.applier.stats()
    assert cst["rules"]["a-to-b"][0] > 0


def test_bad_configuration_is_refused_and_nothing_changes(lab: Lab) -> None:
    from ncclient.operations import RPCError

    L = lab.L
    before = lab.f_config()
    good = L.middle_xml(lab.net, sockets=[lab.results])
    cases = {
        "SI 0": good.replace("</table>", "<entry><spi>10</spi><si>0</si><next-hop>"
                             "<locator>192.0.2.6</locator></next-hop></entry></table>"),
        "address family": good.replace("</table>", "<entry><spi>11</spi><si>9</si><next-hop>"
                                       "<locator>2001:db8::1</locator></next-hop></entry></table>"),
        "does not exist": good.replace("<to-sf-interface>i0</to-sf-interface>",
                                       "<to-sf-interface>nosuch0</to-sf-interface>"),
        "another proxy": good.replace("</proxies>", "<proxy><name>dup</name><spi>10</spi><si>255"
                                      "</si><to-sf-interface>i0</to-sf-interface>"
                                      "<from-sf-interface>o0</from-sf-interface>"
                                      "<sf-mac>02:00:00:00:00:01</sf-mac></proxy></proxies>"),
        # duplicate (SPI, SI) in the table: the list key already refuses it
        "": good.replace("</table>", "<entry><spi>10</spi><si>254</si><next-hop><locator>"
                         "192.0.2.9</locator></next-hop></entry></table>"),
    }
    for words, xml in cases.items():
        with pytest.raises(RPCError) as ei:
            lab.edit_f(xml)
        assert words in str(ei.value), (words, str(ei.value))
        assert lab.f_config() == before
    assert lab.ping(1)
    # the datastore layer refuses the same on C (SI 0 in a rule is refused by YANG range)
    with pytest.raises(RpcError):
        lab.c.push(L.classifier_xml(ingress="nosuch0"))
    assert lab.ping(1)


def test_table_miss_asks_the_controller_and_holds_the_packet(lab: Lab) -> None:
    L = lab.L
    without = L.middle_xml(lab.net, sockets=[lab.results]).replace(
        "<entry><spi>10</spi><si>254</si><next-hop><locator>192.0.2.6</locator><kind>sff</kind>"
        "</next-hop></entry>", "")
    assert without != L.middle_xml(lab.net, sockets=[lab.results])
    lab.edit_f(without)
    p = lab.net.popen(lab.net.host_a, ["ping", "-c", "1", "-W", "5", L.HOST_B],
                      stdout=subprocess.DEVNULL)
    n = lab.notifications("sff-table-miss")
    assert (n.findtext(Q + "sff-id"), n.findtext(Q + "spi"), n.findtext(Q + "si")) == (
        "2", "10", "254")
    assert wait_until(lambda: lab.f_stats()["held"] == 1, 5, "the packet held")
    t0 = time.monotonic()
    lab.edit_f(L.middle_xml(lab.net, sockets=[lab.results]))   # the controller's answer
    assert p.wait(10) == 0            # the held echo request was released and answered
    assert time.monotonic() - t0 < 2
    st = lab.f_stats()
    assert st["held"] == 0 and st["counters"]["released"] >= 1


def _inject(lab: Lab, payloads: list[bytes]) -> None:
    """GRE packets from C's address to F's locator (a raw socket in C's namespace)."""
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.c):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    try:
        for p in payloads:
            s.sendto(p, (lab.L.F_C, 0))
    finally:
        s.close()


def test_bad_packets_are_dropped_counted_and_reported(lab: Lab) -> None:
    from scapy.layers.inet import ICMP, IP

    from nsf_agent.sfc import nsh

    inner = bytes(IP(src="198.51.100.10", dst="203.0.113.10") / ICMP())
    drops0 = dict(lab.f_stats()["drops"])

    def pkt(h: nsh.Nsh) -> bytes:
        return nsh.encapsulate(h, inner)

    good = nsh.Nsh(spi=10, si=254)
    bad_version = bytearray(pkt(good))
    bad_version[4] |= 0x80
    beyond = bytearray(pkt(good))
    beyond[5] = (beyond[5] & 0xC0) | 60
    overrun = bytearray(pkt(nsh.Nsh(spi=10, si=254, md_type=2,
                                    tlvs=[nsh.reclassify_tlv("x" * 8)])))
    overrun[4 + 8 + 3] = 100
    loop = pkt(nsh.Nsh(spi=10, si=255, md_type=2, tlvs=[nsh.trace_tlv([(1, 7), (2, 255)])]))
    _inject(lab, [bytes(bad_version), bytes(beyond), bytes(overrun),
                  pkt(nsh.Nsh(spi=10, si=254, ttl=1)), loop, b"\x00\x00\x08\x00" + inner])
    n = lab.notifications("sff-ttl-expired")
    assert (n.findtext(Q + "spi"), n.findtext(Q + "si")) == ("10", "254")
    n = lab.notifications("sff-loop-detected")
    assert [t.text for t in n.findall(Q + "trace")] == ["1/7", "2/255", "2/255"]

    def grew() -> bool:
        d = lab.f_stats()["drops"]
        return all(d.get(k, 0) > drops0.get(k, 0) for k in (
            "bad-version", "bad-length", "tlv-overrun", "ttl-expired", "loop", "not-nsh"))
    assert wait_until(grew, 5, "every drop counted")
    # unknown SPI: the controller is asked, the packet is held, then dropped and counted
    _inject(lab, [pkt(nsh.Nsh(spi=4242, si=9))])
    n = lab.notifications("sff-table-miss")
    assert (n.findtext(Q + "spi"), n.findtext(Q + "si")) == ("4242", "9")
    assert wait_until(lambda: lab.f_stats()["drops"].get("table-miss", 0)
                      > drops0.get("table-miss", 0), 5, "the unknown SPI dropped")
    data = etree.fromstring(str(lab.m.get(filter=("subtree", f'<sfc xmlns="{SFC}"/>')).data_xml)
                            .encode())
    reasons = {d.findtext(Q + "reason") for d in data.iter(Q + "drop")}
    assert {"bad-version", "bad-length", "tlv-overrun", "ttl-expired", "loop",
            "table-miss"} <= reasons
    assert lab.ping(1)   # the data path kept running


def test_inspection_result_is_reported_and_steers_the_flow(lab: Lab, tmp_path: Path) -> None:
    """The SF reports a result asking for re-classification: the agent notifies it, and the
    flow's next packets return with MD2 metadata that F's classifier turns into SPI 20."""
    L = lab.L
    reclass = ('<classifier><reclassify><result>ddos-suspected</result><spi>20</spi>'
               f'<si>255</si><first-hop>{L.F_C}</first-hop></reclassify></classifier>')
    xml = L.middle_xml(lab.net, sockets=[lab.results], extra_entries=(
        f"<entry><spi>20</spi><si>255</si><next-hop><locator>{L.E_F}</locator></next-hop>"
        "</entry>")).replace("<forwarder>", reclass + "<forwarder>")
    lab.edit_f(xml)
    lab.e.push(L.end_xml(lab.net).replace(
        "</table>", "<entry><spi>20</spi><si>255</si><terminate/></entry></table>"))
    msg = {"instance": "sf0", "type": "ddos", "sid": 7, "msg": "SYN flood",
           "flow": {"src": L.HOST_A, "dst": L.HOST_B, "proto": 1, "sport": 0, "dport": 0},
           "verdict": "alert", "action": {"reclassify": "ddos-suspected"}, "time": time.time()}
    from nsf_agent.userspace.lab import in_netns

    with in_netns(lab.net.sf(0)):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(json.dumps(msg).encode(), lab.results)
    s.close()
    n = lab.notifications("inspection-result")
    assert (n.findtext(Q + "instance"), n.findtext(Q + "type"), n.findtext(Q + "sid"),
            n.findtext(Q + "verdict"), n.findtext(Q + "reclassify"),
            n.findtext(f"{Q}flow/{Q}source")) == (
        "sf0", "ddos", "7", "alert", "ddos-suspected", L.HOST_A)
    cap = Capture(lab.net.f, "e", tmp_path / "reclass.pcap")
    assert lab.ping(2)
    spis = {nsh_fields(f)[0] for f in cap.frames()}
    assert spis == {20}
    assert lab.f_stats()["counters"]["reclassified"] >= 2
    lab.configure()


def test_fast_path_hook_takes_generations_or_refuses(lab: Lab, tmp_path: Path) -> None:
    """forwarder/fast-path: with the tc-BPF fast path available, the committed generation
    is handed to it (classifier on C's ingress) and traffic keeps its NSH; without it the
    request is refused and nothing changes."""
    L = lab.L
    try:
        from nsf_agent.sfc.fastpath import FastPath
        ok, why = FastPath.available()
    except ImportError as exc:
        ok, why = False, str(exc)
    xml = L.classifier_xml().replace(
        "</classifier>", f"</classifier><forwarder><sff-id>1</sff-id><locator>{L.C_F}</locator>"
        "<fast-path><enabled>true</enabled><interface>a</interface></fast-path></forwarder>")
    before = lab.c.ds.serialize("running")
    if not ok:
        # --sfc-dataplane auto (the default): the userspace path alone, the commit stands
        # (userspace/bpf modes refuse it: tests/test_sfc_dataplane_option.py)
        lab.c.push(xml)
        assert lab.c.applier.fastpath is None, why
        assert lab.ping(1)
        lab.c.push(L.classifier_xml())
        assert before is not None
        return
    lab.c.push(xml)
    try:
        cap = Capture(lab.net.c, "f", tmp_path / "fast.pcap")
        assert lab.ping(3)
        assert {nsh_fields(f) for f in cap.frames()} == {(10, 255, 63)}
        fp = lab.c.applier.fastpath
        assert fp is not None and fp.generation >= 1
        ctr = fp.counters()
        assert set(ctr.rules) == {"a-to-b"}     # the generation reached the kernel
        # classified in the kernel (its FIB lookups are output lookups, so the userspace
        # interception's forwarding=0 on the ingress does not matter: docs/sfc.md)
        assert ctr.rules["a-to-b"][0] >= 3, ctr
        # get reports both paths added up: the rule counter includes the fast path's
        (st,) = lab.c.applier.state(None)
        pk = st.xpath("//*[local-name()='rule'][*[local-name()='name']='a-to-b']"
                      "/*[local-name()='statistics']/*[local-name()='packets']/text()")
        assert pk and int(pk[0]) >= ctr.rules["a-to-b"][0], etree.tostring(st)
    finally:
        lab.c.push(L.classifier_xml())
    assert lab.c.applier.fastpath is None
    assert lab.ping(1)


def test_fast_path_failures_are_rpc_errors_and_the_old_generation_forwards(
        lab: Lab, tmp_path: Path) -> None:
    """A fast path interface that does not exist is refused at validation; a generation
    the kernel refuses to take (its map frozen, so the writes fail half-way) is an
    <rpc-error>: running is unchanged and the previous generation keeps forwarding in the
    kernel."""
    from nsf_agent.sfc.fastpath import FastPath, libbpf

    ok, why = FastPath.available()
    if not ok:
        pytest.skip(f"BPF fast path unavailable: {why}")
    L = lab.L

    def fast(cls_xml: str, ifs: str = "<interface>a</interface>") -> str:
        return cls_xml.replace(
            "</classifier>", f"</classifier><forwarder><sff-id>1</sff-id><locator>{L.C_F}"
            f"</locator><fast-path><enabled>true</enabled>{ifs}</fast-path></forwarder>")

    before = lab.c.ds.serialize("running")
    with pytest.raises(RpcError) as ei:
        lab.c.push(fast(L.classifier_xml(), "<interface>nope0</interface>"))
    assert "nope0" in ei.value.message
    assert lab.c.ds.serialize("running") == before and lab.c.applier.fastpath is None
    lab.c.push(fast(L.classifier_xml()))
    try:
        fp = lab.c.applier.fastpath
        gen, running = fp.generation, lab.c.ds.serialize("running")
        libbpf.map_freeze(fp.map_fd("fp_cls_rules"))
        with pytest.raises(RpcError) as ei:
            lab.c.push(fast(L.classifier_xml(spi=11)))
        assert "fast path refused" in ei.value.message
        assert lab.c.ds.serialize("running") == running and fp.generation == gen
        c0 = fp.counters().rules["a-to-b"][0]
        cap = Capture(lab.net.c, "f", tmp_path / "old-generation.pcap")
        assert lab.ping(2)
        assert {nsh_fields(f) for f in cap.frames()} == {(10, 255, 63)}  # the old SPI
        assert fp.counters().rules["a-to-b"][0] >= c0 + 2  # carried by the fast path
    finally:
        lab.c.push(L.classifier_xml())  # fast path off: detached, frozen maps freed
    assert lab.c.applier.fastpath is None
    assert lab.ping(1)


def test_a_killed_data_path_is_restarted_with_its_tables(lab: Lab) -> None:
    """kill -9 of F's data path: the applier notices (its event channel breaks), starts a
    new one in the namespace, re-applies the running tables; traffic and notifications are
    back without any commit."""
    import signal

    old = lab.fsfc._call("ping")["pid"]
    restarts = lab.fsfc.restarts
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: lab.fsfc.restarts > restarts, 10, "the data path restarted")
    assert lab.fsfc._call("ping")["pid"] != old
    assert lab.ping(2)
    assert lab.f_stats()["proxies"]["sf0"]["to-sf"] >= 2
    _inject(lab, [nsh.encapsulate(nsh.Nsh(spi=4343, si=3), bytes(20))])
    n = lab.notifications("sff-table-miss")
    assert n.findtext(Q + "spi") == "4343"


def test_ipv6_underlay_carries_the_same_chain(lab: Lab, tmp_path: Path) -> None:
    """Locators and next hops in IPv6 (GRE over IPv6 between the nodes), inner IPv4."""
    from nsf_agent.userspace.lab import sysctl

    L, net = lab.L, lab.net
    addrs = {(net.c, "f"): "2001:db8:cf::1", (net.f, "c"): "2001:db8:cf::2",
             (net.f, "e"): "2001:db8:fe::1", (net.e, "f"): "2001:db8:fe::2"}
    for (ns, ifn), a in addrs.items():
        sysctl(ns, f"net.ipv6.conf.{ifn}.disable_ipv6", "0")
        subprocess.run(["ip", "-n", ns, "-6", "addr", "add", f"{a}/64", "dev", ifn, "nodad"],
                       check=True)
    f6, e6 = addrs[(net.f, "c")], addrs[(net.e, "f")]
    try:
        lab.e.push(L.end_xml(net).replace(L.E_F, e6))
        lab.edit_f(L.middle_xml(net, sockets=[lab.results]).replace(L.E_F, e6)
                   .replace(L.F_C, f6))
        lab.c.push(L.classifier_xml(first_hop=f6))
        cap = Capture(net.f, "e", tmp_path / "v6.pcap")
        assert lab.ping(2)
        frames = cap.frames()
        assert frames and {nsh_fields(f) for f in frames} == {(10, 254, 61)}
        assert all(f["ipv6"]["ipv6.dst"] == e6 for f in frames)
        assert all(f["ip"]["ip.dst"] == L.HOST_B for f in frames)   # the inner packet
    finally:
        lab.configure()
    assert lab.ping(1)


def test_ipv6_traffic_is_classified_at_the_ingress(lab: Lab, tmp_path: Path) -> None:
    """An IPv6 rule on C: host A's IPv6 packets leave C as GRE/NSH with next protocol IPv6."""
    if shutil.which("nft") is None:
        pytest.skip("IPv6 interception needs nft (without it IPv6 rules are refused)")
    from nsf_agent.userspace.lab import sysctl

    L, net = lab.L, lab.net
    for ns, ifn, a in ((net.host_a, "eth0", "2001:db8:a::10"), (net.c, "a", "2001:db8:a::1")):
        sysctl(ns, f"net.ipv6.conf.{ifn}.disable_ipv6", "0")
        subprocess.run(["ip", "-n", ns, "-6", "addr", "add", f"{a}/64", "dev", ifn, "nodad"],
                       check=True)
    subprocess.run(["ip", "-n", net.host_a, "-6", "route", "add", "2001:db8:b::/64", "via",
                    "2001:db8:a::1"], check=True)
    rule6 = ("<rule><name>v6</name><order>5</order><match><source-prefix>2001:db8:a::/64"
             "</source-prefix><destination-prefix>2001:db8:b::/64</destination-prefix>"
             "<ingress-interface>a</ingress-interface></match><path><spi>60</spi>"
             f"<first-hop>{L.F_C}</first-hop></path></rule>")
    try:
        lab.c.push(L.classifier_xml(extra=rule6))
        cap = Capture(net.c, "f", tmp_path / "c6.pcap")
        r = net.run(net.host_a, [sys.executable, "-c", (
            "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
            "for i in range(3): s.sendto(b'v6', ('2001:db8:b::20', 9))\n")], timeout=10)
        assert r.returncode == 0, r.stderr
        wait_until(lambda: lab.c.applier.stats()["rules"]["v6"][0] >= 3, 5, "classified")
        frames = cap.frames()
        assert {nsh_fields(f) for f in frames} == {(60, 255, 63)}
        assert all(int(f["nsh"]["nsh.nextproto"], 0) == 2 for f in frames)     # IPv6
        assert all(f["ipv6"]["ipv6.dst"] == "2001:db8:b::20" for f in frames)
    finally:
        lab.c.push(L.classifier_xml())
    assert lab.ping(1)


def test_a_commit_failing_in_the_data_path_changes_nothing(lab: Lab) -> None:
    """The data path refuses the change half-way (a result socket it cannot bind, after the
    new table and interfaces were prepared): <rpc-error>, running unchanged, the data path
    still on the old tables (no new entry), traffic flows."""
    from ncclient.operations import RPCError

    L = lab.L
    before = lab.f_config()
    entries0 = sorted((x[0], x[1]) for x in lab.f_stats()["entries"])
    xml = L.middle_xml(lab.net, sockets=["/nonexistent-dir/sf0.sock"], extra_entries=(
        "<entry><spi>77</spi><si>7</si><next-hop><locator>192.0.2.6</locator></next-hop>"
        "</entry>"))
    with pytest.raises(RPCError) as ei:
        lab.edit_f(xml)
    assert "No such file" in str(ei.value) or "refused" in str(ei.value), str(ei.value)
    assert lab.f_config() == before
    assert sorted((x[0], x[1]) for x in lab.f_stats()["entries"]) == entries0
    assert lab.ping(1)


def test_an_agent_restart_does_not_interrupt_traffic(lab: Lab) -> None:
    """C's agent side goes away (its data path stays, as designed) and comes back: traffic
    keeps flowing while it is away, the new applier reattaches to the same process (same
    pid, counters kept), re-applies running from the startup state and carries on."""
    node = lab.c
    pid = node.applier._call("ping")["pid"]
    assert lab.ping(1)
    before = node.applier.stats()["rules"]["a-to-b"][0]
    node.applier.close(stop_datapath=False)
    node.ds.close()
    assert lab.ping(2)                                    # nobody manages it: still forwards
    node.start()
    assert node.applier._call("ping")["pid"] == pid       # reattached, not restarted
    assert lab.ping(1)
    assert node.applier.stats()["rules"]["a-to-b"][0] >= before + 3
