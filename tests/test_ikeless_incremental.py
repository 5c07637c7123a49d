"""The fast ikeless translation against the pre-optimisation one (tests/ikeless_reference.py):
random RFC 9061 trees, canonicalised by libyang as the datastore hands them to appliers, must
parse to the same entries, fail with the same RpcError, and random sequences of edits must
give, through the per-entry memo and the incremental path, exactly the kernel operations a
fresh full translation gives. At the applier level, commits that are refused or aborted must
not leave anything behind that changes later results. No kernel: the netlink batch is stubbed.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import ikeless_reference as ref
import pytest
from lxml import etree

from netconf_core.applier import ConfigChange
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context
from nsf_agent import ikeless
from nsf_agent.appliers import xfrm as X
from nsf_agent.xfrm.api import Batch

NS = ikeless.NS
Q = ikeless.Q

# ---- random valid configurations -----------------------------------------------------------

V4 = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "192.0.2.7/32", "10.1.0.0/16",
      "0.0.0.0/0", "192.0.2.5/24"]  # (the last is not canonical: strict=False → .0/24)
V6 = ["2001:db8::/32", "2001:db8:1::/48", "2001:db8::1/128", "::/0"]
HOSTS4 = ["192.0.2.7/32", "198.51.100.9/32", "203.0.113.4/32"]
HOSTS6 = ["2001:db8::1/128", "2001:db8::2/128"]
GW4 = [("198.51.100.1", "198.51.100.2"), ("203.0.113.1", "203.0.113.2")]
GW6 = [("2001:db8:ff::1", "2001:db8:ff::2")]


def leaf(name: str, value: object) -> str:
    return f"<{name}>{value}</{name}>"


def ports(rng: random.Random, name: str) -> str:
    out = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        a = rng.choice([0, 22, 23, 80, 443, 1000, 5000])
        b = a + rng.choice([0, 0, 1, 10, 999, 65535 - a])
        out.append(f"<{name}>{leaf('start', a)}{leaf('end', b)}</{name}>")
    return "".join(dict.fromkeys(out))  # (start, end) is the list key


def selector(rng: random.Random, v6: bool, hosts: bool = False) -> str:
    pool = V6 if v6 else V4
    if hosts:  # (transport-mode SAs protect two hosts: the appliers refuse networks)
        pool = HOSTS6 if v6 else HOSTS4
    s = leaf("local-prefix", rng.choice(pool)) + leaf("remote-prefix", rng.choice(pool))
    proto = rng.choice([None, "any", 6, 17, 1])
    if proto is not None:
        s += leaf("inner-protocol", proto)
    if proto in (6, 17):
        s += ports(rng, "local-ports") + ports(rng, "remote-ports")
    return f"<traffic-selector>{s}</traffic-selector>"


@dataclass
class Gen:
    """Draws entries that libyang accepts and parse() does not refuse: every reqid keeps one
    direction (`directions`), SPIs are unique per destination."""

    rng: random.Random
    directions: dict[int, str] = field(default_factory=dict)
    counter: int = 0
    spis: set[int] = field(default_factory=set)

    def name(self, kind: str) -> str:
        self.counter += 1
        return f"{kind}-{self.counter}" + self.rng.choice(["", "/x", " a&b <c>", "é"])

    def spd(self, name: str | None = None, reqid: int | None = None) -> str:
        rng = self.rng
        v6 = rng.random() < 0.25
        action = rng.choice(["protect", "protect", "protect", "bypass", "discard"])
        if reqid is None:
            reqid = rng.choice([1, 2, 3, 4, 5]) if action == "protect" else rng.choice([0, 0, 7])
        direction = self.directions.setdefault(reqid, rng.choice(["inbound", "outbound"]))
        body = leaf("name", name or self.name("spd")) + leaf("direction", direction)
        if reqid or rng.random() < 0.5:
            body += leaf("reqid", reqid)
        cfg = ""
        if rng.random() < 0.3:
            cfg += leaf("anti-replay-window-size", rng.choice([0, 32, 64, 1024]))
        cfg += selector(rng, v6)
        pinfo = leaf("action", action) if rng.random() < 0.9 or action != "discard" else ""
        if action == "protect":
            mode = rng.choice(["tunnel", "tunnel", "transport", None])
            sa = ""
            if rng.random() < 0.3:
                sa += leaf("ext-seq-num", rng.choice(["true", "false"]))
            if mode is not None:
                sa += leaf("mode", mode)
            if rng.random() < 0.3:
                sa += leaf("protocol-parameters", "esp")
            if rng.random() < 0.5:
                integ = rng.sample([12, 13, 14], 2)[:rng.randint(0, 2)]
                algs = "".join(leaf("integrity", i) for i in integ)
                algs += "".join(
                    f"<encryption>{leaf('id', i)}{leaf('algorithm-type', rng.choice([12, 20]))}"
                    "</encryption>" for i in range(rng.randint(0, 2)))
                if algs:
                    sa += f"<esp-algorithms>{algs}</esp-algorithms>"
            if mode == "tunnel":
                lo, re_ = rng.choice(GW6 if v6 else GW4)
                t = leaf("local", lo) + leaf("remote", re_)
                if rng.random() < 0.3:
                    t += leaf("df-bit", rng.choice(["clear", "set", "copy"]))
                if rng.random() < 0.3:
                    t += leaf("bypass-dscp", rng.choice(["true", "false"]))
                sa += f"<tunnel>{t}</tunnel>"
            if sa:
                pinfo += f"<ipsec-sa-cfg>{sa}</ipsec-sa-cfg>"
        if pinfo:
            cfg += f"<processing-info>{pinfo}</processing-info>"
        return f"<spd-entry>{body}<ipsec-policy-config>{cfg}</ipsec-policy-config></spd-entry>"

    def sad(self, reqids: list[int], name: str | None = None) -> str:
        rng = self.rng
        reqid = rng.choice(reqids)
        spi = rng.randrange(256, 1 << 32)
        while spi in self.spis:
            spi = rng.randrange(256, 1 << 32)
        self.spis.add(spi)
        v6 = rng.random() < 0.25
        mode = rng.choice(["tunnel", "transport", None])
        cfg = leaf("spi", spi)
        if rng.random() < 0.3:
            cfg += leaf("ext-seq-num", rng.choice(["true", "false"]))
        if rng.random() < 0.2:
            cfg += leaf("anti-replay-window-size", rng.choice([0, 128]))
        cfg += selector(rng, v6, hosts=mode != "tunnel")
        if mode is not None:
            cfg += leaf("mode", mode)
        if rng.random() < 0.5:
            key = ":".join(f"{rng.randrange(256):02x}" for _ in range(20))
            esp = f"<encryption>{leaf('encryption-algorithm', 20)}{leaf('key', key)}</encryption>"
        else:
            ekey = ":".join(f"{rng.randrange(256):02x}" for _ in range(16))
            ikey = ":".join(f"{rng.randrange(256):02x}" for _ in range(32))
            esp = (f"<encryption>{leaf('encryption-algorithm', 12)}{leaf('key', ekey)}"
                   f"{leaf('iv', '00:01')}</encryption>"
                   f"<integrity>{leaf('integrity-algorithm', 12)}{leaf('key', ikey)}</integrity>")
        cfg += f"<esp-sa>{esp}</esp-sa>"
        if rng.random() < 0.5:
            cfg += (f"<sa-lifetime-hard>{leaf('time', 7200)}{leaf('bytes', 10**9)}"
                    "</sa-lifetime-hard>")
            cfg += (f"<sa-lifetime-soft>{leaf('time', 3600)}{leaf('packets', 1000)}"
                    f"{leaf('action', 'replace')}</sa-lifetime-soft>")
        if mode == "tunnel":
            lo, re_ = rng.choice(GW6 if v6 else GW4)
            cfg += f"<tunnel>{leaf('local', lo)}{leaf('remote', re_)}</tunnel>"
        if rng.random() < 0.3:
            kind = rng.choice(["espinudp", "espintcp", "none"])
            e = leaf("espencap", kind) + leaf("sport", 4500)
            e += leaf("dport", rng.choice([4500, 4501]))
            if rng.random() < 0.5:
                e += leaf("oaddr", "198.51.100.9")
            cfg += f"<encapsulation-type>{e}</encapsulation-type>"
        return (f"<sad-entry>{leaf('name', name or self.name('sad'))}{leaf('reqid', reqid)}"
                f"<ipsec-sa-config>{cfg}</ipsec-sa-config></sad-entry>")


def escape_names(xml: str) -> str:
    """Names carry '&' and '<' on purpose (the fast path must leave them to lxml)."""
    return xml.replace(" a&b <c>", " a&amp;b &lt;c&gt;")


def wrap(spd: list[str], sad: list[str]) -> str:
    inner = ""
    if spd:
        inner += f"<spd>{''.join(spd)}</spd>"
    if sad:
        inner += f"<sad>{''.join(sad)}</sad>"
    return escape_names(f'<ipsec-ikeless xmlns="{NS}">{inner}</ipsec-ikeless>')


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context())


def canonical(schema: YangSchema, inner: str | etree._Element) -> etree._Element:
    """The `<data>` root the datastore gives appliers: libyang's canonical print."""
    el = etree.fromstring(inner) if isinstance(inner, str) else copy.deepcopy(inner)
    data = etree.Element(f"{{{NC_NS}}}data", nsmap={None: NC_NS})
    data.append(el)
    tree = schema.parse_config(data)
    if tree is None:
        return data
    try:
        text = tree.print_mem("xml", with_siblings=True, pretty=False)
    finally:
        tree.free()
    return etree.fromstring(f'<data xmlns="{NC_NS}">{text}</data>'.encode())


