"""Two controllers agree on IKE-less SAs over the east-west interface (seed section 10.2,
case 2): real SSH NETCONF between them with pinned host keys and per-peer accounts, each
pushes only its own gateway, traffic flows through the userspace ESP data path; a policy
mismatch is reported on both controllers; bad input is an rpc-error and changes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from eastwest_lab import EW, NC, PORTS, EastWestLab, eastwest_lab
from gateway_lab import poll
from lxml import etree
from ncclient.operations import RaiseMode, RPCError

from netconf_core.i2nsf.namespaces import IKELESS_NS
from nsf_agent.userspace.lab import HOST_B, NET_A, NET_B

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (network namespaces, TUN, raw sockets)"),
    pytest.mark.root,
]
E = f"{{{EW}}}"
IK = f"{{{IKELESS_NS}}}"
CBC = "<encryption>12</encryption><key-length>256</key-length><integrity>12</integrity>"


@pytest.fixture(scope="module")
def ew() -> Iterator[EastWestLab]:
    with eastwest_lab("iew") as lab:
        yield lab


def ew_state(lab: EastWestLab, side: str) -> etree._Element:
    m = lab.connect_ctl(side)
    try:
        reply = m.get(filter=("subtree", f'<east-west-state xmlns="{EW}"/>'))
        return etree.fromstring(reply.xml.encode())
    finally:
        m.close_session()


def policy(lab: EastWestLab, side: str, name: str) -> tuple[str, str]:
    for p in ew_state(lab, side).iter(E + "policy"):
        if p.findtext(E + "name") == name:
            return p.findtext(E + "status") or "", p.findtext(E + "error-message") or ""
    return "", ""


def edit(lab: EastWestLab, side: str, config: str) -> None:
    m = lab.connect_ctl(side)
    try:
        m.edit_config(target="running", config=config, default_operation="replace")
    finally:
        m.close_session()


def rpc(lab: EastWestLab, side: str, body: str, **kw: Any) -> etree._Element:
    m = lab.connect_ctl(side, **kw)
    m.raise_mode = RaiseMode.NONE  # the reply, rpc-error or not
    try:
        return etree.fromstring(m.dispatch(etree.fromstring(body)).xml.encode())
    finally:
        m.close_session()


def running(lab: EastWestLab, side: str, agent: bool = False) -> bytes:
    m = lab.connect(side) if agent else lab.connect_ctl(side)
    try:
        data = etree.fromstring(m.get_config(source="running").xml.encode())[0]
        return etree.tostring(data, method="c14n")  # not the reply: its message-id varies
    finally:
        m.close_session()


def ping(lab: EastWestLab, count: int = 3) -> Any:
    return lab.lab.run(lab.lab.host_a, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W",
                                        "2", HOST_B], timeout=60)


def test_two_controllers_mismatch_then_agree_and_protect(ew: EastWestLab) -> None:
    edit(ew, "a", ew.east_west_xml("a", "to-b", remote_prefix=str(NET_B)))
    # B's admin first gets the algorithms wrong: reported on both controllers
    edit(ew, "b", ew.east_west_xml("b", "to-a", CBC, remote_prefix=str(NET_A)))
    poll(lambda: policy(ew, "a", "to-b")[0] == "mismatch"
         and policy(ew, "b", "to-a")[0] == "mismatch", 20, "mismatch on both controllers")
    for side, name in (("a", "to-b"), ("b", "to-a")):
        assert "algorithms" in policy(ew, side, name)[1], policy(ew, side, name)
    assert ping(ew, 1).returncode != 0  # not protected, nothing pushed
    assert b"ew/" not in running(ew, "a", agent=True)

    # discovery: ctl-a learned from ctl-b's announcement who manages HOST_B's prefix
    out = rpc(ew, "a", f'<lookup-prefix xmlns="{EW}"><address>{HOST_B}</address>'
                       "</lookup-prefix>")
    assert (out.findtext(f".//{E}controller-id"), out.findtext(f".//{E}nsf"),
            out.findtext(f".//{E}prefix")) == ("ctl-b", "gwb", str(NET_B))

    edit(ew, "b", ew.east_west_xml("b", "to-a", remote_prefix=str(NET_A)))
    poll(lambda: policy(ew, "a", "to-b")[0] == "protected"
         and policy(ew, "b", "to-a")[0] == "protected", 20, "protected on both")
    r = ping(ew, 5)
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout

    # each controller allocated the SPI inbound to its own NSF; the agents hold them
    st = {s: next(p for p in ew_state(ew, s).iter(E + "policy")) for s in "ab"}
    spis = {s: ([int(x.text) for x in st[s].iter(E + "inbound-spi")],
                [int(x.text) for x in st[s].iter(E + "outbound-spi")]) for s in "ab"}
    assert spis["a"][0] == spis["b"][1] and spis["b"][0] == spis["a"][1], spis
    for s in "ab":
        sad = etree.fromstring(running(ew, s, agent=True))
        got = {int(e.findtext(f"{IK}ipsec-sa-config/{IK}spi") or 0)
               for e in sad.iter(IK + "sad-entry")
               if (e.findtext(IK + "name") or "").startswith("ew/")}
        assert got == {*spis[s][0], *spis[s][1]}, (s, got, spis)
    # the keys never crossed the east-west channel: neither controller's log has them
    key = next(etree.fromstring(running(ew, "a", agent=True)).iter(IK + "key")).text or ""
    for s in "ab":
        assert key.replace(":", "") not in (ew.workdir / f"controller-{s}.log").read_text()


def test_bad_input_is_an_rpc_error_and_changes_nothing(ew: EastWestLab) -> None:
    before = {s: running(ew, s) for s in "ab"}
    agents = {s: running(ew, s, agent=True) for s in "ab"}
    bad = ew.east_west_xml("a", "to-b", remote_prefix=str(NET_B)).replace(
        "<local-nsf>gwa</local-nsf>", "<local-nsf>nope</local-nsf>")
    with pytest.raises(RPCError, match="local-nsf"):
        edit(ew, "a", bad)
    # east-west RPCs from an account that is not the peer's are refused
    prop = (f'<confirm-sa xmlns="{EW}"><controller-id>ctl-b</controller-id>'
            f"<nonce>{'0' * 32}</nonce></confirm-sa>")
    out = rpc(ew, "a", prop)
    assert out.find(f".//{{{NC}}}rpc-error") is not None
    assert "peer-b" in (out.findtext(f".//{{{NC}}}error-message") or "")
    # the right account, but a nonce nobody agreed on
    out = rpc(ew, "a", prop, user="peer-b", key=ew.workdir / "peer_b_id")
    assert "no agreement" in (out.findtext(f".//{{{NC}}}error-message") or "")
    out = rpc(ew, "a", f'<lookup-prefix xmlns="{EW}"><address>192.0.2.77</address>'
                       "</lookup-prefix>")
    assert out.findtext(f".//{{{NC}}}error-tag") == "data-missing"
    assert {s: running(ew, s) for s in "ab"} == before
    assert {s: running(ew, s, agent=True) for s in "ab"} == agents
    assert policy(ew, "a", "to-b")[0] == "protected"
    assert ping(ew, 2).returncode == 0



def ew_entries(lab: EastWestLab, side: str) -> set[str]:
    root = etree.fromstring(running(lab, side, agent=True))
    return {e.findtext(IK + "name") or "" for e in root.iter(IK + "sad-entry")
            if (e.findtext(IK + "name") or "").startswith("ew/")}


def generation(lab: EastWestLab, side: str) -> int:
    p = next(ew_state(lab, side).iter(E + "policy"))
    return int(p.findtext(E + "generation") or 0)


def test_rekey_make_before_break_across_both_controllers(ew: EastWestLab) -> None:
    """Rekeys under a 50/s ping lose nothing: new inbound SAs on both NSFs, then each
    sender switches, then the old inbound SAs go; only the initiator may start one."""
    out = rpc(ew, "b", f'<rekey-policy xmlns="{EW}"><policy>to-a</policy></rekey-policy>')
    assert "ctl-a initiates" in (out.findtext(f".//{{{NC}}}error-message") or "")
    gen0 = generation(ew, "a")
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", ew.lab.host_a, "ping", "-n", "-q", "-c", "200", "-i", "0.02",
         "-W", "1", HOST_B], stdout=subprocess.PIPE, text=True)
    try:
        for i in (1, 2, 3):
            out = rpc(ew, "a", f'<rekey-policy xmlns="{EW}"><policy>to-b</policy>'
                               "</rekey-policy>")
            assert out.findtext(f".//{E}generation") == str(gen0 + i), etree.tostring(out)
            poll(lambda i=i: all(generation(ew, s) == gen0 + i
                                 and policy(ew, s, "to-" + o) == ("protected", "")
                                 for s, o in (("a", "b"), ("b", "a")))
                 and all(len(ew_entries(ew, s)) == 2 for s in "ab"), 20,
                 f"rekey {i} complete on both")
        stdout, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert " 0% packet loss" in stdout, stdout
    for s in "ab":  # only the newest generation is left on each NSF
        assert all(n.endswith(f"/{gen0 + 3}") for n in ew_entries(ew, s)), ew_entries(ew, s)


def test_controller_restart_resumes_the_agreement(ew: EastWestLab) -> None:
    """ctl-b killed: the SAs on the NSFs keep working and ctl-a shows it unreachable; ctl-b
    restarted: it resumes the same agreement from its state (same SPIs, no renegotiation)
    and both are protected again."""
    spis = [x.text for x in ew_state(ew, "b").iter(E + "inbound-spi")]
    ew.ctls["b"].kill()
    assert ping(ew, 3).returncode == 0
    poll(lambda: any(p.findtext(E + "status") == "unreachable"
                     for p in ew_state(ew, "a").iter(E + "peer")), 20,
         "ctl-a sees ctl-b unreachable")
    ew.ctls["b"].start()
    poll(lambda: policy(ew, "b", "to-a")[0] == "protected", 20, "ctl-b protected again")
    assert [x.text for x in ew_state(ew, "b").iter(E + "inbound-spi")] == spis
    assert policy(ew, "a", "to-b")[0] == "protected"
    assert ping(ew, 3).returncode == 0


def test_controller_killed_mid_rekey_resumes_it(ew: EastWestLab) -> None:
    """Either controller killed right after a rekey started: the old and new SAs keep the
    traffic flowing, and the restarted controller finishes the rekey from its state."""
    pinger = subprocess.Popen(
        ["ip", "netns", "exec", ew.lab.host_a, "ping", "-n", "-q", "-c", "300", "-i", "0.02",
         "-W", "1", HOST_B], stdout=subprocess.PIPE, text=True)
    try:
        for victim in ("b", "a"):
            gen = generation(ew, "a")
            rpc(ew, "a", f'<rekey-policy xmlns="{EW}"><policy>to-b</policy></rekey-policy>')
            if victim == "b":  # killed while the NSFs hold both generations
                poll(lambda: next(ew_state(ew, "b").iter(E + "rekey-step"), None) is not None,
                     10, "ctl-b under way", interval=0.005)
            ew.ctls[victim].kill()  # ctl-a: right after it answered the request
            ew.ctls[victim].start()
            poll(lambda gen=gen: all(generation(ew, s) == gen + 1
                                     and policy(ew, s, "to-" + o) == ("protected", "")
                                     for s, o in (("a", "b"), ("b", "a")))
                 and all(len(ew_entries(ew, s)) == 2 for s in "ab"), 20,
                 f"rekey finished after ctl-{victim} restarted")
        stdout, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
    assert " 0% packet loss" in stdout, stdout
    for s in "ab":  # each was restarted with the rekey unfinished in its state
        assert "(1 rekeys in progress" in (ew.workdir / f"controller-{s}.log").read_text() \
            or "1 requested)" in (ew.workdir / f"controller-{s}.log").read_text()


def test_scheduled_rekeys_with_lifetimes(ew: EastWestLab) -> None:
    """With rekey-time on both sides, ctl-a rekeys on schedule (make-before-break, 0 lost
    under a 50/s ping) and the SAs carry the hard lifetime that backs the schedule up."""
    rt = "<rekey-time>1</rekey-time>"
    edit(ew, "a", ew.east_west_xml("a", "to-b", rt, remote_prefix=str(NET_B)))
    edit(ew, "b", ew.east_west_xml("b", "to-a", rt, remote_prefix=str(NET_A)))
    poll(lambda: all(policy(ew, s, "to-" + o) == ("protected", "")
                     for s, o in (("a", "b"), ("b", "a"))), 20, "protected with rekey-time")
    gen = generation(ew, "a")
    r = ew.lab.run(
        ew.lab.host_a, ["ping", "-n", "-q", "-c", "150", "-i", "0.02", "-W", "1", HOST_B],
        timeout=60)
    assert " 0% packet loss" in r.stdout, r.stdout
    assert generation(ew, "a") >= gen + 2  # at least two rekeys during those 3 s
    poll(lambda: policy(ew, "b", "to-a")[0] == "protected", 10, "ctl-b protected")
    root = etree.fromstring(running(ew, "b", agent=True))
    hard = {e.findtext(f"{IK}ipsec-sa-config/{IK}sa-lifetime-hard/{IK}time")
            for e in root.iter(IK + "sad-entry")
            if (e.findtext(IK + "name") or "").startswith("ew/")}
    assert hard == {"32"}, hard  # 2 x rekey-time + 30 s


def test_east_west_link_cut_keeps_sas_and_rekeying_resumes(ew: EastWestLab) -> None:
    """ctl-a → ctl-b connections reset (nftables in the management namespace) while the
    rekey schedule (rekey-time 1 s, set by the test before) runs: the SAs on the NSFs keep
    carrying a 50/s ping with 0 lost, ctl-a shows ctl-b unreachable; once the link is back
    the scheduled rekeys go on."""
    nft = ["ip", "netns", "exec", ew.mgmt, "nft"]
    subprocess.run([*nft, "-f", "-"], check=True, text=True, input=(
        "table inet ew_cut {\n chain out {\n  type filter hook output priority 0;\n"
        f"  tcp dport {PORTS['b']} reject with tcp reset\n }}\n}}\n"))
    try:
        poll(lambda: any(p.findtext(E + "status") == "unreachable"
                         for p in ew_state(ew, "a").iter(E + "peer")), 10,
             "ctl-a sees the link cut")
        r = ew.lab.run(ew.lab.host_a, ["ping", "-n", "-q", "-c", "150", "-i", "0.02", "-W",
                                       "1", HOST_B], timeout=60)
        assert " 0% packet loss" in r.stdout, r.stdout
        cut_gen = generation(ew, "a")
    finally:
        subprocess.run([*nft, "delete", "table", "inet", "ew_cut"], check=False)
    poll(lambda: generation(ew, "a") >= cut_gen + 2
         and policy(ew, "a", "to-b")[0] == "protected", 20, "scheduled rekeys resumed")
    assert ping(ew, 3).returncode == 0


def test_policy_removed_on_one_side_is_withdrawn_on_both(ew: EastWestLab) -> None:
    """Admin A removes the policy: ctl-a removes gwA's entries and tells ctl-b, which removes
    gwB's and no longer shows the flow as protected."""
    edit(ew, "a", ew.east_west_xml("a"))  # the peer stays, the policy goes
    poll(lambda: not ew_entries(ew, "a") and not ew_entries(ew, "b"), 20,
         "entries gone from both NSFs")
    status, why = policy(ew, "b", "to-a")
    assert status == "waiting-peer" and "withdrew" in why, (status, why)
    assert ping(ew, 1).returncode != 0
