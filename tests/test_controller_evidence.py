"""The verdicts of controller/ipsec/evidence.py and ike_evidence.py on given readings (fast
unit tests; the end-to-end ones with real NSFs are in tests/integration/:
test_controller_netconf.py::test_status_follows_the_nsfs_state, test_controller_status.py,
test_controller_ike.py::test_psk_gateway_to_gateway)."""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from controller.core.records import SaKeys, SaRecord
from controller.ipsec.evidence import Evidence, Reading, parse_reading
from controller.ipsec.ike_evidence import Child, IkeReading, ike_verdict, parse_ike_reading

IK = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


@dataclass
class Sess:
    state: str = "connected"
    last_error: str | None = None


SESS = {"a": Sess(), "b": Sess()}


def sa(a2b: bool = True) -> SaRecord:
    return SaRecord("p", 0, a2b, 1, 0x1234, SaKeys(b"k" * 20, b"", b""), "a" if a2b else "b",
                    "b" if a2b else "a", "", "", "", "", 0.0)


NAME = "fp/p/0/a2b/1"


def ev(*readings: tuple[float, dict[str, dict[str, tuple[int, int] | None]]]) -> Evidence:
    e = Evidence(interval=1.0)
    for at, per_nsf in readings:
        for nsf, sas in per_nsf.items():
            e.record(nsf, Reading(at, dict(sas)))
    return e


def test_active_with_both_sas_and_counters_moving() -> None:
    e = ev((10.0, {"a": {NAME: (0, 5)}, "b": {NAME: (0, 5)}}),
           (11.0, {"a": {NAME: (0, 9)}, "b": {NAME: (0, 9)}}))
    assert e.verdict(("a", "b"), SESS, [sa()], 11.5) == ("active", None)


def test_idle_tunnel_is_active() -> None:
    e = ev((10.0, {"a": {NAME: (0, 5)}, "b": {NAME: (0, 5)}}),
           (11.0, {"a": {NAME: (0, 5)}, "b": {NAME: (0, 5)}}))
    assert e.verdict(("a", "b"), SESS, [sa()], 11.5)[0] == "active"


def test_sent_but_not_received_is_degraded() -> None:
    e = ev((10.0, {"a": {NAME: (0, 5)}, "b": {NAME: (0, 5)}}),
           (11.0, {"a": {NAME: (0, 25)}, "b": {NAME: (0, 5)}}))
    st, why = e.verdict(("a", "b"), SESS, [sa()], 11.5)
    assert st == "degraded" and "NSF a sent 20 packets" in (why or "")
    # ... unless the readings predate the policy's last change (e.g. a rekey just done)
    assert e.verdict(("a", "b"), SESS, [sa()], 11.5, settled=10.5)[0] == "active"


def test_missing_sa_and_config_only_sa_are_degraded() -> None:
    e = ev((10.0, {"a": {NAME: (0, 5)}, "b": {}}))
    assert "missing on NSF b" in (e.verdict(("a", "b"), SESS, [sa()], 10.5)[1] or "")
    e = ev((10.0, {"a": {NAME: (0, 5), "fp/q/0/a2b/0": (0, 1)}, "b": {NAME: (0, 1)}}))
    e.record("a", Reading(10.0, {NAME: None, "fp/q/0/a2b/0": (0, 1)}))
    st, why = e.verdict(("a", "b"), SESS, [sa()], 10.5)
    assert st == "degraded" and "not in its data plane" in (why or "")
    # an NSF that reports no data-plane state at all (null backend): the configuration counts
    e = ev((10.0, {"a": {NAME: None}, "b": {NAME: None}}))
    assert e.verdict(("a", "b"), SESS, [sa()], 10.5)[0] == "active"


def test_unreachable_or_unread_nsf_is_stale() -> None:
    e = ev((10.0, {"a": {NAME: (0, 5)}, "b": {NAME: (0, 5)}}))
    st, why = e.verdict(("a", "b"), {"a": Sess(), "b": Sess("disconnected", "refused")},
                        [sa()], 10.5)
    assert st == "stale" and "NSF b is unreachable (disconnected: refused)" in (why or "")
    assert e.verdict(("a", "b"), SESS, [sa()], 30.0)[0] == "active"  # old, not failing
    e.failed("a", 20.0)
    assert e.verdict(("a", "b"), SESS, [sa()], 22.0)[0] == "active"  # not for long yet
    st, why = e.verdict(("a", "b"), SESS, [sa()], 30.0)
    assert st == "stale" and "state of NSF a could not be read for 10 s" in (why or "")
    e.record("a", Reading(31.0, {NAME: (0, 5)}))
    assert e.verdict(("a", "b"), SESS, [sa()], 31.5)[0] == "active"


def test_parse_reading_keeps_only_our_entries() -> None:
    x = etree.fromstring(
        f'<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><ipsec-ikeless xmlns="{IK}">'
        f"<sad><sad-entry><name>{NAME}</name><ipsec-sa-state><sa-lifetime-current>"
        "<bytes>100</bytes><packets>3</packets></sa-lifetime-current></ipsec-sa-state>"
        "</sad-entry><sad-entry><name>hand-made</name></sad-entry><sad-entry><name>"
        "fp/p/0/b2a/1</name></sad-entry></sad></ipsec-ikeless></data>")
    r = parse_reading(x, 5.0, "fp/")
    assert r.sas == {NAME: (100, 3), "fp/p/0/b2a/1": None} and r.reports_state


def test_ike_verdict() -> None:
    ok = Child("fp/p/0", "INSTALLED", 1, 2, 0, 0, 0, 0)
    both = {"a": IkeReading(10.0, {"fp/p/0": [ok]}), "b": IkeReading(10.0, {"fp/p/0": [ok]})}
    assert ike_verdict(("a", "b"), ["fp/p/0"], SESS, both, 5.0) == ("active", None)
    one = {**both, "b": IkeReading(10.0, {"fp/p/0": [Child("fp/p/0", "REKEYED", 1, 2, 0, 0,
                                                            0, 0)]})}
    st, why = ike_verdict(("a", "b"), ["fp/p/0"], SESS, one, 5.0)
    assert st == "degraded" and "NSF b holds no installed Child SA for fp/p/0" in (why or "")
    assert ike_verdict(("a", "b"), ["fp/p/0"], SESS, one, 12.0)[0] == "active"  # older
    assert ike_verdict(("a", "b"), ["fp/p/0"], {"a": Sess(), "b": Sess("connecting")}, both,
                       5.0)[0] == "stale"


def test_parse_ike_reading() -> None:
    ev_ns = "urn:i2nsf-sdn:yang:i2nsf-ike-events"
    x = etree.fromstring(
        '<data xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><ipsec-ike '
        f'xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ike" xmlns:e="{ev_ns}"><conn-entry>'
        "<name>fp/a/b</name><state><e:child-sa><e:spd-entry-name>fp/p/0</e:spd-entry-name>"
        "<e:spi-in>3248665540</e:spi-in><e:spi-out>0xc5d6e7f8</e:spi-out><e:sa-state>installed"
        "</e:sa-state><e:packets-in>7</e:packets-in><e:packets-out>8</e:packets-out>"
        "</e:child-sa></state></conn-entry></ipsec-ike></data>")
    (c,) = parse_ike_reading(x, 1.0, "fp/").children["fp/p/0"]
    assert (c.state, c.spi_in, c.spi_out, c.packets_in, c.packets_out) == (
        "INSTALLED", 0xC1A2B3C4, 0xC5D6E7F8, 7, 8)
