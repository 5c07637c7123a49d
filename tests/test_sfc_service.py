"""SfcService logic with a recording fake in place of the NSF sessions (fast; the real
sessions are exercised by tests/integration/test_sfc_controller.py): make-before-break
steps as transactions, loop reports (resync, then withdrawal), table misses for unknown
entries, persistence across a restart."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from typing import Any

from lxml import etree

from controller.sfc import render
from controller.sfc.catalog import Instance
from controller.sfc.model import NS, parse_config
from controller.sfc.service import SfcService

NQ = f"{{{render.NS}}}"
CFG = f"""<sfc xmlns="{NS}"><sf-types><sf-type><name>fw</name></sf-type>
<sf-type><name>ids</name></sf-type></sf-types>
<forwarders><forwarder><name>c</name><sff-id>1</sff-id><locator>192.0.2.1</locator>
<classifier>true</classifier><ingress-interface>a</ingress-interface></forwarder>
<forwarder><name>f</name><sff-id>2</sff-id><locator>192.0.2.2</locator></forwarder>
</forwarders>
<chains><chain><name>p</name><sf-type>fw</sf-type><sf-type>ids</sf-type></chain></chains>
<policies><policy><name>all</name><chain>p</chain></policy></policies></sfc>"""


class Store:
    def __init__(self) -> None:
        self.meta: dict[str, str] = {}

    def get_meta(self, k: str) -> str | None:
        return self.meta.get(k)

    def put_meta(self, k: str, v: str) -> None:
        self.meta[k] = v

    @contextlib.contextmanager
    def transaction(self) -> Any:
        yield


class Client:
    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.sent: list[bytes] = []

    async def rpc(self, body: bytes, timeout: float) -> None:
        self.sent.append(body)


class Session:
    def __init__(self, name: str) -> None:
        self.name = name
        self.client = Client()


@contextlib.asynccontextmanager
async def locked(sessions: Any) -> AsyncIterator[None]:
    yield


def make(store: Store) -> tuple[SfcService, list[dict[str, etree._Element]]]:
    log: list[dict[str, etree._Element]] = []

    async def transact(sessions: Any, edits: dict[str, etree._Element]) -> None:
        log.append(edits)

    sessions = {"c": Session("c"), "f": Session("f")}
    svc = SfcService(store, lambda: sessions, transact=transact, locked=locked, tick=0.01)
    svc.load()
    return svc, log


def register(svc: SfcService) -> None:
    for i, t in enumerate(("fw", "ids")):
        svc.register(Instance(f"{t}-1", t, "d", ipaddress.ip_address("192.0.2.2"), 1000,
                              forwarder="f", to_sf=f"i{i}", from_sf=f"o{i}",
                              sf_mac="02:00:00:00:00:01"))


def rules(edit: etree._Element) -> list[str]:
    return [(r.findtext(NQ + "name") or "") for r in edit.iter(NQ + "rule")]


def test_push_steps_loop_withdrawal_and_restart() -> None:
    async def run() -> None:
        store = Store()
        svc, log = make(store)
        register(svc)
        svc.apply_config(parse_config(etree.fromstring(CFG)))
        svc.start()
        try:
            await svc.settled()
            assert len(log) == 2  # entries first (no classifier rule), then the classifier
            assert rules(log[0]["c"]) == [] and rules(log[1]["c"]) == ["all"]
            spi = next(iter(svc.rendering.paths))  # type: ignore[union-attr]
            loop = etree.fromstring(
                f'<sff-loop-detected xmlns="{render.NS}"><sff-id>2</sff-id><spi>{spi}</spi>'
                "<si>254</si><trace>1/255</trace><trace>2/254</trace></sff-loop-detected>")
            assert svc.on_notification("f", loop)
            await asyncio.sleep(0.05)
            await svc.settled()
            assert [k for k in ("loop-detected", "path-resync")
                    if k in {e.kind for e in svc.events}] == ["loop-detected", "path-resync"]
            assert len(log) == 3 and set(log[2]) == {"c", "f"}  # every agent rewritten
            svc.on_notification("f", loop)  # again within 10 s: withdrawn
            await asyncio.sleep(0.05)
            await svc.settled()
            assert svc.path_status[spi][0] == "withdrawn"
            assert rules(log[-1]["c"]) == []  # the policy left the classifier
            # a miss for an entry no path has: reported, nothing sent
            miss = etree.fromstring(f'<sff-table-miss xmlns="{render.NS}"><sff-id>2</sff-id>'
                                    "<spi>999</spi><si>7</si></sff-table-miss>")
            svc.on_notification("f", miss)
            assert "no such path entry" in svc.events[-1].detail
        finally:
            await svc.stop()
        # restart: same store → same SPI, nothing to push (what the agents hold is known)
        svc2, log2 = make(store)
        svc2.apply_config(parse_config(etree.fromstring(CFG)))
        svc2.start()
        try:
            await svc2.settled()
            assert next(iter(svc2.rendering.paths)) == spi  # type: ignore[union-attr]
            assert "fw-1" in svc2.catalog.instances
            assert len(log2) == 1 and rules(log2[0]["c"]) == ["all"]  # only the un-withdrawal
        finally:
            await svc2.stop()

    asyncio.run(run())


def test_inspection_result_event_carries_the_flow() -> None:
    """The agent's inspection-result notification gives the flow's 5-tuple: the controller's
    event (state list and sfc-event notification) carries it; bad leaves are left out."""
    from controller.sfc.model import NS as SFCP

    svc, _log = make(Store())
    sent: list[etree._Element] = []
    svc.notify = sent.append
    n = etree.fromstring(
        f'<inspection-result xmlns="{render.NS}"><proxy>ids-1</proxy><instance>ids-1'
        "</instance><type>ids</type><sid>101</sid><msg>exploit attempt</msg><flow>"
        "<source>198.51.100.10</source><destination>203.0.113.10</destination>"
        "<protocol>17</protocol><source-port>40011</source-port>"
        "<destination-port>9000</destination-port></flow><verdict>alert</verdict>"
        "<next-function>ips</next-function></inspection-result>")
    assert svc.on_notification("f", n)
    ev = svc.events[-1]
    assert ev.kind == "inspection-result"
    assert ev.flow == {"source": "198.51.100.10", "destination": "203.0.113.10",
                       "protocol": "17", "source-port": "40011", "destination-port": "9000"}
    assert "198.51.100.10 -> 203.0.113.10 proto 17 40011 -> 9000" in ev.detail
    assert "next-function ips" in ev.detail
    q = f"{{{SFCP}}}"
    assert [(c.tag[len(q):], c.text) for c in sent[-1].find(q + "flow")] == [
        ("source", "198.51.100.10"), ("destination", "203.0.113.10"), ("protocol", "17"),
        ("source-port", "40011"), ("destination-port", "9000")]
    # the notification is valid i2nsf-sfc-policy (libyang)
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context

    YangSchema(create_context(["i2nsf-sfc-policy"])).validate_notification(sent[-1])
    st = svc.state()[0]
    rows = [(e.findtext(f"{q}flow/{q}source"), e.findtext(f"{q}flow/{q}destination-port"))
            for e in st.iter(q + "event") if e.findtext(q + "kind") == "inspection-result"]
    assert rows == [("198.51.100.10", "9000")]
    # an agent's malformed 5-tuple does not reach our notification
    bad = etree.fromstring(
        f'<inspection-result xmlns="{render.NS}"><instance>x</instance><flow><source>'
        "not-an-ip</source><destination>203.0.113.10</destination><protocol>300</protocol>"
        "</flow></inspection-result>")
    svc.on_notification("f", bad)
    assert svc.events[-1].flow == {"destination": "203.0.113.10"}