def random_config(gen: Gen, n_spd: int, n_sad: int) -> tuple[list[str], list[str]]:
    spd = [gen.spd() for _ in range(n_spd)]
    reqids = [r for r in gen.directions if r]
    sad = [gen.sad(reqids) for _ in range(n_sad)] if reqids else []
    return spd, sad


# ---- the same result as the reference -------------------------------------------------------


def outcome(fn: Callable[[], object]) -> object:
    """A result, or the RpcError's content, so that results and failures compare alike."""
    try:
        return fn()
    except RpcError as e:
        return ("RpcError", e.error_type, e.error_tag, e.message, e.path, e.app_tag)


def pretty(data: etree._Element) -> etree._Element:
    """The same tree, indented and with a comment: not the fast path's form."""
    el = copy.deepcopy(data)
    etree.indent(el)
    for container in el.iter(Q + "spd", Q + "sad"):
        container.insert(0, etree.Comment(" x "))
    return el


@pytest.mark.parametrize("seed", range(12))
def test_parse_equals_reference(schema: YangSchema, seed: int) -> None:
    gen = Gen(random.Random(seed))
    spd, sad = random_config(gen, 30, 12)
    data = canonical(schema, wrap(spd, sad))
    want = ref.parse(data)
    got = ikeless.parse(data)
    assert got == want
    assert got.memo is not None and got.memo.spd_head  # canonical: the split path was taken
    assert ikeless.parse(pretty(data)) == want  # the per-entry path
    assert ikeless.parse(pretty(data)).memo.spd_head == b""
    # Each fast-path entry is what the lxml reader makes of it.
    spd_el = data.find(f"{Q}ipsec-ikeless/{Q}spd")
    _head, keys = ikeless._split(spd_el, len(spd_el), b"spd-entry")
    ents = list(spd_el)
    fast = [ikeless._spd_fast(k, ents, i, {}) for i, k in enumerate(keys)]
    assert sum(f is not None for f in fast) >= len(fast) // 2
    for i, (f, e) in enumerate(zip(fast, spd_el, strict=True)):
        if f is not None:
            assert f == ikeless._spd_entry(e, i)
            assert f.selector.local_text == str(f.selector.local_prefix)
    # Reparsing with itself as the base gives back the very same entries.
    again = ikeless.parse(data, base=got)
    assert again == got
    assert all(a is b for a, b in zip(again.spd + again.sad, got.spd + got.sad, strict=True))


