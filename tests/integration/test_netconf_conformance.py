"""Issue 14 / 13 conformance over real SSH sessions, with clients we did not write where
they are installed: libnetconf2 (netopeer2-cli's library, through `lnc2_client`), yuma123's
yangcli, and ncclient. Replies are parsed by libyang (libnetconf2) or lxml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lnc2_client
import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncharness import (
    IKELESS_NS,
    NC_NS,
    PASSWORD,
    AgentThread,
    ikeless_config,
    spd_entry,
)

YL = "urn:ietf:params:xml:ns:yang:ietf-yang-library"
ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path_factory.mktemp("conformance") / "state").start()
    with a.connect() as m:
        m.edit_config(target="running", config=ikeless_config(
            spd_entry("p1") + spd_entry("p2", reqid=2) + spd_entry("p3", reqid=3)))
    yield a
    a.stop()


def q(tag: str, ns: str = IKELESS_NS) -> str:
    return f"{{{ns}}}{tag}"


def _entries(root: etree._Element) -> list[etree._Element]:
    return list(root.iter(q("spd-entry")))


def _assert_valid_spd_names(root: etree._Element, want: list[str]) -> None:
    """Each selected name sits in its own spd-entry under ipsec-ikeless/spd: nothing else."""
    ikeless = root.find(f".//{q('ipsec-ikeless')}")
    assert ikeless is not None
    assert [c.tag for c in ikeless] == [q("spd")]
    entries = _entries(root)
    assert [[c.tag for c in e] for e in entries] == [[q("name")]] * len(want)
    assert [e.findtext(q("name")) for e in entries] == want


# -- issue 14.1 / 14.2: XPath and subtree filters give valid trees with keys ----------------

def test_xpath_filter_on_list_names_is_valid_tree(agent: AgentThread) -> None:
    sel = "/ik:ipsec-ikeless/ik:spd/ik:spd-entry/ik:name"
    with agent.connect() as m:
        for reply in (m.get(filter=("xpath", ({"ik": IKELESS_NS}, sel))),
                      m.get_config("running", filter=("xpath", ({"ik": IKELESS_NS}, sel)))):
            _assert_valid_spd_names(etree.fromstring(reply.xml.encode()), ["p1", "p2", "p3"])


def test_filters_return_keys_with_non_key_leaves(agent: AgentThread) -> None:
    with agent.connect() as m:
        sel = "/ik:ipsec-ikeless/ik:spd/ik:spd-entry/ik:reqid"
        r = m.get_config("running", filter=("xpath", ({"ik": IKELESS_NS}, sel)))
        entries = _entries(etree.fromstring(r.xml.encode()))
        assert [(e.findtext(q("name")), e.findtext(q("reqid"))) for e in entries] == [
            ("p1", "1"), ("p2", "2"), ("p3", "3")]
        assert all(e[0].tag == q("name") for e in entries)  # key first
        sub = (f'<ipsec-ikeless xmlns="{IKELESS_NS}"><spd><spd-entry><reqid/>'
               "</spd-entry></spd></ipsec-ikeless>")
        r = m.get(filter=("subtree", sub))
        entries = _entries(etree.fromstring(r.xml.encode()))
        assert [(e.findtext(q("name")), e.findtext(q("reqid"))) for e in entries] == [
            ("p1", "1"), ("p2", "2"), ("p3", "3")]


def test_libnetconf2_client_connects_and_parses_filtered_reply(agent: AgentThread) -> None:
    """netopeer2-cli's library builds its context from our yang-library (RFC 5277 modules
    included) and libyang parses the filtered reply: it must be a valid instance tree."""
    if not lnc2_client.available():
        pytest.skip("libnetconf2 is not installed (Debian package libnetconf2-2)")
    out = _lnc2(agent, "/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry/name")
    assert out["connected"], out["log"]
    assert out["modules"] == {"notifications": True, "nc-notifications": True,
                              "ietf-i2nsf-ikeless": True, "ietf-netconf": True}
    reply = out["reply"]
    assert reply["msg_type"] == lnc2_client.NC_MSG_REPLY
    _assert_valid_spd_names(etree.fromstring(reply["data"].encode()), ["p1", "p2", "p3"])


def _lnc2(agent: AgentThread, xpath: str) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(HERE / "lnc2_client.py"), str(agent.port), "admin", PASSWORD,
         xpath], capture_output=True, text=True, timeout=60, env=env, check=True)
    return json.loads(proc.stdout)


# -- issue 14.4: unprefixed XPath (yangcli's xget) ------------------------------------------

def test_unprefixed_xpath_is_resolved(agent: AgentThread) -> None:
    with agent.connect() as m:
        r = m.get(filter=("xpath", "/ipsec-ikeless/spd/spd-entry/name"))
        _assert_valid_spd_names(etree.fromstring(r.xml.encode()), ["p1", "p2", "p3"])
        r = m.get_config("running", filter=(
            "xpath", "/ipsec-ikeless/spd/spd-entry[name='p2' or reqid=3]/reqid"))
        entries = _entries(etree.fromstring(r.xml.encode()))
        assert [(e.findtext(q("name")), e.findtext(q("reqid"))) for e in entries] == [
            ("p2", "2"), ("p3", "3")]
        # module names as prefixes (libyang's JSON form) need no xmlns declaration
        r = m.get(filter=("xpath", "/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry/name"))
        _assert_valid_spd_names(etree.fromstring(r.xml.encode()), ["p1", "p2", "p3"])
        r = m.get(filter=("xpath", "/yang-library/module-set/module/name"))
        assert "ietf-i2nsf-ikeless" in [e.text for e in etree.fromstring(
            r.xml.encode()).iter(q("name", YL))]


def test_bad_xpath_is_invalid_value(agent: AgentThread) -> None:
    with agent.connect() as m:
        before = agent.snapshot()
        for sel in ("count(/ipsec-ikeless/spd/spd-entry)", "/ipsec-ikeless/spd[",
                    "/nope:ipsec-ikeless", "'text'", "1 + 2"):
            with pytest.raises(RPCError) as ei:
                m.get(filter=("xpath", sel))
            assert ei.value.tag == "invalid-value", sel
            assert ei.value.type == "application"  # as Netopeer2 (RFC 6241 8.9.1)
        # `name` is a top-level node of no module, but `modules-state` exists in one only:
        r = m.get(filter=("xpath", "/modules-state/module-set-id"))
        assert etree.fromstring(r.xml.encode()).find(f".//{q('module-set-id', YL)}") is not None
        assert agent.snapshot() == before


def test_yangcli_xget_unprefixed(agent: AgentThread, tmp_path: Path) -> None:
    """yuma123's yangcli sends xget selects without prefixes."""
    out = _yangcli(agent, tmp_path, "xget /ipsec-ikeless/spd/spd-entry/reqid")
    body = out[out.index("<rpc-reply"):out.rindex("</rpc-reply>") + len("</rpc-reply>")]
    entries = _entries(etree.fromstring(body.encode()))
    assert [(e.findtext(q("name")), e.findtext(q("reqid"))) for e in entries] == [
        ("p1", "1"), ("p2", "2"), ("p3", "3")]


