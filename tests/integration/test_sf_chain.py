"""A DMS-created IDS instance inside a real SFC chain: classifier (C) → SFF + SFC proxy of a
real agent (F, configured over SSH NETCONF) → the instance the DMS made behind F's proxy →
SFF (E) that ends the path → host B. The IDS's alert reaches the agent's NETCONF subscribers
as an `inspection-result` notification with the flow (what the controller subscribes to),
and the DMS's as an `inspection-alert`."""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dmsharness import DMS_NS, DmsProcess, create_xml, instance_state, q, rpc, until
from lxml import etree
from sflab import drain, in_netns

from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

pytestmark = [pytest.mark.root, pytest.mark.skipif(
    __import__("os").geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root (namespaces, raw sockets)")]
SFC = "urn:i2nsf-sdn:yang:i2nsf-sfc-nsf"
S = f"{{{SFC}}}"


class _Node:
    def __init__(self, schema: YangSchema, netns: str, state: Path) -> None:
        from nsf_agent.appliers.sfc import SfcApplier

        self.applier = SfcApplier(state, netns=netns)
        self.applier.bind(lambda _e: None)
        self.ds = Datastores(schema, [self.applier], state_dir=state)
        self.ds.reconcile()

    def push(self, xml: str) -> None:
        self.ds.edit_config("running", etree.fromstring(f'<config xmlns="{NC_NS}">{xml}</config>'),
                            default_operation="replace")


class _Lab:
    """The lab's hosts, C, F, E without SFs of its own: the DMS makes the SF, in F."""

    def __init__(self, tmp: Path) -> None:
        from nsf_agent.agent import Agent
        from nsf_agent.appliers.sfc import SfcApplier
        from nsf_agent.sfc import lab as L
        from tests.integration.ncharness import AgentThread

        self.L = L
        self.net = L.SfcLab.unique(0, tag="i2sfd")
        self.net.build()
        self.tag = self.net.prefix[-6:]
        schema = YangSchema(create_context(["i2nsf-sfc-nsf"]))
        self.c = _Node(schema, self.net.c, tmp / "c")
        self.e = _Node(schema, self.net.e, tmp / "e")
        self.results = str(tmp / "ids-results.sock")
        self.fsfc = SfcApplier(tmp / "f", netns=self.net.f)
        t = AgentThread(tmp / "f", modules=["i2nsf-sfc-nsf"])
        t.agent = Agent(t.agent.config, appliers=[self.fsfc])
        self.agent = t.start()
        self.m = t.connect()
        self.m.create_subscription()
        self.e.push(L.end_xml(self.net))
        self.c.push(L.classifier_xml())

    @property
    def host(self) -> str:  # what DmsProcess calls the namespace of the host-side links
        return self.net.f

    def configure_f(self, to_sf: str, from_sf: str, sf_mac: str) -> None:
        L = self.L
        xml = (f'<sfc xmlns="{SFC}"><forwarder><sff-id>2</sff-id><locator>{L.F_C}</locator>'
               f"<table><entry><spi>{L.SPI}</spi><si>255</si><next-hop><locator>{L.F_C}"
               "</locator><kind>proxy</kind></next-hop></entry>"
               f"<entry><spi>{L.SPI}</spi><si>254</si><next-hop><locator>{L.E_F}</locator>"
               "<kind>sff</kind></next-hop></entry></table></forwarder>"
               f"<proxies><proxy><name>ids</name><spi>{L.SPI}</spi><si>255</si>"
               f"<to-sf-interface>{to_sf}</to-sf-interface>"
               f"<from-sf-interface>{from_sf}</from-sf-interface><sf-mac>{sf_mac}</sf-mac>"
               f"<result-socket>{self.results}</result-socket></proxy></proxies></sfc>")
        self.m.edit_config(target="running", default_operation="replace",
                           config=f'<config xmlns="{NC_NS}">{xml}</config>')
        self.e.push(L.end_xml(self.net).replace(f"<si>{255}</si>", "<si>254</si>"))

    def close(self) -> None:
        for fn in (self.m.close_session, self.agent.stop,
                   lambda: self.fsfc.close(stop_datapath=True),
                   lambda: self.c.applier.close(stop_datapath=True),
                   lambda: self.e.applier.close(stop_datapath=True), self.net.destroy):
            with contextlib.suppress(Exception):  # keep tearing down
                fn()


@pytest.fixture()
def chain(tmp_path: Path) -> Iterator[_Lab]:
    lab = _Lab(tmp_path / "lab")
    try:
        yield lab
    finally:
        lab.close()


def test_ids_alert_in_a_chain_reaches_the_agent_subscribers(chain: _Lab, tmp_path: Path
                                                            ) -> None:
    L = chain.L
    dms = DmsProcess(chain, tmp_path / "dms").start()  # type: ignore[arg-type]
    try:
        with dms.connect() as dm:
            dm.create_subscription()
            rules = ('alert udp any any -> any 7700 (msg:"chain signature"; content:"MALWARE"; '
                     'sid:3000001; reclassify:"needs-dpi";)')
            rpc(dm, create_xml("ids", "ids", f"<signatures>{rules}</signatures>", "ids-in",
                               "ids-out", report=chain.results))
            st = instance_state(dm, "ids")
            chain.configure_f("ids-in", "ids-out", st["sf-mac"])
            rx = in_netns(chain.net.host_b, lambda: _udp((L.HOST_B, 7700)))
            tx = in_netns(chain.net.host_a, lambda: _udp((L.HOST_A, 0)))
            until(lambda: _through(tx, rx, L.HOST_B, b"hello"), 5.0, "the chain forwards")
            tx.sendto(b"some MALWARE inside", (L.HOST_B, 7700))
            got = [d for d, _ in drain(rx)]
            assert b"some MALWARE inside" in got  # an IDS passes it

            def agent_result() -> list[Any]:
                n = chain.m.take_notification(block=True, timeout=0.2)
                if n is None:
                    return []
                return etree.fromstring(n.notification_xml.encode()).findall(
                    f".//{S}inspection-result")

            r = until(agent_result, 5.0, "the agent's inspection-result")[0]
            assert (r.findtext(S + "instance"), r.findtext(S + "type"), r.findtext(S + "sid"),
                    r.findtext(S + "verdict"), r.findtext(S + "reclassify")) == (
                "ids", "ids", "3000001", "alert", "needs-dpi")
            assert r.findtext(f"{S}flow/{S}source") == L.HOST_A
            assert r.findtext(f"{S}flow/{S}destination") == L.HOST_B

            def dms_alert() -> list[Any]:
                n = dm.take_notification(block=True, timeout=0.2)
                if n is None:
                    return []
                return etree.fromstring(n.notification_xml.encode()).findall(
                    f".//{q('inspection-alert')}")

            a = until(dms_alert, 5.0, "the DMS's inspection-alert")[0]
            assert a.findtext(f"{q('flow')}/{q('source-address')}") == L.HOST_A
            rpc(dm, f'<remove-instance xmlns="{DMS_NS}"><name>ids</name></remove-instance>')
            tx.close()
            rx.close()
    finally:
        dms.stop()
        dms.cleanup()


def _udp(bind: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(bind)
    return s


def _through(tx: socket.socket, rx: socket.socket, dst: str, payload: bytes) -> bool:
    tx.sendto(payload, (dst, rx.getsockname()[1]))
    rx.settimeout(0.05)
    try:
        return rx.recvfrom(2048)[0] == payload
    except TimeoutError:
        return False