def test_example_files_equal_reference() -> None:
    from pathlib import Path

    for f in (Path(__file__).parent / "data" / "rfc9061").glob("ikeless-*.xml"):
        root = etree.parse(str(f)).getroot()
        assert outcome(lambda r=root: ikeless.parse(r)) == outcome(lambda r=root: ref.parse(r))


def broken(gen: Gen, rng: random.Random) -> tuple[list[str], list[str]]:
    """A configuration libyang accepts but parse() refuses, in one of the ways it can."""
    spd, sad = random_config(gen, 8, 4)
    reqids = [r for r in gen.directions if r]
    kind = rng.randrange(7)
    i = rng.randrange(len(spd))
    no_tunnel = lambda x: re.sub("<tunnel>.*?</tunnel>", "", x)  # noqa: E731
    if kind == 0:  # tunnel mode without tunnel endpoints
        spd.insert(i, no_tunnel(gen.spd(reqid=rng.choice(reqids or [1]))))
    elif kind == 1:  # an SA whose reqid no SPD entry has
        sad.insert(rng.randrange(len(sad) + 1), gen.sad([99]))
    elif kind == 2:  # a reqid with both directions
        r = reqids[0] if reqids else 1
        d = gen.directions.setdefault(r, "inbound")
        other = "inbound" if d == "outbound" else "outbound"
        spd.append(gen.spd(reqid=r).replace(f"<direction>{d}</direction>",
                                            f"<direction>{other}</direction>"))
        sad.append(gen.sad([r]))
    elif kind == 3:  # an unsupported algorithm, a bad key length, AEAD with integrity
        s = gen.sad(reqids or [1])
        sad.append(rng.choice([
            s.replace("<encryption-algorithm>20<", "<encryption-algorithm>2<"),
            s.replace("<key>", "<key>00:", 1),
            s.replace("</encryption></esp-sa>", "</encryption><integrity><integrity-algorithm>"
                      "12</integrity-algorithm></integrity></esp-sa>"),
            s.replace("<integrity-algorithm>12<", "<integrity-algorithm>3<"),
        ]))
    elif kind == 4:  # two SAs with the same destination and SPI
        if sad:
            sad.append(sad[0].replace("<name>", "<name>dup-", 1))
    elif kind == 5:  # a missing traffic selector
        spd[i] = re.sub("<traffic-selector>.*?</traffic-selector>", "", spd[i])
    else:  # a tunnel-mode SA without tunnel
        s = no_tunnel(gen.sad(reqids or [1]))
        sad.append(re.sub("<mode>[a-z]*</mode>|(?=<esp-sa>)", "<mode>tunnel</mode>", s, count=1))
    return spd, sad


