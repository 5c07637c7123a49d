"""Security functions on real traffic: each function process runs in an instance namespace
(built by the DMS's plumbing) behind a host namespace that routes SRC <-> DST traffic through
it; the kernel's nftables and NFQUEUE do the work, the results arrive as JSON datagrams."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sflab import (
    DST6,
    DST_IP,
    SRC6,
    SRC_A,
    SRC_B,
    Lab,
    SfProcess,
    drain,
    needs_root,
    pending,
    send_udp,
    sh,
    udp_socket,
)

pytestmark = [needs_root, pytest.mark.root]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def sources(got: list[tuple[bytes, object]]) -> list[str]:
    return [addr[0] for _, addr in got]  # type: ignore[index]


def test_firewall_drops_what_rules_deny_and_keeps_state(lab: Lab, tmp_path: Path) -> None:
    sf = SfProcess(lab, "firewall", {"firewall": {
        "default_action": "drop", "accept_established": True, "rules": [
            {"seq": 10, "action": "accept", "name": "to-9998", "protocol": 17,
             "source_prefix": "192.0.2.0/24", "destination_port": "9998",
             "ct_state": ["new"]},
            {"seq": 20, "action": "drop", "name": "no-9999", "protocol": 17,
             "destination_port": "9999"},
        ]}}, tmp_path)
    try:
        ok = udp_socket(lab.dst, (DST_IP, 9998))
        denied = udp_socket(lab.dst, (DST_IP, 9999))
        client = udp_socket(lab.src, (SRC_A, 40000))
        for _ in range(5):
            client.sendto(b"allowed", (DST_IP, 9998))
        send_udp(lab.src, SRC_A, DST_IP, 9999, [b"denied"] * 5)
        got = drain(ok)
        assert [d for d, _ in got] == [b"allowed"] * 5
        assert drain(denied, 0.1) == []
        # the reply of an accepted flow passes (ct established) although the default drops
        ok.sendto(b"reply", (SRC_A, 40000))
        assert [d for d, _ in drain(client)] == [b"reply"]
        # a flow from DST that no rule accepts: default drop
        stranger = udp_socket(lab.dst, (DST_IP, 0))
        stranger.sendto(b"unsolicited", (SRC_A, 40001))
        late = udp_socket(lab.src, (SRC_A, 40001))
        assert drain(late, 0.2) == []
        results = sf.results()
        by_sid = {r["sid"]: r for r in results}
        assert by_sid[20]["verdict"] == "drop" and by_sid[20]["msg"] == "no-9999"
        assert by_sid[20]["flow"] == {"src": SRC_A, "dst": DST_IP, "proto": 17,
                                      "sport": by_sid[20]["flow"]["sport"], "dport": 9999}
        assert by_sid[0]["msg"] == "default action" and by_sid[0]["flow"]["dport"] == 40001
        # the kernel's counters, read back
        counters = json.loads(sh("ip", "netns", "exec", sf.ns, "nft", "-j", "list",
                                 "counters"))["nftables"]
        c = {x["counter"]["name"]: x["counter"]["packets"] for x in counters if "counter" in x}
        assert c["r10"] == 5 and c["r20"] == 5 and c["r0"] == 1 and c["established"] >= 1
    finally:
        sf.close()


def test_ddos_mitigator_caps_one_source_while_another_passes(lab: Lab, tmp_path: Path) -> None:
    rate, burst = 500, 50
    sf = SfProcess(lab, "ddos", {"ddos": {"per_source_pps": rate, "per_source_burst": burst,
                                          "reclassify": "ddos-suspected"}}, tmp_path)
    try:
        rx = udp_socket(lab.dst, (DST_IP, 7000))
        flood = [b"F" * 64] * 20000
        took: list[float] = []
        t = threading.Thread(target=lambda: took.append(
            send_udp(lab.src, SRC_A, DST_IP, 7000, flood)))
        t.start()
        send_udp(lab.src, SRC_B, DST_IP, 7000, [b"B" * 64] * 40, pace=0.005)
        t.join()
        got = sources(drain(rx))
        from_a, from_b = got.count(SRC_A), got.count(SRC_B)
        dt = took[0]
        before, after = len(flood) / dt, from_a / dt
        print(f"\nDDoS: source A offered {before:.0f} pps for {dt:.2f} s, {after:.0f} pps "
              f"passed (limit {rate} pps, burst {burst}); source B {from_b}/40 passed")
        assert from_b == 40
        assert from_a <= rate * (dt + 0.2) + burst + 20
        assert before > 4 * rate and from_a < len(flood) / 4
        counters = json.loads(sh("ip", "netns", "exec", sf.ns, "nft", "-j", "list",
                                 "counters"))["nftables"]
        c = {x["counter"]["name"]: x["counter"]["packets"] for x in counters if "counter" in x}
        assert c["rate_dropped"] >= len(flood) - from_a - 500  # what it dropped, counted
        res = sf.results()
        assert res and all(r["flow"]["src"] == SRC_A for r in res)
        assert res[0]["action"] == {"reclassify": "ddos-suspected"}
        assert res[0]["msg"] == "packet rate per source exceeded"
    finally:
        sf.close()


def test_ddos_syn_flood_limit(lab: Lab, tmp_path: Path) -> None:
    sf = SfProcess(lab, "ddos", {"ddos": {"syn_per_source_pps": 20, "syn_burst": 5}}, tmp_path)
    try:
        from scapy.layers.inet import IP, TCP

        raw = [bytes(IP(src=SRC_A, dst=DST_IP) / TCP(sport=1000 + i, dport=80, flags="S"))
               for i in range(300)]
        from sflab import in_netns

        def send() -> float:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            t0 = time.monotonic()
            for p in raw:
                s.sendto(p, (DST_IP, 0))
            s.close()
            return time.monotonic() - t0

        cap = in_netns(lab.dst, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM,
                                                      socket.htons(0x0800)))
        took = in_netns(lab.src, send)
        seen = 0
        for data, _ in drain(cap):
            if len(data) >= 40 and data[9] == 6 and data[33] & 0x02:
                seen += 1
        cap.close()
        assert 5 <= seen <= 5 + 20 * (took + 0.5) + 10, (seen, took)  # burst + rate, not 300
        res = sf.results()
        assert res and res[0]["msg"] == "SYN rate per source exceeded"
    finally:
        sf.close()


def test_anti_spoofing_ingress_filter_and_bogons(lab: Lab, tmp_path: Path) -> None:
    sf = SfProcess(lab, "anti-spoofing", {"anti_spoofing": {
        "allowed_source_prefix": ["192.0.2.0/24", "2001:db8:1::/64"],
        "bogon_prefix": ["192.0.2.11/32"]}}, tmp_path)
    try:
        rx = udp_socket(lab.dst, (DST_IP, 7100))
        rx6 = udp_socket(lab.dst, (DST6, 7100), socket.AF_INET6)
        send_udp(lab.src, SRC_A, DST_IP, 7100, [b"a"] * 3)
        send_udp(lab.src, SRC_B, DST_IP, 7100, [b"b"] * 3)  # a bogon (blackhole route)
        send_udp(lab.src, SRC6, DST6, 7100, [b"6"] * 3)
        assert sources(drain(rx)) == [SRC_A] * 3
        assert len(drain(rx6)) == 3
        # DST's address is not an allowed source: its packets are dropped
        send_udp(lab.dst, DST_IP, SRC_A, 7101, [b"x"] * 2)
        res = sf.results()
        msgs = {(r["flow"]["src"], r["msg"]) for r in res}
        assert (SRC_B, "martian or bogon source") in msgs
        assert (DST_IP, "source not allowed") in msgs
    finally:
        sf.close()


def test_ids_alerts_and_ips_drops_on_signatures(lab: Lab, tmp_path: Path) -> None:
    rules = ('drop udp any any -> any 7200 (msg:"evil payload"; content:"|de ad|BEEF"; nocase; '
             'sid:1000001; next-function:"dpi";)\n'
             'alert udp any any -> any 7200 (msg:"greeting"; content:"hello"; depth:5; '
             'sid:1000002;)\n')
    for kind, delivered in (("ids", 4), ("ips", 2)):
        d = tmp_path / kind
        d.mkdir()
        sf = SfProcess(lab, kind, {"signatures": rules}, d)
        try:
            rx = udp_socket(lab.dst, (DST_IP, 7200))
            send_udp(lab.src, SRC_A, DST_IP, 7200,
                     [b"x\xde\xadbeefx", b"x\xde\xadbeefx", b"hello", b"say hello"])
            got = [p for p, _ in drain(rx)]
            assert len(got) == delivered, (kind, got)
            res = {r["sid"]: r for r in sf.results()}
            assert set(res) == {1000001, 1000002}
            evil = res[1000001]
            assert evil["verdict"] == ("drop" if kind == "ips" else "alert")
            assert evil["action"] == {"next-function": "dpi"}
            assert evil["flow"]["src"] == SRC_A and evil["flow"]["dport"] == 7200
            assert evil["flow"]["proto"] == 17 and evil["type"] == kind
            load = [json.loads(d) for d in pending(sf.loads)][-1]
            assert load["kind"] == "load" and load["counters"]["sid 1000001"][0] == 2
            rx.close()
        finally:
            sf.close()


def test_dpi_reports_application_of_flows(lab: Lab, tmp_path: Path) -> None:
    from scapy.layers.dns import DNS, DNSQR

    sf = SfProcess(lab, "dpi", {"signatures":
                                'alert dns any any -> any any (msg:"bad domain"; dns.query; '
                                'content:"evil.example"; sid:9; reclassify:"malware";)'},
                   tmp_path)
    try:
        rx = udp_socket(lab.dst, (DST_IP, 53))
        send_udp(lab.src, SRC_A, DST_IP, 53,
                 [bytes(DNS(rd=1, qd=DNSQR(qname="www.Evil.Example.com")))])
        assert len(drain(rx)) == 1
        res = sf.results()
        app = [r for r in res if r["sid"] == 0]
        assert app and app[0]["app"] == {"protocol": "dns", "name": "www.evil.example.com"}
        bad = [r for r in res if r["sid"] == 9]
        assert bad and bad[0]["action"] == {"reclassify": "malware"}
    finally:
        sf.close()


def test_dpi_on_real_tcp_flows_http_host_and_tls_sni(lab: Lab, tmp_path: Path) -> None:
    """A real TCP connection (kernel handshake through the instance) carrying an HTTP request,
    another carrying a TLS ClientHello (Python's ssl): the DPI reports Host and SNI, and a rule
    on the http.host buffer alerts with the flow."""
    import ssl

    sf = SfProcess(lab, "dpi", {"signatures":
                                'alert http any any -> any any (msg:"shop"; http.host; '
                                'content:"shop.example"; sid:21;)'}, tmp_path)
    try:
        def listen(port: int) -> socket.socket:
            s = socket.socket()
            s.bind((DST_IP, port))
            s.listen(4)
            s.settimeout(5)
            return s

        from sflab import in_netns

        srv_http = in_netns(lab.dst, lambda: listen(8080))
        srv_tls = in_netns(lab.dst, lambda: listen(8443))
        cli = in_netns(lab.src, lambda: socket.create_connection((DST_IP, 8080), timeout=5))
        conn, _ = srv_http.accept()
        cli.sendall(b"GET /cart HTTP/1.1\r\nHost: www.Shop.Example\r\nUser-Agent: t\r\n\r\n")
        assert conn.recv(4096).startswith(b"GET /cart")  # the DPI forwards
        raw = in_netns(lab.src, lambda: socket.create_connection((DST_IP, 8443), timeout=5))
        tconn, _ = srv_tls.accept()
        ctx = ssl.create_default_context()
        tls = ctx.wrap_socket(raw, server_hostname="secure.example.org",
                              do_handshake_on_connect=False)
        tls.setblocking(False)
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()  # sends the ClientHello; nobody answers
        assert tconn.recv(4096)[:1] == b"\x16"  # a TLS handshake record arrived
        res = sf.results()
        apps = {(r["app"]["protocol"], r["app"]["name"]) for r in res if r["sid"] == 0}
        assert ("http", "www.shop.example") in apps and ("tls", "secure.example.org") in apps
        shop = [r for r in res if r["sid"] == 21]
        assert shop and shop[0]["flow"]["dport"] == 8080 and shop[0]["flow"]["proto"] == 6
        for s in (cli, conn, tls, tconn, srv_http, srv_tls):
            s.close()
    finally:
        sf.close()


def test_rule_table_is_replaced_atomically(lab: Lab) -> None:
    """A table nft refuses leaves the one in force untouched (one transaction)."""
    from sflab import in_netns

    from nsf_agent.functions import nftables
    from nsf_agent.functions.spec import Firewall, FwRule, Spec

    ns = f"sfl-a-{lab.tag}"
    sh("ip", "netns", "add", ns)
    try:
        good = Spec("firewall", firewall=Firewall("accept", True, [
            FwRule(10, "drop", protocol=17, destination_port="9999")]))
        bad = Spec("firewall", firewall=Firewall("drop", True, [
            FwRule(10, "drop", protocol=17, destination_port="7"),
            FwRule(20, "drop", protocol=17, destination_port="70000")]))  # nft refuses it
        in_netns(ns, lambda: nftables.apply(good))
        before = sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", nftables.TABLE)
        with pytest.raises(nftables.NftError):
            in_netns(ns, lambda: nftables.apply(bad))
        after = sh("ip", "netns", "exec", ns, "nft", "list", "table", "inet", nftables.TABLE)
        assert after == before and "udp dport 9999" in after and "dport 7 " not in after
    finally:
        sh("ip", "netns", "del", ns, check=False)


def test_full_queue_ids_passes_ips_drops(lab: Lab, tmp_path: Path) -> None:
    """A stopped (or overloaded) engine: the IDS's full queue lets packets through uninspected
    (fail-open), the IPS's drops them; queued packets go on once the engine runs again."""
    import os
    import signal

    for kind, expect_min, expect_max in (("ids", 26, 30), ("ips", 0, 0)):
        d = tmp_path / kind
        d.mkdir()
        sf = SfProcess(lab, kind, {"signatures": ""}, d, ("--queue-length", "4"))
        rx = udp_socket(lab.dst, (DST_IP, 7800))
        try:
            os.kill(sf.proc.pid, signal.SIGSTOP)
            send_udp(lab.src, SRC_A, DST_IP, 7800, [b"p%d" % i for i in range(30)])
            got = len(drain(rx, 0.3))
            assert expect_min <= got <= expect_max, (kind, got)
            os.kill(sf.proc.pid, signal.SIGCONT)
            assert len(drain(rx, 0.5)) == 4  # the 4 queued ones, inspected and passed
        finally:
            os.kill(sf.proc.pid, signal.SIGCONT)
            rx.close()
            sf.close()


def test_function_exits_when_its_instance_is_torn_down(lab: Lab, tmp_path: Path) -> None:
    """Whoever deletes the instance's links (or the host namespace) without stopping the
    process: it notices and exits instead of lingering in a namespace nobody reaches."""
    from netconf_core.polling import wait_until

    sf = SfProcess(lab, "forward", {}, tmp_path)
    try:
        sh("ip", "-n", lab.host, "link", "del", "dev", sf.to_sf)
        sh("ip", "-n", lab.host, "link", "del", "dev", sf.from_sf)
        wait_until(lambda: sf.proc.poll() is not None, 5, "the function's exit")
        assert sf.proc.returncode == 0
    finally:
        sf.close()
