"""The DMS daemon end to end: NETCONF over SSH (ncclient) to a real `python -m nsf_agent.dms`,
instances in real namespaces with real nftables, traffic from the sflab SRC namespace to DST
through them, notifications, failure and crash recovery, registration with a catalog server."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dmsharness import (
    CAT_NS,
    DMS_NS,
    CatalogServer,
    DmsProcess,
    create_xml,
    dms_state,
    elapsed,
    instance_state,
    link_exists,
    pid_alive,
    q,
    rpc,
    until,
)
from lxml import etree
from ncclient.operations.rpc import RPCError
from sflab import DST_IP, SRC_A, Lab, drain, needs_root, send_udp, udp_socket

pytestmark = [needs_root, pytest.mark.root]
FW_ACCEPT = "<firewall><default-action>accept</default-action></firewall>"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def dms(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DmsProcess]:
    d = DmsProcess(lab, tmp_path_factory.mktemp("dms"), max_instances=2).start()
    try:
        yield d
    finally:
        d.stop()
        d.cleanup()


def passes(lab: Lab, rx: socket.socket, payload: bytes = b"probe") -> bool:
    send_udp(lab.src, SRC_A, DST_IP, rx.getsockname()[1], [payload])
    rx.settimeout(0.02)
    try:
        while True:
            data, _ = rx.recvfrom(2048)
            if data == payload:
                return True
    except TimeoutError:
        return False


def steer(lab: Lab, m, name: str) -> dict[str, str]:  # type: ignore[no-untyped-def]
    st = instance_state(m, name)
    lab.steer(st["to-sf"], st["sf-mac"])
    return st


def test_create_passes_traffic_within_2s_then_remove_leaves_nothing(
        lab: Lab, dms: DmsProcess) -> None:
    rx = udp_socket(lab.dst, (DST_IP, 7300))
    with dms.connect() as m:
        t0 = time.monotonic()
        reply = rpc(m, create_xml("fw1", "firewall", FW_ACCEPT, "fw1-in", "fw1-out"))
        ns = reply.findtext(f".//{q('namespace')}")
        mac = reply.findtext(f".//{q('sf-mac')}")
        pid = int(reply.findtext(f".//{q('pid')}") or 0)
        lab.steer("fw1-in", mac or "")
        until(lambda: passes(lab, rx), 2.0, "traffic through the new instance")
        took = elapsed(t0)
        print(f"\nDMS create-instance -> first packet through: {took * 1000:.0f} ms")
        assert took <= 2.0
        st = instance_state(m, "fw1")
        assert st["state"] == "running" and st["namespace"] == ns and int(st["pid"]) == pid
        assert st["type"] == "firewall" and st["to-sf"] == "fw1-in"
        assert pid_alive(pid) and link_exists(lab.host, "fw1-in")
        tables = os.popen(f"ip netns exec {ns} nft list tables").read()
        assert "i2nsf_sf" in tables
        cap = dms_state(m).find(q("capacity"))
        assert cap is not None and cap.findtext(q("instances")) == "1"
        # load, on demand
        load = rpc(m, f'<get-load xmlns="{DMS_NS}"><name>fw1</name></get-load>')
        assert int(load.findtext(f".//{q('packets')}") or 0) >= 1
        # rules replaced over NETCONF: bad ones refused (old kept), good ones in force at once
        with pytest.raises(RPCError):
            rpc(m, f'<set-rules xmlns="{DMS_NS}"><name>fw1</name><firewall><rule><seq>5</seq>'
                   "<action>drop</action><destination-port>7300</destination-port></rule>"
                   "</firewall></set-rules>")
        assert passes(lab, rx)
        rpc(m, f'<set-rules xmlns="{DMS_NS}"><name>fw1</name><firewall><default-action>accept'
               "</default-action><rule><seq>5</seq><action>drop</action><protocol>17</protocol>"
               "<destination-port>7300</destination-port></rule></firewall></set-rules>")
        assert not passes(lab, rx)
        rpc(m, f'<remove-instance xmlns="{DMS_NS}"><name>fw1</name></remove-instance>')
        assert dms.namespaces() == []
        assert not link_exists(lab.host, "fw1-in") and not link_exists(lab.host, "fw1-out")
        assert not pid_alive(pid)
        assert not (dms.state / "instances" / "fw1").exists()
        assert instance_state(m, "fw1") == {}
    rx.close()


def test_bad_input_is_an_rpc_error_and_creates_nothing(lab: Lab, dms: DmsProcess) -> None:
    links_before = os.popen(f"ip -n {lab.host} -o link").read().count("\n")
    ns_uri = DMS_NS
    cases = [
        (create_xml("b1", "no-such-type"), "invalid-value"),
        (create_xml("b2", "ids", "<signatures>alert tcp any any -> any any (msg:\"x\";)"
                    "</signatures>"), "missing sid"),
        (create_xml("b3", "ips", "<signatures>alert tcp any any -> any any (content:\"a|zz|\";"
                    " sid:1;)</signatures>"), "bad hex"),
        (create_xml("b4", "firewall", "<ddos><per-source-pps>5</per-source-pps></ddos>"),
         "takes no ddos rules"),
        (create_xml("b5", "firewall", "<firewall><rule><seq>1</seq><action>drop</action>"
                    "<destination-port>80</destination-port></rule></firewall>"),
         "ports need protocol"),
        (f'<remove-instance xmlns="{ns_uri}"><name>nope</name></remove-instance>',
         "no instance"),
        (create_xml("b6", "forward", report="relative/sock"), "not an absolute path"),
    ]
    with dms.connect() as m:
        for xml, expect in cases:
            with pytest.raises(RPCError) as exc:
                rpc(m, xml)
            text = f"{exc.value.tag} {exc.value.message}"
            assert expect in text, text
            assert dms.namespaces() == [], xml
        # no capacity left: max_instances = 2
        rpc(m, create_xml("c1", "forward"))
        rpc(m, create_xml("c2", "forward"))
        with pytest.raises(RPCError) as exc:
            rpc(m, create_xml("c3", "forward"))
        assert exc.value.tag == "resource-denied" and "no capacity" in exc.value.message
        assert len(dms.namespaces()) == 2
        for n in ("c1", "c2"):
            rpc(m, f'<remove-instance xmlns="{ns_uri}"><name>{n}</name></remove-instance>')
    assert dms.namespaces() == []
    assert os.popen(f"ip -n {lab.host} -o link").read().count("\n") == links_before


def test_ids_alert_arrives_as_notification_and_datagram(
        lab: Lab, dms: DmsProcess, tmp_path: Path) -> None:
    proxy_path = str(tmp_path / "proxy.sock")
    proxy = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    proxy.bind(proxy_path)
    rules = ('alert udp any any -> any 7400 (msg:"attack signature"; content:"ATTACK"; '
             'sid:2000001; reclassify:"needs-dpi";)')
    rx = udp_socket(lab.dst, (DST_IP, 7400))
    with dms.connect() as m:
        m.create_subscription()
        rpc(m, create_xml("ids1", "ids", f"<signatures>{rules}</signatures>", report=proxy_path))
        steer(lab, m, "ids1")
        send_udp(lab.src, SRC_A, DST_IP, 7400, [b"an ATTACK here", b"benign"])
        assert len(drain(rx)) == 2  # an IDS forwards

        def alert():  # type: ignore[no-untyped-def]
            n = m.take_notification(block=True, timeout=0.2)
            if n is None:
                return None
            root = etree.fromstring(n.notification_xml.encode())
            return root.findall(f".//{q('inspection-alert')}")

        a = until(alert, 5.0, "inspection-alert notification")[0]
        assert a.findtext(q("instance")) == "ids1" and a.findtext(q("sid")) == "2000001"
        assert a.findtext(q("verdict")) == "alert" and a.findtext(q("msg")) == \
            "attack signature"
        assert a.findtext(q("reclassify")) == "needs-dpi"
        flow = a.find(q("flow"))
        assert flow is not None
        assert flow.findtext(q("source-address")) == SRC_A
        assert flow.findtext(q("destination-address")) == DST_IP
        assert flow.findtext(q("protocol")) == "17"
        assert flow.findtext(q("destination-port")) == "7400"
        got = [json.loads(d) for d, _ in drain(proxy)]
        assert got and got[0]["sid"] == 2000001 and got[0]["flow"]["src"] == SRC_A
        assert got[0]["action"] == {"reclassify": "needs-dpi"}
        # replace the rules atomically: bad ones are refused and the old ones stay
        ns_uri = DMS_NS
        with pytest.raises(RPCError) as exc:
            rpc(m, f'<set-rules xmlns="{ns_uri}"><name>ids1</name><signatures>alert udp any'
                   " any -> any any (sid:1; bogus:1;)</signatures></set-rules>")
        assert "unsupported keyword 'bogus'" in exc.value.message
        rpc(m, f'<set-rules xmlns="{ns_uri}"><name>ids1</name><signatures>alert udp any any '
               '-> any 7400 (msg:"new"; content:"benign"; sid:3;)</signatures></set-rules>')
        send_udp(lab.src, SRC_A, DST_IP, 7400, [b"benign", b"an ATTACK"])
        drain(rx)
        assert [json.loads(d)["sid"] for d, _ in drain(proxy)] == [3]
        rpc(m, f'<remove-instance xmlns="{ns_uri}"><name>ids1</name></remove-instance>')
    proxy.close()
    rx.close()


def test_dead_instance_is_reported_and_restarted(lab: Lab, dms: DmsProcess) -> None:
    ns_uri = DMS_NS
    rx = udp_socket(lab.dst, (DST_IP, 7500))
    with dms.connect() as m:
        m.create_subscription()
        rpc(m, create_xml("ips1", "ips", "<signatures>drop udp any any -> any any "
                          '(content:"never"; sid:1;)</signatures>'))
        st = steer(lab, m, "ips1")
        until(lambda: passes(lab, rx), 2.0, "traffic")
        os.kill(int(st["pid"]), signal.SIGKILL)

        def failed():  # type: ignore[no-untyped-def]
            n = m.take_notification(block=True, timeout=0.2)
            if n is None:
                return None
            return etree.fromstring(n.notification_xml.encode()).findall(
                f".//{q('instance-failed')}")

        f = until(failed, 5.0, "instance-failed")[0]
        assert f.findtext(q("name")) == "ips1" and "SIGKILL" in (f.findtext(q("reason")) or "")
        assert instance_state(m, "ips1")["state"] == "failed"
        assert not passes(lab, rx)  # an IPS fails closed
        rpc(m, f'<restart-instance xmlns="{ns_uri}"><name>ips1</name></restart-instance>')
        st2 = instance_state(m, "ips1")
        assert st2["state"] == "running" and st2["restarts"] == "1" and st2["pid"] != st["pid"]
        until(lambda: passes(lab, rx), 2.0, "traffic after restart")
        # scaling out: a new instance given no rules gets those of the newest of its type
        rpc(m, create_xml("ips2", "ips"))
        steer(lab, m, "ips2")
        until(lambda: passes(lab, rx), 2.0, "traffic through the second instance")
        assert not passes(lab, rx, b"never")
        for n in ("ips1", "ips2"):
            rpc(m, f'<remove-instance xmlns="{ns_uri}"><name>{n}</name></remove-instance>')
    rx.close()


def test_crash_mid_create_or_remove_leaves_no_orphans_after_restart(
        lab: Lab, tmp_path: Path) -> None:
    point = tmp_path / "crash-at"
    d = DmsProcess(lab, tmp_path / "dms", env={"I2NSF_DMS_CRASH_AT": f"@{point}"})

    def crashed() -> None:
        until(lambda: d.proc is not None and d.proc.poll() is not None, 10, "DMS exit")

    try:
        for where in ("after-plumbing", "after-spawn"):
            point.write_text(where)
            d.start()
            m = d.connect()
            with pytest.raises(Exception):  # noqa: B017 (the session dies with the DMS)
                rpc(m, create_xml("cr1", "forward", to_sf="cr1-in", from_sf="cr1-out"))
            crashed()
            assert d.namespaces() == [f"{d.prefix}cr1"] and link_exists(lab.host, "cr1-in")
            orphans = [int(p) for p in os.popen(f"ip netns pids {d.prefix}cr1").read().split()]
            assert bool(orphans) == (where == "after-spawn")
            point.write_text("mid-remove")
            d.start()  # reconciles
            assert d.namespaces() == []
            assert not link_exists(lab.host, "cr1-in") and not link_exists(lab.host, "cr1-out")
            assert not any(pid_alive(p) for p in orphans)
            m2 = d.connect()
            assert dms_state(m2).findall(q("instance")) == []
            if where == "after-plumbing":
                m2.close_session()
            else:  # the DMS dies in the middle of a remove
                rpc(m2, create_xml("cr2", "ids", "<signatures></signatures>", "cr2-in",
                                   "cr2-out"))
                with pytest.raises(Exception):  # noqa: B017
                    rpc(m2, f'<remove-instance xmlns="{DMS_NS}"><name>cr2</name>'
                            "</remove-instance>")
                crashed()
                assert d.namespaces() == [f"{d.prefix}cr2"]  # its process was stopped
                point.write_text("")
                d.start()  # finishes the remove
                assert d.namespaces() == [] and not link_exists(lab.host, "cr2-in")
                with d.connect() as m3:
                    assert dms_state(m3).findall(q("instance")) == []
            d.stop()
    finally:
        d.stop()
        d.cleanup()


def test_registration_with_the_catalog(lab: Lab, tmp_path: Path) -> None:
    cat = CatalogServer(tmp_path / "cat").start()
    d = DmsProcess(lab, tmp_path / "dms", controller=cat.controller_section(),
                   auto_restart=True).start()
    ns_uri = DMS_NS
    c = f"{{{CAT_NS}}}"
    try:
        with d.connect() as m:
            rpc(m, create_xml("reg1", "ddos", "<ddos><per-source-pps>1000</per-source-pps>"
                              "</ddos>", "reg1-in", "reg1-out"))
            reg = until(lambda: cat.named("register-instance"), 5, "register-instance")[0]
            assert reg.findtext(c + "name") == "reg1" and reg.findtext(c + "type") == "ddos"
            assert reg.findtext(c + "dms") == f"dms-{lab.tag}"
            assert reg.findtext(f"{c}locator/{c}address") == "192.0.2.1"
            assert reg.findtext(f"{c}locator/{c}transport") == "gre"
            assert reg.findtext(f"{c}interfaces/{c}to-sf") == "reg1-in"
            assert reg.findtext(f"{c}interfaces/{c}sf-mac") == \
                instance_state(m, "reg1")["sf-mac"]
            assert "rate-limiting" in [e.text for e in reg.findall(c + "capability")]
            assert int(reg.findtext(c + "capacity") or 0) > 0
            until(lambda: instance_state(m, "reg1").get("registered") == "true", 5,
                  "registered state")
            loads = until(lambda: cat.named("report-load"), 5, "report-load")
            assert loads[0].findtext(f"{c}instance/{c}name") == "reg1"
            # a dead instance leaves the catalog, is restarted (auto_restart) and comes back
            pid = instance_state(m, "reg1")["pid"]
            os.kill(int(pid), signal.SIGKILL)
            gone = until(lambda: cat.named("unregister-instance"), 5, "unregister (failed)")[0]
            assert gone.findtext(c + "reason") == "failed"
            st = until(lambda: (s := instance_state(m, "reg1"))["state"] == "running"
                       and s["pid"] != pid and s, 10, "automatic restart")
            assert st["restarts"] == "1"
            until(lambda: len(cat.named("register-instance")) >= 2, 5, "registered again")
            # a registration the controller refuses: reported, the session and the others' load
            # reports go on
            cat.fail_register = "instance reg3 belongs to DMS other"
            rpc(m, create_xml("reg3", "forward"))
            err = until(lambda: dms_state(m).findtext(f"{q('controller')}/{q('last-error')}"),
                        5, "refusal in state")
            assert "reg3" in err and "belongs to DMS other" in err
            assert dms_state(m).findtext(f"{q('controller')}/{q('connected')}") == "true"
            assert instance_state(m, "reg3")["registered"] == "false"
            n = len(cat.named("report-load"))
            until(lambda: len(cat.named("report-load")) > n, 5, "load reports go on")
            assert {e.findtext(f"{c}instance/{c}name") for e in cat.named("report-load")} == \
                {"reg1"}
            cat.fail_register = None
            rpc(m, f'<remove-instance xmlns="{DMS_NS}"><name>reg3</name></remove-instance>')
            rpc(m, f'<remove-instance xmlns="{ns_uri}"><name>reg1</name></remove-instance>')
            until(lambda: [u for u in cat.named("unregister-instance")
                           if (u.findtext(c + "name"), u.findtext(c + "reason")) ==
                           ("reg1", "removed")], 5, "unregister-instance of reg1")
        d.stop()
        # the controller's host key is verified: a DMS expecting another key never registers
        other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBvXtKb8kDa7yBvCsKTkpwNf8Ky9nqq5qJZo0nDl6l0X"
        d2 = DmsProcess(lab, tmp_path / "dms2", controller=cat.controller_section(other)).start()
        try:
            with d2.connect() as m:
                rpc(m, create_xml("reg2", "forward"))
                err = until(lambda: dms_state(m).findtext(f"{q('controller')}/{q('last-error')}"),
                            5, "host key refusal")
                assert "key" in err.lower()
                assert {e.findtext(c + "name") for e in cat.named("register-instance")} == \
                    {"reg1"}
                rpc(m, f'<remove-instance xmlns="{ns_uri}"><name>reg2</name>'
                       "</remove-instance>")
        finally:
            d2.stop()
            d2.cleanup()
    finally:
        d.stop()
        d.cleanup()
        cat.stop()


def test_dms_restart_adopts_running_instances(lab: Lab, dms: DmsProcess) -> None:
    rx = udp_socket(lab.dst, (DST_IP, 7600))
    with dms.connect() as m:
        rpc(m, create_xml("keep1", "firewall", FW_ACCEPT))
        st = steer(lab, m, "keep1")
    dms.stop()  # a clean stop (or a crash) leaves complete instances forwarding
    assert passes(lab, rx) and pid_alive(int(st["pid"]))
    dms.start()
    with dms.connect() as m:
        st2 = instance_state(m, "keep1")
        assert st2["state"] == "running" and st2["pid"] == st["pid"]
        load = rpc(m, f'<get-load xmlns="{DMS_NS}"><name>keep1</name></get-load>')
        assert int(load.findtext(f".//{q('packets')}") or 0) >= 1
        rpc(m, f'<remove-instance xmlns="{DMS_NS}"><name>keep1</name></remove-instance>')
    assert dms.namespaces() == [] and not pid_alive(int(st["pid"]))
    rx.close()