def _yangcli(agent: AgentThread, tmp_path: Path, command: str) -> str:
    exe = shutil.which("yangcli")
    if exe is None:
        pytest.skip("yangcli is not installed (Debian package yangcli)")
    proc = subprocess.run(
        [exe, "--server=127.0.0.1", f"--ncport={agent.port}", "--user=admin",
         f"--password={PASSWORD}", "--batch-mode", f"--run-command={command}",
         "--display-mode=xml", f"--yuma-home={tmp_path}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env=dict(os.environ, HOME=str(tmp_path)))
    return proc.stdout + proc.stderr


# -- issue 13 §4 / §5: yang-library ---------------------------------------------------------

def test_yang_library_has_no_file_paths_and_lists_rfc5277_modules(agent: AgentThread) -> None:
    with agent.connect() as m:
        r = m.get(filter=("xpath", "/yang-library | /modules-state"))
        root = etree.fromstring(r.xml.encode())
        assert root.find(f".//{q('modules-state', YL)}") is not None
        assert b"file:" not in r.xml.encode()
        assert root.find(f".//{q('location', YL)}") is None
        assert all(s.getparent().tag != q("module", YL) for s in root.iter(q("schema", YL)))
        implemented = {e.findtext(q("name", YL)): e.findtext(q("namespace", YL))
                       for e in root.iter(q("module", YL)) if e.getparent().tag == q(
                           "module-set", YL)}
        assert implemented["notifications"] == "urn:ietf:params:xml:ns:netconf:notification:1.0"
        assert implemented["nc-notifications"] == "urn:ietf:params:xml:ns:netmod:notification"
        ds = [e.findtext(q("name", YL)) for e in root.iter(q("datastore", YL))]
        assert ds == ["ds:running", "ds:candidate", "ds:startup", "ds:intended",
                      "ds:operational"]
        caps = list(m.server_capabilities)
        assert any("module=nc-notifications&revision=2008-07-14" in c for c in caps)
        # RFC 5277 §3.4: the streams
        nm = "urn:ietf:params:xml:ns:netmod:notification"
        r = m.get(filter=("subtree", f'<netconf xmlns="{nm}"/>'))
        st = etree.fromstring(r.xml.encode()).find(f".//{q('stream', nm)}")
        assert st is not None and st.findtext(q("name", nm)) == "NETCONF"
        assert st.findtext(q("replaySupport", nm)) == "true"
        assert m.get_schema("nc-notifications").data.startswith("module nc-notifications")


def test_yang_library_location_when_configured(tmp_path: Path) -> None:
    a = AgentThread(tmp_path / "state").start()
    try:
        a.server.config.schema_location = "https://nsf.example/yang/{name}@{revision}.yang"
        a.server._yanglib = None
        with a.connect() as m:
            r = m.get(filter=("subtree", f'<yang-library xmlns="{YL}"/>'))
            locs = [e.text for e in etree.fromstring(r.xml.encode()).iter(q("location", YL))]
            assert "https://nsf.example/yang/ietf-i2nsf-ikeless@2021-07-14.yang" in locs
            assert not any("file:" in (x or "") for x in locs)
    finally:
        a.stop()


NC = NC_NS


# -- issue 14.3: error-path declares its prefixes -------------------------------------------

def _errors(reply_xml: str) -> list[etree._Element]:
    return list(etree.fromstring(reply_xml.encode()).iter(q("rpc-error", NC_NS)))


def test_error_path_declares_prefixes_and_resolves(agent: AgentThread) -> None:
    from ncclient.operations import RaiseMode

    with agent.connect() as m:
        m.raise_mode = RaiseMode.NONE
        before = agent.snapshot()
        r = m.edit_config(target="running", config=ikeless_config(spd_entry("p2", reqid=2))
                          .replace("<spd-entry>", f'<spd-entry xmlns:nc="{NC_NS}" '
                                   'nc:operation="create">'))
        (err,) = _errors(r.xml)
        assert err.findtext(q("error-tag", NC_NS)) == "data-exists"
        path_el = err.find(q("error-path", NC_NS))
        assert path_el is not None
        # a strict XPath parser with only the declarations in scope at error-path
        nsmap = {k: v for k, v in path_el.nsmap.items() if k}
        found = etree.XPath("." + path_el.text, namespaces={**nsmap, "nc": NC_NS})(
            etree.fromstring(m.get_config("running").xml.encode())[0])
        assert [e.findtext(q("name")) for e in found] == ["p2"]
        assert agent.snapshot() == before


def test_yangcli_accepts_error_reply(agent: AgentThread, tmp_path: Path) -> None:
    before = agent.snapshot()
    out = _yangcli(agent, tmp_path, "delete /ipsec-ikeless/spd/spd-entry[name='nosuch']")
    assert "RPC Error Reply" in out and "data-missing" in out
    assert "invalid reply" not in out and "invalid XPath" not in out
    assert agent.snapshot() == before


# -- a schema with the constructs the RFC 9061 modules lack ---------------------------------

TEST_NS = "urn:i2nsf-sdn:yang:nc-conformance-test"
YANG_NS = "urn:ietf:params:xml:ns:yang:1"


@pytest.fixture(scope="module")
def tagent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    from nsf_agent.config import AgentConfig

    base = tmp_path_factory.mktemp("tyang")
    ydir = base / "yang"
    shutil.copytree(ROOT / "yang", ydir)
    shutil.copy(ROOT / "tests/data/yang/nc-conformance-test@2026-12-04.yang", ydir)
    a = AgentThread(base / "state", yang_dir=ydir,
                    modules=[*AgentConfig().modules, "nc-conformance-test"]).start()
    yield a
    a.stop()


def tcfg(body: str, decl: str = "") -> str:
    return f'<config xmlns="{NC_NS}"><top xmlns="{TEST_NS}" {decl}>{body}</top></config>'


def _raw(m, body: str, decl: str = "") -> list[etree._Element]:  # type: ignore[no-untyped-def]
    from ncclient.operations import RaiseMode

    m.raise_mode = RaiseMode.NONE
    try:
        return _errors(m.edit_config(target="running", config=tcfg(body, decl)).xml)
    finally:
        m.raise_mode = RaiseMode.ALL


def _item(name: str, extra: str = "", port: int | None = None) -> str:
    p = f"<port>{port}</port>" if port is not None else ""
    return f"<item><name>{name}</name>{p}{extra}</item>"


# -- issue 14.5: prefixes in values ---------------------------------------------------------

def test_prefixes_in_values_use_the_xml_namespace_context(tagent: AgentThread) -> None:
    decl = f'xmlns:x="{TEST_NS}"'
    with tagent.connect() as m:
        m.edit_config(target="running", config=tcfg(_item("a", "<tcp/>", 1)))
        # identityref whose prefix is declared on an ancestor: a new entry, then an update
        assert _raw(m, _item("b", "<tcp/><algo>x:aes-gcm</algo>", 2), decl) == []
        assert _raw(m, _item("a", "<algo>x:aes-gcm</algo>"), decl) == []
        # instance-identifier with a prefix that is not the module's own and a key predicate
        ref = "/x:top/x:item[x:name='a']/x:port"
        assert _raw(m, _item("c", f"<tcp/><ref>{ref}</ref>", 3), decl) == []
        assert _raw(m, _item("a", "<ref>/x:top/x:item[x:name='b']</ref>"), decl) == []
        data = etree.fromstring(m.get_config("running").xml.encode())
        items = {e.findtext(q("name", TEST_NS)): e for e in data.iter(q("item", TEST_NS))}
        for name, want in (("a", "aes-gcm"), ("b", "aes-gcm")):
            algo = items[name].find(q("algo", TEST_NS))
            pfx, _, local = algo.text.partition(":")
            assert (algo.nsmap[pfx], local) == (TEST_NS, want)
        r = items["c"].find(q("ref", TEST_NS))
        hit = etree.XPath("." + r.text, namespaces={k: v for k, v in r.nsmap.items() if k})(
            data[0])
        assert [h.text for h in hit] == ["1"]
        # a prefix that is declared nowhere is still refused, and nothing changes
        before = tagent.snapshot()
        (err,) = _raw(m, _item("a", "<algo>nope:aes-gcm</algo>"))
        assert err.findtext(q("error-tag", NC_NS)) == "invalid-value"
        assert tagent.snapshot() == before
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><top xmlns="{TEST_NS}" '
            'nc:operation="remove"/></config>'))


