"""East-west negotiation without I/O: both controllers derive the same SAs from an X25519
exchange, render only their own NSF's entries, and a responder refuses a proposal that does
not mirror its policy."""

from __future__ import annotations

import ipaddress

import pytest
from lxml import etree

from controller.eastwest import plan as ewplan
from controller.eastwest.keys import Ephemeral
from controller.eastwest.model import Algorithms, EwPolicy
from controller.eastwest.negotiate import Mismatch, NoMatch, Proposal, build_sas, match_policy
from controller.ipsec.model import Nsf
from netconf_core.i2nsf.namespaces import IKELESS_NS

N = ipaddress.ip_network
NET_A, NET_B = N("198.51.100.0/24"), N("203.0.113.0/24")
GCM = Algorithms(20, 128, 0)


def _nsf(name: str, dp: str, net: ipaddress.IPv4Network) -> Nsf:
    return Nsf(name=name, address="10.0.0.1", username="c", host_key="k",
               data_plane_address=ipaddress.ip_address(dp), protected_prefixes=(net,),
               dataplane="userspace")


def _both() -> tuple[ewplan.Agreement, ewplan.Agreement]:
    ea, eb = Ephemeral(), Ephemeral()
    nonce = "ab" * 16
    flows = ewplan.flows_for((NET_A,), (NET_B,))
    sa_a = build_sas("pa", flows, "ctl-a", "ctl-b", 1, nonce, ea.shared(eb.public_hex),
                     (0x20001,), (0x10001,), GCM)
    sa_b = build_sas("pb", flows, "ctl-a", "ctl-b", 1, nonce, eb.shared(ea.public_hex),
                     (0x20001,), (0x10001,), GCM)
    a = ewplan.Agreement("pa", (1 << 21) | 5, "ctl-b", "a", 1, nonce,
                         _nsf("gwa", "192.0.2.1", NET_A), "192.0.2.2", flows, GCM, sa_a)
    b = ewplan.Agreement("pb", (1 << 21) | 6, "ctl-a", "b", 1, nonce,
                         _nsf("gwb", "192.0.2.2", NET_B), "192.0.2.1", flows, GCM, sa_b)
    return a, b


def test_both_sides_derive_the_same_keys_and_spis() -> None:
    a, b = _both()
    assert [(s.a2b, s.spi, s.keys.to_dict()) for s in a.sas] == [
        (s.a2b, s.spi, s.keys.to_dict()) for s in b.sas]
    assert len(a.sas[0].keys.enc_key) == 20  # AES-GCM-128 key + 4-octet salt
    assert a.sas[0].keys.enc_key != a.sas[1].keys.enc_key  # independent keys per SA
    assert a.spis(inbound=True) == [0x10001] and b.spis(inbound=True) == [0x20001]
    assert "hidden" in repr(a.sas[0].keys)


def test_local_entries_only_renamed_and_mirrored() -> None:
    a, b = _both()
    IK = f"{{{IKELESS_NS}}}"
    for ag, local, remote, out_spi in ((a, "192.0.2.1", "192.0.2.2", 0x20001),
                                       (b, "192.0.2.2", "192.0.2.1", 0x10001)):
        root = etree.fromstring(ewplan.install_bytes(ag, [], []))
        names = [e.findtext(IK + "name") for e in root.iter(IK + "spd-entry", IK + "sad-entry")]
        assert names and all(n.startswith("ew/") for n in names), names
        tun = next(root.iter(IK + "tunnel"))
        assert (tun.findtext(IK + "local"), tun.findtext(IK + "remote")) == (local, remote)
        assert str(out_spi) in {e.text for e in root.iter(IK + "spi")}


def test_removal_of_a_previous_generation_keeps_the_new_entries() -> None:
    a, _ = _both()
    body = ewplan.install_bytes(a, a.spd_names(), [*a.sad_names(), "ew/pa/0/a2b/0"]).decode()
    assert body.count('operation="delete"') + body.count('operation="remove"') == 1


def _prop(**kw: object) -> Proposal:
    base = dict(initiator="ctl-a", policy="pa", generation=1, nonce="00" * 16,
                public_key=Ephemeral().public_hex, data_plane_address="192.0.2.1",
                initiator_prefixes=(NET_A,), responder_prefixes=(NET_B,),
                inbound_spis=(0x10001,), algorithms=GCM)
    base.update(kw)
    return Proposal(**base)  # type: ignore[arg-type]


def _pol(**kw: object) -> tuple[EwPolicy, tuple[ipaddress.IPv4Network, ...]]:
    p = EwPolicy("pb", "gwb", (), (NET_A,), None, GCM)
    return p.__class__(**{**p.__dict__, **kw}), (NET_B,)


def test_responder_matches_and_reports_mismatches() -> None:
    assert match_policy(_prop(), [_pol()]).name == "pb"
    with pytest.raises(Mismatch, match="algorithms"):
        match_policy(_prop(), [_pol(algorithms=Algorithms(12, 256, 12))])
    with pytest.raises(Mismatch, match="remote prefixes"):
        match_policy(_prop(), [_pol(remote_prefixes=(N("198.51.100.0/25"),))])
    with pytest.raises(NoMatch):
        match_policy(_prop(initiator_prefixes=(N("192.0.2.128/25"),),
                           responder_prefixes=(N("192.0.2.0/25"),)), [_pol()])


def test_bad_public_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Ephemeral().shared("00" * 32)  # low-order point: all-zero shared secret
    with pytest.raises(ValueError):
        Ephemeral().shared("zz")


@pytest.mark.parametrize(("module", "must_not_load"), [
    ("controller.ipsec.service", "controller.eastwest"),  # imports go one way
    ("controller.core", "controller.eastwest"),
    ("controller.eastwest.service", "controller.sfc"),
])
def test_imports_go_one_way(module: str, must_not_load: str) -> None:
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            f"sys.exit(any(m.startswith({must_not_load!r}) for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
