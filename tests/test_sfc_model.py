"""The rules every SFC table consumer relies on (SfcConfig.check) and the JSON round trip."""

from __future__ import annotations

import pytest

from nsf_agent.sfc.model import (
    ClassifierRule,
    Match,
    ModelError,
    NextHop,
    PortRange,
    ProxyEntry,
    SfcConfig,
    SffEntry,
)


def cfg(**kw) -> SfcConfig:  # type: ignore[no-untyped-def]
    base = dict(
        sff_id=7, locator="192.0.2.1",
        rules=[ClassifierRule("web", 10, Match(src="198.51.100.0/24", protocol=6,
                                               dport=PortRange(80, 80), ingress="eth0"),
                              spi=10, si=255, first_hop="192.0.2.2")],
        table=[SffEntry(10, 255, (NextHop("192.0.2.3", "sf", 2), NextHop("192.0.2.4", "sf", 1))),
               SffEntry(10, 254, (NextHop(None, "terminate"),))],
        proxies=[ProxyEntry("p1", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01", "/run/p1.sock")],
    )
    base.update(kw)
    return SfcConfig(**base)  # type: ignore[arg-type]


def test_round_trip_and_interfaces() -> None:
    c = cfg()
    c.check()
    back = SfcConfig.from_dict(c.to_dict())
    assert back == c
    assert set(c.interfaces()) == {"eth0", "sfi0", "sfo0"}


@pytest.mark.parametrize(("change", "words"), [
    ({"table": [SffEntry(10, 0, (NextHop("192.0.2.3"),))]}, "SI 0"),
    ({"table": [SffEntry(10, 5, (NextHop("192.0.2.3"),)),
                SffEntry(10, 5, (NextHop("192.0.2.4"),))]}, "duplicate"),
    ({"table": [SffEntry(10, 5, (NextHop("2001:db8::1"),))]}, "address family"),
    ({"table": [SffEntry(10, 5, ())]}, "no next hop"),
    ({"table": [SffEntry(10, 5, (NextHop(None, "terminate"), NextHop("192.0.2.9")))]},
     "terminating"),
    ({"proxies": [ProxyEntry("p", 1, 0, "a", "b", "02:00:00:00:00:01")]}, "SI 0"),
    ({"proxies": [ProxyEntry("p", 1, 3, "a", "a", "02:00:00:00:00:01")]}, "one interface"),
    ({"proxies": [ProxyEntry("p", 1, 3, "a", "b", "02:00:00:00:00:01", weight=0)]}, "weight"),
])
def test_bad_tables_are_refused(change, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelError) as ei:
        cfg(**change).check()
    assert words in str(ei.value)
    assert ei.value.path


def test_proxies_sharing_an_instance_must_share_it_whole() -> None:
    a = ProxyEntry("a", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01", "/run/a.sock")
    cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi0", "sfo0", "02:00:00:00:00:01")]).check()
    with pytest.raises(ModelError, match="another function instance"):
        cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi0", "sfo9", "02:00:00:00:00:01")]).check()
    cfg(proxies=[a, ProxyEntry("c", 10, 255, "sfi1", "sfo1", "02:00:00:00:00:02")]).check()
    with pytest.raises(ModelError, match="same function instance"):
        cfg(proxies=[a, ProxyEntry("c", 10, 255, "sfi0", "sfo0", "02:00:00:00:00:01")]).check()
    with pytest.raises(ModelError, match="bound by proxy"):
        cfg(proxies=[a, ProxyEntry("b", 20, 255, "sfi1", "sfo1", "02:00:00:00:00:02",
                                   "/run/a.sock")]).check()