# -- issue 14.6: error-info ------------------------------------------------------------------

def test_error_info_per_rfc7950_section15(tagent: AgentThread) -> None:
    with tagent.connect() as m:
        m.edit_config(target="running", config=tcfg(_item("a", "<tcp/>", 1) +
                                                    '<ordered><id>o1</id></ordered>'))
        before = tagent.snapshot()
        # 15.1 unique: <non-unique> with the instance-identifier of the offending leaf
        (err,) = _raw(m, _item("b", "<tcp/>", 1))
        assert err.findtext(q("error-app-tag", NC_NS)) == "data-not-unique"
        nu = err.findall(f"{q('error-info', NC_NS)}/{q('non-unique', YANG_NS)}")
        assert len(nu) == 1
        pfx = next(k for k, v in nu[0].nsmap.items() if k and v == TEST_NS)
        assert nu[0].text == f"/{pfx}:top/{pfx}:item[{pfx}:name='b']/{pfx}:port"
        etree.XPath(nu[0].text, namespaces={k: v for k, v in nu[0].nsmap.items() if k})
        # 15.6 mandatory choice: <missing-choice>, error-path the entry
        (err,) = _raw(m, _item("c", "", 5))
        assert err.findtext(q("error-tag", NC_NS)) == "data-missing"
        assert err.findtext(q("error-app-tag", NC_NS)) == "missing-choice"
        assert err.findtext(f"{q('error-info', NC_NS)}/{q('missing-choice', YANG_NS)}") == \
            "transport"
        assert err.findtext(q("error-path", NC_NS)).endswith(":item")
        # unknown element deep inside a new entry: bad-element
        (err,) = _raw(m, _item("d", "<tcp/><bogus>1</bogus>", 6))
        assert err.findtext(q("error-tag", NC_NS)) == "unknown-element"
        assert err.findtext(f"{q('error-info', NC_NS)}/{q('bad-element', NC_NS)}") == "bogus"
        # a value of the wrong type: invalid-value naming the element (bad-element)
        (err,) = _raw(m, _item("e", "<tcp/><mtu>jumbo</mtu>", 7))
        assert err.findtext(q("error-tag", NC_NS)) == "invalid-value"
        assert err.findtext(f"{q('error-info', NC_NS)}/{q('bad-element', NC_NS)}") == "mtu"
        # 15.7 insert with a missing anchor: bad-attribute, app-tag missing-instance
        (err,) = _raw(m, f'<ordered xmlns:yang="{YANG_NS}" yang:insert="after" '
                         "yang:key=\"[id='zz']\"><id>o2</id></ordered>")
        assert err.findtext(q("error-tag", NC_NS)) == "bad-attribute"
        assert err.findtext(q("error-app-tag", NC_NS)) == "missing-instance"
        assert err.findtext(f"{q('error-info', NC_NS)}/{q('bad-attribute', NC_NS)}") == "key"
        assert tagent.snapshot() == before


