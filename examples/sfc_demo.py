"""SFC-enabled I2NSF managed by the controller, on network namespaces (run as root).

    hostA ── C (classifier+SFF) ── F (SFF + SFC proxies ─ 5 security functions) ── E ── hostB
               └──────────── mgmt: controller ⇄ agents (NETCONF over SSH) ───────────┘

1. Trust levels (seed §5.2): trusted and untrusted sources of hostA take different chains;
   the capture between C and F shows each source's packets on its own SPI.
2. Dynamic path alternation (seed §5.1): a flood from the trusted source carries an attack
   pattern; the IDS on SFP-1 reports it, the SFF re-classifies the flow onto SFP-2 where the
   DDoS mitigator caps it.
3. NSF-triggered steering (seed §6): the IDS's advanced action sends an exploit flow to the
   IPS, which no chain contains; the SFF follows the function's decision itself.
4. Table miss (seed §4.5): an SFF lost an entry; the controller answers its request.

The functions are the project's real ones (nftables firewall and DDoS mitigator, Hyperscan
IDS); each runs in its own namespace behind F's SFC proxy and is registered with the
controller's catalog the way the DMS registers its instances.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.sfc_ctl_lab import (  # noqa: E402
    Capture,
    poll,
    sfc_controller_lab,
    tshark_nsh,
)
from tests.integration.test_sfc_use_cases import (  # noqa: E402
    CONFIG,
    FUNCS,
    Function,
    _count,
    _send,
    _udp_receiver,
)

SFCP = "{urn:i2nsf-sdn:yang:i2nsf-sfc-policy}"
TRUST = """<trust-levels>
<trust-level><name>trusted</name><source-prefix>198.51.100.0/28</source-prefix></trust-level>
<trust-level><name>untrusted</name><source-prefix>198.51.100.16/28</source-prefix>
</trust-level></trust-levels>"""
POLICIES = """<policies>
<policy><name>trusted</name><match><trust-level>trusted</trust-level></match>
<chain>sfp-1</chain></policy>
<policy><name>untrusted</name><match><trust-level>untrusted</trust-level></match>
<chain>sfp-2</chain></policy></policies>"""
UNTRUSTED = "198.51.100.20"


def bold(s: str) -> None:
    print(f"\n\033[1m{s}\033[0m", flush=True)


def note(s: str) -> None:
    print(f"   {s}", flush=True)


def show_paths(lab: object, m: object) -> dict[str, int]:
    st = lab.sfc_state(m)  # type: ignore[attr-defined]
    out = {}
    for p in st.iter(SFCP + "path"):
        hops = []
        for h in p.iter(SFCP + "hop"):
            insts = ",".join(i.findtext(SFCP + "name") or "" for i in h.iter(SFCP + "instance"))
            hops.append(f"{h.findtext(SFCP + 'sf-type')}[{insts}]@SI{h.findtext(SFCP + 'si')}")
        out[p.findtext(SFCP + "chain") or ""] = int(p.findtext(SFCP + "spi") or 0)
        note(f"SPI {p.findtext(SFCP + 'spi'):>2} {p.findtext(SFCP + 'chain')}: "
             f"{' -> '.join(hops)}  ({p.findtext(SFCP + 'status')})")
    return out


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (network namespaces, raw sockets, nftables)", file=sys.stderr)
        return 1
    t_start = time.monotonic()
    bold("== 1. topology, agents (classifier/SFF data path) and the controller")
    with sfc_controller_lab(sfs=len(FUNCS)) as lab:
        import subprocess

        subprocess.run(["ip", "-n", lab.net.host_a, "addr", "add", f"{UNTRUSTED}/24", "dev",
                        "eth0"], check=True)
        note(f"namespaces {lab.net.prefix}-*: hostA (198.51.100.10 trusted, {UNTRUSTED} "
             "untrusted) -> C -> F -> E -> hostB 203.0.113.10")
        funcs = {}
        try:
            bold("== 2. security functions behind F's proxies, registered with the catalog")
            for i, (name, t, spec) in enumerate(FUNCS):
                funcs[name] = Function(lab, i, name, t, spec)
            for i, (name, t, _spec) in enumerate(FUNCS):
                funcs[name].ready()
                note(f"{name:7} ({t}) in namespace {lab.net.sf(i)}")
            m = lab.connect()
            lab.configure(m, lab.forwarders_xml() + CONFIG.split("<chains>")[0])
            lab.wait_sessions(m)
            for i, (name, t, _s) in enumerate(FUNCS):
                lab.register(m, i, name, t, report_socket=funcs[name].proxy_socket)
            note("register-instance x5 (i2nsf-sfc-catalog) done")

            bold("== 3. SFC policy: chains, trust levels, re-classification (i2nsf-sfc-policy)")
            chains = CONFIG.split("<policies>")[0].split("</sf-types>")[1]
            reclass = CONFIG.split("</policies>")[1]
            lab.configure(m, TRUST + chains + POLICIES + reclass, inventory=False)
            poll(lambda: [v["status"] for v in lab.paths(m).values()] == ["active"] * 2, 20,
                 "paths active")
            spis = show_paths(lab, m)

            bold("== 4. use case 'trust levels': each source on its own path (tshark, C -> F)")
            cap = Capture(lab.net.f, "c", lab.workdir / "cf.pcap")
            for src in ("198.51.100.10", UNTRUSTED):
                r = lab.net.run(lab.net.host_a, ["ping", "-c", "2", "-i", "0.1", "-I", src,
                                                 "203.0.113.10"])
                note(f"ping from {src}: {'ok' if r.returncode == 0 else 'FAILED'}")
            time.sleep(0.2)
            seen = sorted(set(tshark_nsh(cap.stop())))
            for src, spi, si in seen:
                name = next((k for k, v in spis.items() if v == spi), "?")
                note(f"NSH on the wire: inner source {src:15} SPI {spi} ({name}) SI {si}")

            bold("== 5. use case 'dynamic path alternation': a flood with an attack pattern")
            rx = _udp_receiver(lab, 9000)
            cap = Capture(lab.net.f, "e", lab.workdir / "fe.pcap")
            _send(lab, 400, 0.002, b"ATTACK" + b"x" * 50, 40002)
            got = _count(rx)
            time.sleep(0.2)
            rows = tshark_nsh(cap.stop())
            alerts = [r for r in funcs["ids-1"].results() if r.get("sid") == 100]
            if alerts:
                a = alerts[0]
                note(f"IDS ids-1: sid {a['sid']} {a['msg']!r} verdict {a['verdict']}, "
                     f"action {a['action']}")
            after = sorted({(spi, si) for _s, spi, si in rows})
            note(f"after F's last function the flood travels on {after} (SPI, SI)")
            note(f"flood: 400 packets sent at 500 pps, {got} reached hostB "
                 "(DDoS mitigator: 50 pps per source)")
            for kind, detail in lab.events(m)[-40:]:
                if kind == "inspection-result":
                    note(f"controller event: {detail}")
                    break

            bold("== 6. use case 'NSF-triggered steering': no chain leads to the IPS")
            lab.configure(m, lab.forwarders_xml() + CONFIG.split("<chains>")[0].replace(
                "<name>ips</name>", "<name>ips</name><steering-target>true</steering-target>")
                + TRUST + "<chains><chain><name>sfp-1</name><sf-type>firewall</sf-type>"
                "<sf-type>ids</sf-type></chain></chains><policies><policy><name>all</name>"
                "<chain>sfp-1</chain></policy></policies>", inventory=False, replace=True)
            poll(lambda: {k: v["status"] for k, v in lab.paths(m).items()} == {
                "sfp-1": "active", "ips": "active"}, 20, "paths active")
            spis = show_paths(lab, m)
            _send(lab, 30, 0.005, b"EXPLOIT payload", 40011)
            got = _count(rx)
            drops = [r for r in funcs["ips-1"].results() if r.get("verdict") == "drop"]
            note(f"an exploit flow: the IDS asks for the IPS, F steers it there itself; "
                 f"{got}/30 delivered; the IPS reported {len(drops)} drop verdict(s) for "
                 f"the flow (sid {drops[0]['sid'] if drops else '-'})")

            bold("== 7. table miss: C loses an entry, asks the controller (pull)")
            from tests.integration.test_sfc_controller import _agent_edit, _stat

            before = _stat(lab, m, "table-misses-answered")
            _agent_edit(lab, "c", '<entry xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0" '
                        f'nc:operation="delete"><spi>{spis["sfp-1"]}</spi><si>255</si>'
                        "</entry>")
            r = lab.net.run(lab.net.host_a, ["ping", "-c", "1", "-W", "2", "-I",
                                             "198.51.100.10", "203.0.113.10"])
            poll(lambda: _stat(lab, m, "table-misses-answered") > before, 5, "the answer")
            note(f"ping {'ok' if r.returncode == 0 else 'FAILED'}; the controller answered "
                 f"{_stat(lab, m, 'last-miss-answer-time') / 1000:.2f} ms after the "
                 "notification arrived")
            m.close_session()
        finally:
            for f in funcs.values():
                f.close()
            bold("== tearing down")
    note(f"namespaces removed, processes stopped ({time.monotonic() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