@pytest.mark.parametrize("seed", range(40))
def test_errors_equal_reference(schema: YangSchema, seed: int) -> None:
    rng = random.Random(1000 + seed)
    gen = Gen(rng)
    spd, sad = broken(gen, rng)
    # Straight from the XML (some of these libyang would refuse first): both paths.
    raw = etree.fromstring(f'<data xmlns="{NC_NS}">{wrap(spd, sad)}</data>')
    want = outcome(lambda: ref.parse(raw))
    assert outcome(lambda: ikeless.parse(raw)) == want
    assert outcome(lambda: ikeless.parse(pretty(raw))) == want
    try:
        data = canonical(schema, wrap(spd, sad))
    except RpcError:
        return  # libyang refuses this variant itself
    want = outcome(lambda: ref.parse(data))
    assert outcome(lambda: ikeless.parse(data)) == want
    assert outcome(lambda: ikeless.parse(pretty(data))) == want
    # With a memo holding the entries, the same error.
    base = outcome(lambda: ikeless.parse(canonical(schema, wrap(spd, []))))
    if isinstance(base, ikeless.IkelessConfig):
        assert outcome(lambda: ikeless.parse(data, base=base)) == want


# ---- incremental == fresh == reference --------------------------------------------------------


def op_tuples(ops: list) -> list[tuple]:
    return [(o.kind, o.obj, o.name, o.undo) for o in ops]


def reference_ops(old: etree._Element, new: etree._Element) -> list[tuple]:
    return op_tuples(ref.ops(ref.desired(ref.parse(old)), ref.desired(ref.parse(new))))