# -- issue 14.7: RFC 6243 with-defaults -------------------------------------------------------

WD_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-with-defaults"
WD_ATTR = "{urn:ietf:params:xml:ns:netconf:default:1.0}default"


def _wd_get_config(m, mode: str, source: str = "running") -> etree._Element:  # type: ignore[no-untyped-def]
    r = m.dispatch(etree.fromstring(
        f'<get-config xmlns="{NC_NS}"><source><{source}/></source><filter>'
        f'<top xmlns="{TEST_NS}"/></filter><with-defaults xmlns="{WD_NS}">{mode}'
        "</with-defaults></get-config>"))
    return etree.fromstring(r.xml.encode())


def _leaves(root: etree._Element) -> dict[str, tuple[str | None, str | None]]:
    out = {}
    for item in root.iter(q("item", TEST_NS)):
        mtu = item.find(q("mtu", TEST_NS))
        out[item.findtext(q("name", TEST_NS))] = (
            None if mtu is None else mtu.text, None if mtu is None else mtu.get(WD_ATTR))
    mode = root.find(f".//{q('mode', TEST_NS)}")
    out["mode"] = (None, None) if mode is None else (mode.text, mode.get(WD_ATTR))
    return out


def test_with_defaults_modes(tagent: AgentThread) -> None:
    with tagent.connect() as m:
        m.edit_config(target="running", config=tcfg(
            _item("a", "<mtu>1500</mtu><tcp/>", 11) + _item("b", "<mtu>9000</mtu><tcp/>", 12)
            + _item("c", "<tcp/>", 13)))
        assert _leaves(_wd_get_config(m, "explicit")) == {
            "a": ("1500", None), "b": ("9000", None), "c": (None, None), "mode": (None, None)}
        assert _leaves(_wd_get_config(m, "report-all")) == {
            "a": ("1500", None), "b": ("9000", None), "c": ("1500", None),
            "mode": ("auto", None)}
        assert _leaves(_wd_get_config(m, "trim")) == {
            "a": (None, None), "b": ("9000", None), "c": (None, None), "mode": (None, None)}
        assert _leaves(_wd_get_config(m, "report-all-tagged")) == {
            "a": ("1500", "true"), "b": ("9000", None), "c": ("1500", "true"),
            "mode": ("auto", "true")}
        # get, with ncclient's own parameter
        r = m.get(filter=("subtree", f'<top xmlns="{TEST_NS}"/>'),
                  with_defaults="report-all-tagged")
        assert _leaves(etree.fromstring(r.xml.encode()))["c"] == ("1500", "true")
        # copy-config: the source as the mode reports it
        m.dispatch(etree.fromstring(
            f'<copy-config xmlns="{NC_NS}"><target><startup/></target><source><running/>'
            f'</source><with-defaults xmlns="{WD_NS}">report-all</with-defaults></copy-config>'))
        assert _leaves(_wd_get_config(m, "explicit", "startup"))["mode"] == ("auto", None)
        before = tagent.snapshot()
        for bad, tag in ((f'<with-defaults xmlns="{WD_NS}">everything</with-defaults>',
                          "invalid-value"),
                         ('<with-defaults xmlns="urn:example:x">trim</with-defaults>',
                          "unknown-element")):
            from ncclient.operations import RaiseMode

            m.raise_mode = RaiseMode.NONE
            r = m.dispatch(etree.fromstring(
                f'<get-config xmlns="{NC_NS}"><source><running/></source>{bad}</get-config>'))
            m.raise_mode = RaiseMode.ALL
            (err,) = _errors(r.xml)
            assert err.findtext(q("error-tag", NC_NS)) == tag
        assert tagent.snapshot() == before
        # wd:default in an edit (RFC 6243 4.5.2): "at its default" removes the explicit value
        wdecl = 'xmlns:wd="urn:ietf:params:xml:ns:netconf:default:1.0"'
        (err,) = _raw(m, _item("b", '<mtu wd:default="true">9000</mtu>'), wdecl)
        assert err.findtext(q("error-tag", NC_NS)) == "invalid-value"
        assert tagent.snapshot() == before
        assert _raw(m, _item("b", '<mtu wd:default="true">1500</mtu>'), wdecl) == []
        assert _leaves(_wd_get_config(m, "explicit"))["b"] == (None, None)
        # and a report-all-tagged reply sent back as a whole is accepted
        tagged = _wd_get_config(m, "report-all-tagged").find(f".//{q('top', TEST_NS)}")
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}">{etree.tostring(tagged).decode()}</config>'))
        assert _leaves(_wd_get_config(m, "report-all-tagged"))["c"] == ("1500", "true")
        m.edit_config(target="running", config=(
            f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><top xmlns="{TEST_NS}" '
            'nc:operation="remove"/></config>'))


