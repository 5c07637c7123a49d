"""What goes into the fast path's maps (pure code; the kernel side is in tests/integration)."""

from __future__ import annotations

import ipaddress
import random

from nsf_agent.sfc.fastpath.tables import (
    MAX_RULES,
    RULE,
    CounterAllocator,
    compile_generation,
)
from nsf_agent.sfc.model import ClassifierRule, Match, NextHop, PortRange, SfcConfig, SffEntry

LOCAL = "192.0.2.1"


def comp(gen, ifaces=None):
    ifaces = ifaces or {}
    return compile_generation(gen, ifaces.get, CounterAllocator())


def rule(name, order, first_hop="198.51.100.2", spi=1, si=255, md_type=1, ttl=63, **m):
    for k in ("sport", "dport"):
        if k in m:
            m[k] = PortRange(*m[k])
    return ClassifierRule(name, order, Match(**m), spi, si, first_hop, md_type=md_type, ttl=ttl)


def Generation(locator, rules=(), sff=()):
    return SfcConfig(sff_id=1, locator=locator, rules=list(rules), table=list(sff))


def lpm_match(lpm, addr):
    """What the kernel's LPM trie returns: the bits of the longest prefix holding addr."""
    a = ipaddress.ip_address(addr)
    best = None
    for net, bits in lpm.items():
        if a in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, bits)
    return set(best[1]) if best else set()


def test_lpm_bitmaps_give_every_rule_containing_the_address():
    rnd = random.Random(7)
    rules = []
    for i in range(60):
        plen = rnd.choice([0, 8, 16, 20, 24, 28, 32])
        net = ipaddress.ip_network(
            f"10.{rnd.randrange(4)}.{rnd.randrange(4)}.0/{plen}", strict=False
        )
        rules.append(rule(f"r{i}", rnd.randrange(100), dst=str(net)))
    c = comp(Generation(LOCAL, rules=tuple(rules)))
    names = [r.name for r in c.rules]
    by_name = {r.name: r for r in rules}
    for _ in range(500):
        addr = f"10.{rnd.randrange(4)}.{rnd.randrange(4)}.{rnd.randrange(256)}"
        want = {
            i
            for i, n in enumerate(names)
            if ipaddress.ip_address(addr) in ipaddress.ip_network(by_name[n].match.dst)
        }
        assert lpm_match(c.dst_lpm, addr) == want


def test_rules_sorted_by_order_then_name_and_cut_at_first_unusable():
    rules = (
        rule("b", 5),
        rule("a", 5),
        rule("z", 1),
        rule("v6", 2, dst="2001:db8::/32"),  # never matches IPv4: skipped, not a cut
        rule("md2", 7, md_type=2),
        rule("after", 9),
    )
    c = comp(Generation(LOCAL, rules=rules))
    assert [r.name for r in c.rules] == ["z", "a", "b"]
    assert any("md2 and the 1 after it" in x for x in c.left)
    assert any("v6" in x for x in c.left)


def test_rule_value_layout():
    c = comp(
        Generation(
            LOCAL,
            rules=(
                rule(
                    "x",
                    1,
                    spi=0x123456,
                    si=7,
                    protocol=17,
                    dport=(53, 53),
                    dscp=46,
                    ingress="eth9",
                    ttl=9,
                ),
            ),
        ),
        {"eth9": 42},
    )
    (ifx, _cnt, sp, hop, slo, shi, dlo, dhi, proto, dscp, ports, valid, ttl) = RULE.unpack(
        c.rules[0].value
    )
    assert (ifx, sp, hop) == (42, bytes.fromhex("12345607"), bytes([198, 51, 100, 2]))
    assert (slo, shi, dlo, dhi, proto, dscp, ports, valid, ttl) == (
        0,
        65535,
        53,
        53,
        17,
        46,
        1,
        1,
        9,
    )
    assert c.cls_ifs == {42}


def test_too_many_rules_leaves_the_rest_to_userspace():
    rules = tuple(rule(f"r{i:04d}", i) for i in range(MAX_RULES + 5))
    c = comp(Generation(LOCAL, rules=rules))
    assert len(c.rules) == MAX_RULES
    assert any(f"more than {MAX_RULES}" in x for x in c.left)