def edit(rng: random.Random, gen: Gen, spd: list[str], sad: list[str]) -> None:
    """One random change of the kind a controller makes, in place; keeps it valid."""
    kind = rng.choice(["spd+", "spd-", "spd~", "spd<>", "sad+", "sad-", "sad~", "flip",
                       "none", "many"])
    name_of = lambda s: s.split("<name>")[1].split("</name>")[0]  # noqa: E731
    if kind == "spd+" or not spd:
        spd.insert(rng.randrange(len(spd) + 1), gen.spd())
    elif kind == "spd-" and len(spd) > 1:
        victim = spd.pop(rng.randrange(len(spd)))
        # keep every SA's reqid served by some SPD entry
        r = victim.split("<reqid>")[1].split("<")[0] if "<reqid>" in victim else "0"
        if not any(f"<reqid>{r}</reqid>" in s for s in spd):
            sad[:] = [s for s in sad if f"<reqid>{r}</reqid>" not in s]
    elif kind == "spd~":
        i = rng.randrange(len(spd))
        r = spd[i].split("<reqid>")[1].split("<")[0] if "<reqid>" in spd[i] else None
        spd[i] = gen.spd(name=name_of(spd[i]), reqid=int(r) if r else None)
    elif kind == "spd<>" and len(spd) > 1:
        spd.insert(rng.randrange(len(spd)), spd.pop(rng.randrange(len(spd))))
    elif kind == "sad+":
        reqids = sorted({int(s.split("<reqid>")[1].split("<")[0]) for s in spd
                         if "<reqid>" in s} - {0})
        if reqids:
            sad.insert(rng.randrange(len(sad) + 1), gen.sad(reqids))
    elif kind == "sad-" and sad:
        sad.pop(rng.randrange(len(sad)))
    elif kind == "sad~" and sad:
        i = rng.randrange(len(sad))
        r = int(sad[i].split("<reqid>")[1].split("<")[0])
        sad[i] = gen.sad([r], name=name_of(sad[i]))
    elif kind == "flip":  # all SPD entries of one reqid change direction: their SAs follow
        r = rng.choice(sorted(gen.directions))
        d = gen.directions[r]
        nd = "inbound" if d == "outbound" else "outbound"
        gen.directions[r] = nd
        for i, s in enumerate(spd):
            if f"<reqid>{r}</reqid>" in s or (r == 0 and "<reqid>" not in s):
                spd[i] = s.replace(f"<direction>{d}</direction>", f"<direction>{nd}</direction>")
    elif kind == "many":
        for _ in range(rng.randint(2, 6)):
            edit(rng, gen, spd, sad)


@pytest.mark.parametrize("seed", range(8))
def test_incremental_equals_fresh_and_reference(schema: YangSchema, seed: int) -> None:
    rng = random.Random(seed)
    gen = Gen(rng)
    spd, sad = random_config(gen, 25, 10)
    tree = canonical(schema, wrap(spd, sad))
    prev = X.translate(ikeless.parse(tree))
    for _ in range(25):
        edit(rng, gen, spd, sad)
        new_tree = canonical(schema, wrap(spd, sad))
        incr = X.translate(ikeless.parse(new_tree, base=prev.cfg), prev)
        fresh_old = X.translate(ikeless.parse(tree))
        fresh = X.translate(ikeless.parse(new_tree))
        assert incr.cfg == fresh.cfg
        assert incr.policies == fresh.policies and incr.states == fresh.states
        got = op_tuples(X.kernel_ops(prev, incr))
        assert got == op_tuples(X.kernel_ops(fresh_old, fresh))
        assert got == reference_ops(tree, new_tree)
        prev, tree = incr, new_tree


def test_moving_an_entry_renumbers_what_follows(schema: YangSchema) -> None:
    gen = Gen(random.Random(5))
    spd = [gen.spd(reqid=0) for _ in range(6)]
    old = canonical(schema, wrap(spd, []))
    spd.insert(0, spd.pop())
    new = canonical(schema, wrap(spd, []))
    base = X.translate(ikeless.parse(old))
    incr = X.translate(ikeless.parse(new, base=base.cfg), base)
    assert [e.index for e in incr.cfg.spd] == list(range(6))
    assert op_tuples(X.kernel_ops(base, incr)) == reference_ops(old, new)


# ---- the applier: refused and aborted commits leave nothing behind ----------------------------