def test_libnetconf2_with_defaults_report_all_tagged(tagent: AgentThread) -> None:
    if not lnc2_client.available():
        pytest.skip("libnetconf2 is not installed (Debian package libnetconf2-2)")
    with tagent.connect() as m:
        m.edit_config(target="running", config=tcfg(_item("w", "<tcp/>", 21)))
    try:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, str(HERE / "lnc2_client.py"), str(tagent.port), "admin",
             PASSWORD, "/nc-conformance-test:top", "report-all-tagged"],
            capture_output=True, text=True, timeout=60, env=env, check=True)
        out = json.loads(proc.stdout)
        assert out["connected"], out["log"]
        assert "data" in out["reply"], out
        root = etree.fromstring(out["reply"]["data"].encode())
        # the client's libyang took our wd:default (RFC 6243 namespace) as the
        # ietf-netconf-with-defaults annotation, and prints it in that module's namespace
        mtu = next(i for i in root.iter(q("item", TEST_NS))
                   if i.findtext(q("name", TEST_NS)) == "w").find(q("mtu", TEST_NS))
        assert (mtu.text, mtu.get(f"{{{WD_NS}}}default")) == ("1500", "true"), out["reply"]
    finally:
        with tagent.connect() as m:
            m.edit_config(target="running", config=(
                f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><top xmlns="{TEST_NS}" '
                'nc:operation="remove"/></config>'))


