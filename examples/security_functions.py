"""Security function instances made by the DMS, on network namespaces (run as root):

    SRC 192.0.2.10 ── host (plays the SFC proxy: routes into the instance) ── DST 198.51.100.10
                              └── instance namespace: sf-in → nftables / NFQUEUE → sf-out

1. start the DMS (`python -m nsf_agent.dms`) with its host-side links in the host namespace;
2. over NETCONF (ncclient): create an IPS instance with one Suricata-style signature, watch
   the traffic pass and the signature drop, and the `inspection-alert` notification arrive;
3. replace it by a firewall instance that denies UDP port 9999, show its counters (`get`);
4. remove everything.

    .venv/bin/python examples/security_functions.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ncclient.transport.session as nc_session
from lxml import etree
from ncclient import manager

from netconf_core.auth import hash_password
from netconf_core.polling import wait_until
from nsf_agent.functions.lab import DST_IP, SRC_A, Lab, drain, send_udp, udp_socket

nc_session.TICK = 0.001
DMS = "urn:i2nsf-sdn:yang:i2nsf-dms"
PASSWORD = os.urandom(9).hex()


def q(tag: str) -> str:
    return f"{{{DMS}}}{tag}"


def call(m: manager.Manager, xml: str) -> etree._Element:
    print(f"   > {xml[:110]}{'...' if len(xml) > 110 else ''}")
    return etree.fromstring(m.dispatch(etree.fromstring(xml)).xml.encode())


def main() -> int:
    lab = Lab()
    work = Path(tempfile.mkdtemp(prefix="i2nsf-sf-demo."))
    (work / "dms.toml").write_text(f"""
[server]
host = "127.0.0.1"
port = 0
state_dir = "{work}"
[dms]
name = "demo-dms"
host_netns = "{lab.host}"
netns_prefix = "sfdemo{lab.tag}-"
load_interval = 1.0
[[users]]
name = "admin"
password_hash = "{hash_password(PASSWORD)}"
""")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    dms = subprocess.Popen([sys.executable, "-m", "nsf_agent.dms", "-c", str(work / "dms.toml"),
                            "--ready-file", str(work / "ready"), "--log-level", "WARNING"],
                           env=env)
    try:
        wait_until(lambda: (work / "ready").exists(), 30, "the DMS")
        port = int((work / "ready").read_text())
        print(f"1. DMS listening on port {port} (state in {work})")
        m = manager.connect(host="127.0.0.1", port=port, username="admin", password=PASSWORD,
                            hostkey_verify=False, allow_agent=False, look_for_keys=False)
        m.create_subscription()
        rx = udp_socket(lab.dst, (DST_IP, 9999))

        print("2. an IPS instance with one signature")
        rule = 'drop udp any any -> any 9999 (msg:"exploit"; content:"|de ad be ef|"; sid:1;)'
        r = call(m, f'<create-instance xmlns="{DMS}"><name>ips1</name><type>ips</type>'
                    f"<to-sf>ips1-in</to-sf><from-sf>ips1-out</from-sf>"
                    f"<signatures>{rule}</signatures></create-instance>")
        lab.steer("ips1-in", r.findtext(f".//{q('sf-mac')}") or "")
        send_udp(lab.src, SRC_A, DST_IP, 9999, [b"hello", b"x\xde\xad\xbe\xefx", b"bye"])
        print(f"   DST received: {[d for d, _ in drain(rx)]}")
        def next_alert() -> list[etree._Element]:  # skips instance-load notifications
            n = m.take_notification(timeout=0.5)
            root = etree.fromstring(n.notification_xml.encode()) if n else etree.Element("x")
            return root.findall(f".//{q('inspection-alert')}")

        for alert in wait_until(next_alert, 5, "an inspection-alert")[:1]:
            f = alert.find(q("flow"))
            print(f"   inspection-alert: sid {alert.findtext(q('sid'))} "
                  f"{alert.findtext(q('msg'))!r} verdict {alert.findtext(q('verdict'))}, flow "
                  f"{f.findtext(q('source-address'))}:{f.findtext(q('source-port'))} -> "
                  f"{f.findtext(q('destination-address'))}:{f.findtext(q('destination-port'))}")
        call(m, f'<remove-instance xmlns="{DMS}"><name>ips1</name></remove-instance>')

        print("3. a firewall instance denying UDP port 9999")
        r = call(m, f'<create-instance xmlns="{DMS}"><name>fw1</name><type>firewall</type>'
                    "<to-sf>fw1-in</to-sf><from-sf>fw1-out</from-sf><firewall>"
                    "<default-action>accept</default-action><rule><seq>10</seq>"
                    "<name>no-9999</name><action>drop</action><protocol>17</protocol>"
                    "<destination-port>9999</destination-port></rule></firewall>"
                    "</create-instance>")
        lab.steer("fw1-in", r.findtext(f".//{q('sf-mac')}") or "")
        send_udp(lab.src, SRC_A, DST_IP, 9999, [b"denied"] * 3)
        print(f"   DST received: {[d for d, _ in drain(rx)]}")
        call(m, f'<get-load xmlns="{DMS}"><name>fw1</name></get-load>')  # counters now
        st = m.get(filter=("subtree", f'<dms xmlns="{DMS}"><instance><name>fw1</name>'
                                      "</instance></dms>"))
        for c in etree.fromstring(st.xml.encode()).iter(q("counter")):
            print(f"   counter {c.findtext(q('name'))}: {c.findtext(q('packets'))} packets")
        call(m, f'<remove-instance xmlns="{DMS}"><name>fw1</name></remove-instance>')
        left = [n for n in os.listdir("/run/netns") if n.startswith(f"sfdemo{lab.tag}-")]
        print(f"4. removed; instance namespaces left: {left}")
        m.close_session()
        rx.close()
    finally:
        dms.terminate()
        dms.wait(10)
        lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