def test_sff_entries_gre_hops_of_equal_weight_or_terminate():
    c = comp(
        Generation(
            LOCAL,
            sff=(
                SffEntry(1, 255, (NextHop("198.51.100.2", "sff"),)),
                SffEntry(1, 254, (NextHop(None, "terminate"),)),
                SffEntry(2, 255, (NextHop("198.51.100.2"), NextHop("198.51.100.3"))),
                SffEntry(3, 255, (NextHop("2001:db8::1", "sf"),)),
                SffEntry(
                    4, 255, (NextHop("198.51.100.2", weight=1), NextHop("198.51.100.3", weight=3))
                ),
            ),
        )
    )
    # equal weights: the fast path picks the hop as userspace's rendezvous hash does
    assert len(c.sff) == 3
    assert set(c.sff_counters) == {(1, 255), (1, 254), (2, 255)}
    assert len(c.sff_hop_counters[(2, 255)]) == 2
    assert len(c.left) == 2  # the IPv6 hop, the unequal weights


def test_no_local_locator_means_nothing_in_the_fast_path():
    c = comp(Generation(None, rules=(rule("x", 1),)))
    assert not c.rules and c.left


def test_counter_slots_are_stable_and_quarantined():
    a = CounterAllocator(size=8)
    a.begin()
    x, y = a.index(("rule", "x")), a.index(("rule", "y"))
    a.commit()
    a.begin()
    assert a.index(("rule", "x")) == x  # same slot in the next generation
    a.commit()  # y dropped: its slot must not be handed out in the very next generation
    a.begin()
    fresh = {a.index(("rule", f"n{i}")) for i in range(5)}
    assert y not in fresh
    a.abort()
    a.begin()
    a.index(("rule", "x"))
    a.commit()
    a.begin()
    later = {a.index(("rule", f"m{i}")) for i in range(7)}
    assert y in later


def test_merge_stats_adds_fast_path_counts_to_the_userspace_snapshot():
    from nsf_agent.sfc.fastpath import Counters
    from nsf_agent.sfc.fastpath.merge import merge_stats

    snap = {
        "counters": {"received": 3, "forwarded": 2, "delivered": 1, "unmatched": 4},
        "rules": {"a": [1, 100]},
        "entries": [[10, 255, 2, 200, [2]]],
    }
    fast = Counters(
        rules={"a": (5, 500), "b": (1, 10)},
        sff={(10, 255): (7, 700), (10, 254): (1, 50)},
        stats={"sff-forwarded": 7, "sff-terminated": 1, "classified": 6},
    )
    out = merge_stats(snap, fast)
    assert out["rules"] == {"a": [6, 600], "b": [1, 10]}
    assert sorted(map(tuple, [e[:4] for e in out["entries"]])) == [
        (10, 254, 1, 50),
        (10, 255, 9, 900),
    ]
    assert out["counters"] == {"received": 11, "forwarded": 9, "delivered": 2, "unmatched": 4}
    assert snap["rules"]["a"] == [1, 100]  # the snapshot itself is left alone


def test_counters_survive_unchanged_entries_only():
    a = CounterAllocator()
    a.begin()
    g1 = Generation(
        "192.0.2.1",
        rules=(rule("x", 1), rule("y", 2)),
        sff=(SffEntry(1, 255, (NextHop("198.51.100.2"),)),),
    )
    c1 = compile_generation(g1, {}.get, a)
    a.commit()
    a.begin()
    g2 = Generation(
        "192.0.2.1",
        rules=(rule("x", 1), rule("y", 2, dst="10.0.0.0/8")),
        sff=(SffEntry(1, 255, (NextHop("198.51.100.3"),)),),
    )
    c2 = compile_generation(g2, {}.get, a)
    a.commit()
    assert c2.rule_counters["x"] == c1.rule_counters["x"]
    assert c2.rule_counters["y"] != c1.rule_counters["y"]  # changed: a fresh counter
    assert c2.sff_counters[(1, 255)] != c1.sff_counters[(1, 255)]
    assert set(a.new) == {
        c2.rule_counters["y"],
        c2.sff_counters[(1, 255)],
        *c2.sff_hop_counters[(1, 255)],
    }