class FakeXfrm:
    """No kernel: batches are packed but never sent (the applier's _submit is stubbed)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def batch(self) -> Batch:
        return Batch(self)  # type: ignore[arg-type]

    def close(self) -> None:
        pass


@pytest.fixture
def applier(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[X.XfrmApplier, list]]:
    monkeypatch.setattr(X, "Xfrm", FakeXfrm)
    ap = X.XfrmApplier(None)
    batches: list[list[tuple[str, object]]] = []
    fail: list[int] = []

    def submit(batch: Batch) -> list:
        ops = [(o.msg_type, o.body) for o in batch.ops]
        batches.append(ops)
        res: list = [None] * len(ops)
        if fail and ops:
            fail.pop()
            res[-1] = X.XfrmError(17, "File exists")
        return res

    ap._submit = submit  # type: ignore[method-assign]
    ap.fail = fail  # type: ignore[attr-defined]
    yield ap, batches
    ap.close()


def test_refused_and_aborted_commits_do_not_poison(schema: YangSchema, applier) -> None:
    ap, _batches = applier
    rng = random.Random(7)
    gen = Gen(rng)
    spd, sad = random_config(gen, 20, 8)
    running = canonical(schema, wrap(spd, sad))
    ch = ConfigChange(old=etree.Element(f"{{{NC_NS}}}data"), new=running)
    ap.validate(ch)
    ap.prepare(ch)
    ap.apply(ch)
    empty = etree.Element(f"{{{NC_NS}}}data")
    assert op_tuples(ch.scratch["xfrm.ops"]) == reference_ops(empty, running)
    for _ in range(40):
        s2, a2 = list(spd), list(sad)
        g2 = copy.deepcopy(gen)
        edit(rng, g2, s2, a2)
        new = canonical(schema, wrap(s2, a2))
        ch = ConfigChange(old=running, new=new)
        ap.validate(ch)
        ap.prepare(ch)
        assert op_tuples(ch.scratch["xfrm.ops"]) == reference_ops(running, new)
        fate = rng.choice(["apply", "apply", "refuse", "abort", "kernel-fails"])
        if fate == "refuse":  # another applier or libyang said no: apply is never called
            continue
        if fate == "kernel-fails":
            if not ch.scratch["xfrm.ops"]:
                continue
            ap.fail.append(1)  # type: ignore[attr-defined]
            with pytest.raises(RpcError):
                ap.apply(ch)
            continue
        ap.apply(ch)
        if fate == "abort":  # a later applier failed: undo, running stays
            ap.abort(ch)
            assert ap._running[0] is running
            continue
        running, spd, sad, gen = new, s2, a2, g2
        assert ap._running[0] is running
    # Finally the applier's idea of running is exactly a fresh translation of it.
    fresh = X.translate(ikeless.parse(running))
    assert ap._running[1].cfg == fresh.cfg
    assert ap._running[1].policies == fresh.policies
    assert ap._running[1].states == fresh.states


def test_a_tree_libyang_would_refuse_only_raises(applier) -> None:
    """validate may run beside libyang on a tree libyang later refuses: it may raise, but
    must not crash or change what the next commit computes."""
    ap, _ = applier
    bad = etree.fromstring(
        f'<data xmlns="{NC_NS}"><ipsec-ikeless xmlns="{NS}"><spd><spd-entry><name>a</name>'
        "<reqid>x</reqid><ipsec-policy-config><traffic-selector><local-prefix>nope"
        "</local-prefix></traffic-selector></ipsec-policy-config></spd-entry><spd-entry/>"
        "</spd></ipsec-ikeless></data>")
    with pytest.raises((RpcError, ValueError)):
        ap.validate(ConfigChange(old=etree.Element(f"{{{NC_NS}}}data"), new=bad))
    assert ap._running[1] is X.EMPTY


def test_split_refuses_anything_but_plain_siblings() -> None:
    def split(xml: str) -> object:
        c = etree.fromstring(xml)
        return ikeless._split(c, len(c), b"e")

    assert split("<s><e><a>1</a></e><e><a>2</a></e></s>") == (b"<s>", [b"<a>1</a>", b"<a>2</a>"])
    assert split("<s><e><a>1</a></e></s>") == (b"<s>", [b"<a>1</a>"])
    assert split("<s><e><a>1</a></e> <e><a>2</a></e></s>") is None  # text between
    assert split("<s><e><a>1</a></e><!-- c --><e/></s>") is None
    assert split("<s><e><e>1</e></e><e>2</e></s>") is None  # nested
    assert split("<s><e/><e><a>1</a></e><e><a>2</a></e></s>") is None
    assert split('<s xmlns:p="u"><p:e>1</p:e><e>2</e></s>') is None
    assert split('<s><e a="1">1</e><e>2</e></s>') is None


def test_memo_only_under_the_same_namespace_declarations() -> None:
    """An entry's XML means what the declarations around it say: `p:name` is the name under
    one binding of `p` and an unknown element under another."""
    def tree(p_ns: str) -> etree._Element:
        return etree.fromstring(
            f'<data xmlns="{NC_NS}"><ipsec-ikeless xmlns="{NS}"><spd xmlns:p="{p_ns}">'
            "<spd-entry><p:name>a</p:name><ipsec-policy-config><traffic-selector>"
            "<local-prefix>192.0.2.0/24</local-prefix><remote-prefix>198.51.100.0/24"
            "</remote-prefix></traffic-selector></ipsec-policy-config></spd-entry>"
            "</spd></ipsec-ikeless></data>")

    base = ikeless.parse(tree(NS))
    assert base.spd[0].name == "a"
    other = tree("urn:example:other")
    assert ikeless.parse(other, base=base) == ref.parse(other)
    assert ikeless.parse(other, base=base).spd[0].name == ""