# -- issue 14.7: RFC 8526 NMDA -----------------------------------------------------------------

NMDA = "urn:ietf:params:xml:ns:yang:ietf-netconf-nmda"
DS = "urn:ietf:params:xml:ns:yang:ietf-datastores"
ORIGIN = "urn:ietf:params:xml:ns:yang:ietf-origin"


def _nmda(m, op: str, body: str):  # type: ignore[no-untyped-def]
    from ncclient.operations import RaiseMode

    m.raise_mode = RaiseMode.NONE
    try:
        r = m.dispatch(etree.fromstring(
            f'<{op} xmlns="{NMDA}" xmlns:ds="{DS}" xmlns:or="{ORIGIN}">{body}</{op}>'))
    finally:
        m.raise_mode = RaiseMode.ALL
    return etree.fromstring(r.xml.encode())


def test_nmda_get_data_and_edit_data(agent: AgentThread) -> None:
    with agent.connect() as m:
        caps = list(m.server_capabilities)
        assert any(c.startswith("urn:ietf:params:netconf:capability:yang-library:1.1?"
                                "revision=2019-01-04&content-id=") for c in caps)
        assert any("module=ietf-netconf-nmda&revision=2019-01-07" in c for c in caps)
        for ds in ("running", "candidate", "intended", "operational"):
            root = _nmda(m, "get-data", f"<datastore>ds:{ds}</datastore>")
            assert root.find(q("data", NMDA)) is not None, ds
            assert [e.findtext(q("name")) for e in _entries(root)] == ["p1", "p2", "p3"], ds
        # operational: config with origin, state from the server
        root = _nmda(m, "get-data", "<datastore>ds:operational</datastore><xpath-filter "
                     f'xmlns:ik="{IKELESS_NS}">/ik:ipsec-ikeless/ik:spd/ik:spd-entry/ik:name'
                     "</xpath-filter><with-origin/>")
        top = root.find(f".//{q('ipsec-ikeless')}")
        pfx, _, ident = top.get(q("origin", ORIGIN)).partition(":")
        assert (top.nsmap[pfx], ident) == (ORIGIN, "intended")
        _assert_valid_spd_names(root, ["p1", "p2", "p3"])
        state = _nmda(m, "get-data", "<datastore>ds:operational</datastore>"
                      "<config-filter>false</config-filter>")
        assert state.find(f".//{q('spd-entry')}") is None
        ncm = "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring"
        assert state.find(f".//{q('netconf-state', ncm)}") is not None
        kept = _nmda(m, "get-data", "<datastore>ds:operational</datastore>"
                     "<origin-filter>or:intended</origin-filter>")
        assert len(_entries(kept)) == 3
        dropped = _nmda(m, "get-data", "<datastore>ds:operational</datastore>"
                        "<negated-origin-filter>or:intended</negated-origin-filter>")
        assert _entries(dropped) == []
        shallow = _nmda(m, "get-data", "<datastore>ds:running</datastore><max-depth>1"
                        "</max-depth>")
        top = shallow.find(f".//{q('ipsec-ikeless')}")
        assert top is not None and len(top) == 0
        before = agent.snapshot()
        for body in ("<datastore>ds:nowhere</datastore>",
                     "<datastore>ds:running</datastore><with-origin/>",
                     "<datastore>ds:running</datastore><max-depth>0</max-depth>"):
            (err,) = _errors(etree.tostring(_nmda(m, "get-data", body)).decode())
            assert err.findtext(q("error-tag", NC_NS)) == "invalid-value", body
        # edit-data: edit-config's semantics on running / candidate only
        cfg = (f'<config><ipsec-ikeless xmlns="{IKELESS_NS}"><spd>'
               f'{spd_entry("p4", reqid=4)}</spd></ipsec-ikeless></config>')
        (err,) = _errors(etree.tostring(_nmda(
            m, "edit-data", f"<datastore>ds:operational</datastore>{cfg}")).decode())
        assert err.findtext(q("error-tag", NC_NS)) == "invalid-value"
        bad = cfg.replace("<reqid>4</reqid>", "<reqid>x</reqid>")
        (err,) = _errors(etree.tostring(_nmda(
            m, "edit-data", f"<datastore>ds:running</datastore>{bad}")).decode())
        assert err.findtext(q("error-tag", NC_NS)) == "invalid-value"
        assert agent.snapshot() == before
        ok = _nmda(m, "edit-data", f"<datastore>ds:candidate</datastore>{cfg}")
        assert ok.find(q("ok", NC_NS)) is not None
        cand = _nmda(m, "get-data", "<datastore>ds:candidate</datastore>")
        assert [e.findtext(q("name")) for e in _entries(cand)] == ["p1", "p2", "p3", "p4"]
        m.discard_changes()
        assert agent.snapshot() == before


def test_libnetconf2_get_data_with_origin(agent: AgentThread) -> None:
    if not lnc2_client.available():
        pytest.skip("libnetconf2 is not installed (Debian package libnetconf2-2)")
    env = dict(os.environ, PYTHONPATH=str(ROOT), LNC2_GET_DATA="ietf-datastores:operational")
    proc = subprocess.run(
        [sys.executable, str(HERE / "lnc2_client.py"), str(agent.port), "admin", PASSWORD,
         "/ietf-i2nsf-ikeless:ipsec-ikeless/spd/spd-entry/name"],
        capture_output=True, text=True, timeout=60, env=env, check=True)
    out = json.loads(proc.stdout)
    assert out["connected"], out["log"]
    assert "data" in out["reply"], out
    root = etree.fromstring(out["reply"]["data"].encode())
    _assert_valid_spd_names(root, ["p1", "p2", "p3"])
    top = root.find(f".//{q('ipsec-ikeless')}")
    assert top.get(q("origin", ORIGIN)) is not None  # libyang took it as metadata
    assert not [line for line in out["log"] if "get-schema" in line]
