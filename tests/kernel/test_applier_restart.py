"""Issue #24.1 / #13.1 on a kernel with ESP (`make test-kernel`): an agent restart keeps the
kernel SAs in use (their output sequence numbers go on; nothing is deleted and re-added), and
SAs the kernel lost (reboot, flush) are not sent with from sequence number 1 again: the
outbound one stays out of the kernel and both are reported for the controller to rekey."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lxml import etree

from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent.appliers.xfrm import XfrmApplier
from nsf_agent.xfrm import Xfrm

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc9061"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
Q = f"{{{IKELESS}}}"
OUT_SPI, IN_SPI = 4096, 4097
OUT_NAME = "out/tunnel/198.51.100.1/198.51.100.2"
IN_NAME = "in/tunnel/198.51.100.2/198.51.100.1"


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context())


def config(mutate=None) -> etree._Element:  # type: ignore[no-untyped-def]
    root = etree.parse(str(DATA / "ikeless-g2g-gw1.xml")).getroot()
    if mutate is not None:
        mutate(root)
    cfg = etree.Element(f"{{{NC_NS}}}config", nsmap={None: NC_NS})
    cfg.append(root)
    return cfg


def ns_run(netns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                          text=True, check=check)


def wire(netns: str) -> None:
    """A dummy link holding the tunnel's and the protected network's local addresses, so
    that traffic to 203.0.113.0/24 leaves through the outbound SA."""
    ns_run(netns, "ip", "link", "add", "d0", "type", "dummy")
    ns_run(netns, "ip", "addr", "add", "198.51.100.1/24", "dev", "d0")
    ns_run(netns, "ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
    ns_run(netns, "ip", "link", "set", "d0", "up")
    ns_run(netns, "ip", "route", "add", "203.0.113.0/24", "dev", "d0")


def send(netns: str, n: int) -> None:
    code = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.bind(('192.0.2.1',0))\n"
            f"[s.sendto(b'x'*64,('203.0.113.5',9)) for _ in range({n})]\n")
    ns_run(netns, "python3", "-c", code)


def oseq(netns: str, spi: int) -> int | None:
    with Xfrm(netns) as x:
        for s in x.dump_states():
            if s.spi == spi:
                if s.replay_esn is not None:
                    return (s.replay_esn.oseq_hi << 32) | s.replay_esn.oseq
                return int((s.replay or {}).get("oseq", 0))
    return None


def start(schema: YangSchema, netns: str, state: Path) -> tuple[XfrmApplier, Datastores]:
    ap = XfrmApplier(netns, state_dir=state)
    ds = Datastores(schema, [ap], state_dir=state)
    ds.reconcile()
    return ap, ds


def test_restart_keeps_sas_in_use(schema: YangSchema, netns: str, tmp_path: Path) -> None:
    wire(netns)
    ap, ds = start(schema, netns, tmp_path)
    ds.edit_config("running", config())
    send(netns, 20)
    used = oseq(netns, OUT_SPI)
    assert used is not None and used >= 20
    ap.close()
    ds.close()
    # the agent restarts (the kernel kept its SAs): nothing is re-created
    ap, ds = start(schema, netns, tmp_path)
    try:
        assert oseq(netns, OUT_SPI) == used  # (deleted and re-added it would be 0)
        assert ap.rekey_required() == {}
        send(netns, 5)
        assert oseq(netns, OUT_SPI) == used + 5
    finally:
        ap.close()
        ds.close()


def test_sas_lost_by_the_kernel_are_not_sent_from_one_again(
        schema: YangSchema, netns: str, tmp_path: Path) -> None:
    wire(netns)
    ap, ds = start(schema, netns, tmp_path)
    ds.edit_config("running", config())
    send(netns, 10)
    ap.close()
    ds.close()
    ns_run(netns, "ip", "xfrm", "state", "flush")  # what a reboot does to the SAD
    ap, ds = start(schema, netns, tmp_path)
    try:
        assert oseq(netns, OUT_SPI) is None  # not installed: its counter is unknown
        assert oseq(netns, IN_SPI) == 0  # reception goes on
        assert ap.rekey_required() == {OUT_NAME: ("sequence-unknown", True),
                                       IN_NAME: ("replay-state-lost", False)}
        # traffic for it is dropped, not sent in clear: the policy still wants the SA
        pols = ns_run(netns, "ip", "xfrm", "policy").stdout
        assert "198.51.100.2" in pols

        # the controller rekeys: new SPI and keys for the outbound SA
        def rekey(root: etree._Element) -> None:
            for e in root.iter(Q + "sad-entry"):
                if e.findtext(Q + "name") == OUT_NAME:
                    e.find(f".//{Q}spi").text = "8192"
                    key = e.find(f".//{Q}encryption/{Q}key")
                    key.text = ":".join(["5a"] * 20)
        ds.edit_config("running", config(rekey), default_operation="replace")
        assert oseq(netns, 8192) == 0
        assert OUT_NAME not in ap.rekey_required()
        # removing everything works although one old state was never in the kernel
        ds.edit_config("running", etree.fromstring(
            f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS}" '
            f'xmlns:nc="{NC_NS}" nc:operation="remove"/></config>'))
        assert oseq(netns, 8192) is None and oseq(netns, IN_SPI) is None
        assert ap.rekey_required() == {}
    finally:
        ap.close()
        ds.close()


def test_state_differing_from_config_is_recreated_and_reported(
        schema: YangSchema, netns: str, tmp_path: Path) -> None:
    wire(netns)
    ap, ds = start(schema, netns, tmp_path)
    ds.edit_config("running", config())
    ap.close()
    ds.close()
    # someone replaced the inbound SA's key behind the agent's back
    ns_run(netns, "ip", "xfrm", "state", "deleteall", "spi", str(IN_SPI))
    ns_run(netns, "ip", "xfrm", "state", "add", "src", "198.51.100.2", "dst", "198.51.100.1",
           "proto", "esp", "spi", str(IN_SPI), "reqid", "1", "mode", "tunnel", "aead",
           "rfc4106(gcm(aes))", "0x" + "77" * 20, "128")
    ap, ds = start(schema, netns, tmp_path)
    try:
        assert ap.rekey_required() == {IN_NAME: ("not-kept", False)}
        with Xfrm(netns) as x:
            got = {s.spi: s for s in x.dump_states()}
        assert got[IN_SPI].algorithms.aead.key != bytes.fromhex("77" * 20)
    finally:
        ap.close()
        ds.close()


def test_sa_whose_hard_lifetime_ended_while_down_is_not_installed(
        schema: YangSchema, netns: str, tmp_path: Path) -> None:
    """#13.4: lifetimes count from the first install, across a reboot. The inbound SA's hard
    lifetime is 7200 s; it was first installed 8000 s before the agent starts again."""
    import json
    import time

    wire(netns)
    ap, ds = start(schema, netns, tmp_path)
    ds.edit_config("running", config())
    ap.close()
    ds.close()
    ledger = tmp_path / "xfrm-states.json"
    entries = json.loads(ledger.read_text())
    assert all(len(x) == 4 for x in entries)  # (dst, spi, proto, first install)
    ledger.write_text(json.dumps([[*x[:3], time.time() - 8000] if x[1] == IN_SPI else x
                                  for x in entries]))
    ns_run(netns, "ip", "xfrm", "state", "flush")  # the reboot
    notes: list[etree._Element] = []
    ap = XfrmApplier(netns, state_dir=tmp_path)
    ap.notify = notes.append
    ds = Datastores(schema, [ap], state_dir=tmp_path)
    ds.reconcile()
    try:
        assert oseq(netns, IN_SPI) is None
        assert ap.rekey_required()[IN_NAME] == ("hard-expired", False)
        assert [n.findtext(Q + "ipsec-sa-name") for n in notes
                if n.tag == Q + "sadb-expire"] == [IN_NAME]
    finally:
        ap.close()
        ds.close()
