"""Edit-config semantics and datastore transactions, without the network (fast unit tests).

Uses ietf-netconf-acm: it has keyed lists, an ordered-by user list, leaf-lists, defaults and
typed leaves, which is what the edit engine must handle.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from netconf_core.applier import NullApplier
from netconf_core.datastore import Datastores
from netconf_core.errors import NC_NS, RpcError
from netconf_core.filters import subtree_filter, xpath_filter
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

ACM = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context(["ietf-netconf-acm"]))


@pytest.fixture
def ds(schema: YangSchema, tmp_path: Path) -> Datastores:
    return Datastores(schema, [NullApplier()], state_dir=tmp_path)


def cfg(body: str) -> etree._Element:
    return etree.fromstring(
        f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}" xmlns:yang="urn:ietf:params:xml:ns:yang:1">'
        f'<nacm xmlns="{ACM}">{body}</nacm></config>'
    )


def groups(ds: Datastores, name: str = "running") -> dict[str, list[str]]:
    root = ds.get_config(name)
    out = {}
    for g in root.iterfind(f".//{{{ACM}}}group"):
        out[g.findtext(f"{{{ACM}}}name")] = [u.text for u in g.iterfind(f"{{{ACM}}}user-name")]
    return out


def rule_lists(ds: Datastores) -> list[str]:
    return [r.findtext(f"{{{ACM}}}name") for r in ds.get_config("running").iterfind(
        f".//{{{ACM}}}rule-list")]


GROUP_A = "<groups><group><name>a</name><user-name>u1</user-name></group></groups>"


def test_merge_creates_and_extends(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    ds.edit_config("running", cfg(
        "<groups><group><name>a</name><user-name>u2</user-name></group></groups>"))
    assert groups(ds) == {"a": ["u1", "u2"]}


def test_replace_list_entry(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    ds.edit_config("running", cfg(
        '<groups><group nc:operation="replace"><name>a</name><user-name>u9</user-name>'
        "</group></groups>"))
    assert groups(ds) == {"a": ["u9"]}


def test_default_operation_replace_replaces_whole_tree(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A + "<enable-nacm>false</enable-nacm>"))
    ds.edit_config("running", cfg(
        "<groups><group><name>b</name></group></groups>"), default_operation="replace")
    assert groups(ds) == {"b": []}
    assert ds.get_config("running").find(f".//{{{ACM}}}enable-nacm") is None


def test_create_existing_is_data_exists_and_changes_nothing(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    before = ds.serialize("running")
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg(
            '<groups><group nc:operation="create"><name>a</name></group></groups>'))
    assert ei.value.error_tag == "data-exists"
    assert "group[name='a']" in (ei.value.path or "")
    assert ds.serialize("running") == before


def test_delete_missing_is_data_missing_remove_is_silent(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg(
            '<groups><group nc:operation="delete"><name>zz</name></group></groups>'))
    assert ei.value.error_tag == "data-missing"
    ds.edit_config("running", cfg(
        '<groups><group nc:operation="remove"><name>zz</name></group></groups>'))
    ds.edit_config("running", cfg(
        '<groups><group nc:operation="delete"><name>a</name></group></groups>'))
    assert groups(ds) == {}


def test_delete_leaf_list_value(ds: Datastores) -> None:
    ds.edit_config("running", cfg(
        "<groups><group><name>a</name><user-name>u1</user-name><user-name>u2</user-name>"
        "</group></groups>"))
    ds.edit_config("running", cfg(
        '<groups><group><name>a</name><user-name nc:operation="delete">u1</user-name>'
        "</group></groups>"))
    assert groups(ds) == {"a": ["u2"]}


def test_none_requires_existing_parent(ds: Datastores) -> None:
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg(
            '<groups><group><name>a</name><user-name nc:operation="delete">u1</user-name>'
            "</group></groups>"), default_operation="none")
    assert ei.value.error_tag == "data-missing"
    # ... but a descendant that creates something brings its parents along (as sysrepo does)
    ds.edit_config("running", cfg(
        '<groups><group nc:operation="create"><name>a</name></group></groups>'),
        default_operation="none")
    assert groups(ds) == {"a": []}


@pytest.mark.parametrize(
    ("body", "tag"),
    [
        ("<enable-nacm>maybe</enable-nacm>", "invalid-value"),
        ("<bogus>1</bogus>", "unknown-element"),
        ("<groups><group><user-name>x</user-name></group></groups>", "missing-element"),
        ('<groups><group nc:operation="frobnicate"><name>a</name></group></groups>',
         "bad-attribute"),
        ("<read-default>sideways</read-default>", "invalid-value"),
        ("<denied-operations>5</denied-operations>", "invalid-value"),  # config false
    ],
)
def test_bad_edits_are_rejected_and_change_nothing(ds: Datastores, body: str, tag: str) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    ap = ds.appliers[0]
    assert isinstance(ap, NullApplier)
    applied = len(ap.applied)
    snap = {n: ds.serialize(n) for n in ("running", "candidate", "startup")}
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg(body))
    assert ei.value.error_tag == tag
    assert ei.value.message
    assert {n: ds.serialize(n) for n in snap} == snap
    assert len(ap.applied) == applied


def test_unknown_namespace(ds: Datastores) -> None:
    bad = etree.fromstring(f'<config xmlns="{NC_NS}"><x xmlns="urn:nowhere"/></config>')
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", bad)
    assert ei.value.error_tag == "unknown-namespace"


def test_ordered_by_user_insert(ds: Datastores) -> None:
    def rl(name: str, attrs: str = "") -> str:
        return f"<rule-list {attrs}><name>{name}</name></rule-list>"

    ds.edit_config("running", cfg(rl("a") + rl("b")))
    ds.edit_config("running", cfg(rl("c", 'yang:insert="first"')))
    assert rule_lists(ds) == ["c", "a", "b"]
    ds.edit_config("running", cfg(rl("d", "yang:insert=\"after\" yang:key=\"[name='a']\"")))
    assert rule_lists(ds) == ["c", "a", "d", "b"]
    ds.edit_config("running", cfg(rl("b", "yang:insert=\"before\" yang:key=\"[name='c']\"")))
    assert rule_lists(ds) == ["b", "c", "a", "d"]
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg(rl("e", "yang:insert=\"after\" yang:key=\"[name='zz']\"")))
    assert ei.value.error_tag == "bad-attribute"  # RFC 7950 section 15.7
    assert ei.value.app_tag == "missing-instance"
    assert ei.value.info["bad-attribute"] == "key"
    assert rule_lists(ds) == ["b", "c", "a", "d"]


def test_candidate_commit_discard(ds: Datastores) -> None:
    ds.edit_config("candidate", cfg(GROUP_A))
    assert ds.candidate_modified
    assert groups(ds) == {}
    ds.commit()
    assert groups(ds) == {"a": ["u1"]}
    assert not ds.candidate_modified
    ds.edit_config("candidate", cfg(
        '<groups><group nc:operation="delete"><name>a</name></group></groups>'))
    ds.discard_changes()
    assert groups(ds, "candidate") == {"a": ["u1"]}


def test_test_only_validates_without_setting(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A), test_option="test-only")
    assert groups(ds) == {}
    with pytest.raises(RpcError):
        ds.edit_config("running", cfg("<enable-nacm>x</enable-nacm>"), test_option="test-only")


def test_failing_applier_leaves_running_unchanged(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    before = ds.serialize("running")
    ap = ds.appliers[0]
    assert isinstance(ap, NullApplier)
    ap.fail_next = "kernel said no"
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", cfg("<groups><group><name>b</name></group></groups>"))
    assert "kernel said no" in ei.value.message
    assert ds.serialize("running") == before


def test_applier_receives_libyang_diff(ds: Datastores) -> None:
    ds.edit_config("running", cfg(GROUP_A))
    ap = ds.appliers[0]
    assert isinstance(ap, NullApplier)
    change = ap.applied[-1]
    assert change.diff is not None
    ops = {el.get("{urn:ietf:params:xml:ns:yang:1}operation") for el in change.diff.iter()}
    assert "create" in ops


def test_running_persists_atomically_and_reloads(schema: YangSchema, tmp_path: Path) -> None:
    ds = Datastores(schema, state_dir=tmp_path)
    ds.edit_config("running", cfg(GROUP_A))
    ds.copy_config("startup", "running")
    again = Datastores(schema, state_dir=tmp_path)
    assert again.serialize("running") == ds.serialize("running")
    assert again.serialize("startup") == ds.serialize("startup")
    assert not list(tmp_path.glob(".*"))  # no temp files left behind


def test_copy_config_inline_and_delete_startup(ds: Datastores) -> None:
    ds.copy_config("candidate", cfg(GROUP_A))
    assert groups(ds, "candidate") == {"a": ["u1"]}
    with pytest.raises(RpcError):
        ds.copy_config("running", cfg("<enable-nacm>x</enable-nacm>"))
    ds.copy_config("startup", "candidate")
    ds.delete_config("startup")
    assert len(ds.get_config("startup")) == 0
    with pytest.raises(RpcError) as ei:
        ds.delete_config("running")
    assert ei.value.error_tag == "operation-not-supported"


def test_continue_on_error_applies_the_rest(ds: Datastores) -> None:
    errors = ds.edit_config(
        "running",
        cfg('<groups><group nc:operation="delete"><name>zz</name></group>'
            "<group><name>ok</name></group></groups>"),
        error_option="continue-on-error",
    )
    assert [e.error_tag for e in errors] == ["data-missing"]
    assert groups(ds) == {"ok": []}


def test_subtree_filter(ds: Datastores, schema: YangSchema) -> None:
    ds.edit_config("running", cfg(
        "<enable-nacm>true</enable-nacm><groups>"
        "<group><name>a</name><user-name>u1</user-name></group>"
        "<group><name>b</name><user-name>u2</user-name></group></groups>"))
    data = ds.get_config("running")
    f = etree.fromstring(
        f'<filter xmlns="{NC_NS}"><nacm xmlns="{ACM}"><groups><group><name>b</name></group>'
        "</groups></nacm></filter>")
    out = subtree_filter(data, f, schema)
    names = [n.text for n in out.iterfind(f".//{{{ACM}}}name")]
    assert names == ["b"]
    assert out.find(f".//{{{ACM}}}user-name").text == "u2"
    assert out.find(f".//{{{ACM}}}enable-nacm") is None
    sel = etree.fromstring(
        f'<filter xmlns="{NC_NS}"><nacm xmlns="{ACM}"><groups><group><name/></group>'
        "</groups></nacm></filter>")
    out = subtree_filter(data, sel, schema)
    assert [n.text for n in out.iterfind(f".//{{{ACM}}}name")] == ["a", "b"]
    assert out.find(f".//{{{ACM}}}user-name") is None
    empty = etree.fromstring(f'<filter xmlns="{NC_NS}"/>')
    assert len(subtree_filter(data, empty, schema)) == 0


def test_xpath_filter_keeps_list_keys(ds: Datastores, schema: YangSchema) -> None:
    ds.edit_config("running", cfg(
        "<groups><group><name>a</name><user-name>u1</user-name></group>"
        "<group><name>b</name><user-name>u2</user-name></group></groups>"))
    out = xpath_filter(ds.get_config("running"),
                       "/acm:nacm/acm:groups/acm:group[acm:name='b']/acm:user-name",
                       {"acm": ACM}, schema)
    grp = out.findall(f".//{{{ACM}}}group")
    assert len(grp) == 1
    assert grp[0].findtext(f"{{{ACM}}}name") == "b"
    assert grp[0].findtext(f"{{{ACM}}}user-name") == "u2"
    with pytest.raises(RpcError):
        xpath_filter(ds.get_config("running"), "/acm:nacm[", {"acm": ACM}, schema)


def test_empty_running_survives_restart(schema: YangSchema, tmp_path: Path) -> None:
    ds = Datastores(schema, state_dir=tmp_path)
    ds.edit_config("running", cfg(GROUP_A))
    ds.copy_config("startup", "running")
    ds.edit_config("running", cfg(
        '<groups><group nc:operation="delete"><name>a</name></group></groups>'))
    again = Datastores(schema, state_dir=tmp_path)
    assert groups(again) == {}
    assert groups(again, "startup") == {"a": ["u1"]}


def test_get_state_merges_by_key_and_skips_what_a_filter_cannot_select(
        ds: Datastores) -> None:
    from netconf_core.filters import top_level_selector

    ds.edit_config("running", cfg(
        "<groups><group><name>a</name><user-name>u1</user-name></group>"
        "<group><name>c</name></group></groups>"))
    ap = ds.appliers[0]
    assert isinstance(ap, NullApplier)
    ap.state_elements = [etree.fromstring(
        f'<nacm xmlns="{ACM}"><denied-operations>3</denied-operations><groups>'
        "<group><name>c</name><user-name>u7</user-name></group>"
        "<group><name>b</name><user-name>u9</user-name></group>"
        "<group><name>a</name><user-name>u8</user-name></group></groups></nacm>")]
    full = ds.get_state()
    assert full.findtext(f".//{{{ACM}}}denied-operations") == "3"
    assert groups_of(full) == {"a": ["u1", "u8"], "c": ["u7"], "b": ["u9"]}

    def filt(body: str) -> etree._Element:  # no default namespace: <nacm/> has none
        return etree.fromstring(f'<nc:filter xmlns:nc="{NC_NS}" type="subtree">{body}'
                                "</nc:filter>")

    for body in (f'<nacm xmlns="{ACM}"/>', "<nacm/>"):
        picked = ds.get_state(top_level_selector(filt(body)))
        assert groups_of(picked) == groups_of(full), body
    other = ds.get_state(top_level_selector(filt('<system xmlns="urn:example:other"/>')))
    assert len(other) == 0  # neither the configuration nor the state was built
    assert top_level_selector(None) is None
    assert top_level_selector(etree.fromstring(
        f'<filter xmlns="{NC_NS}" type="xpath" select="/*"/>')) is None


def groups_of(root: etree._Element) -> dict[str, list[str]]:
    return {g.findtext(f"{{{ACM}}}name"): [u.text for u in g.iterfind(f"{{{ACM}}}user-name")]
            for g in root.iterfind(f".//{{{ACM}}}group")}


def test_null_applier_remembers_only_the_last_changes(schema: YangSchema) -> None:
    """An agent that only stores configuration runs for months: its applier must not keep
    every configuration it ever saw (it used to: memory grew with each commit)."""
    ap = NullApplier(keep=5)
    ds = Datastores(schema, [ap])
    for i in range(12):
        ds.edit_config("running", cfg(
            f"<groups><group><name>g{i}</name><user-name>u</user-name></group></groups>"))
    assert len(ap.applied) == 5
    assert ap.applied[-1].new is ds.running_tree()
    assert sorted(groups(ds)) == sorted(f"g{i}" for i in range(12))
    agent = NullApplier(keep=0)  # what the agent's `null` data plane uses
    ds = Datastores(schema, [agent])
    ds.edit_config("running", cfg(GROUP_A))
    assert agent.applied == [] and groups(ds) == {"a": ["u1"]}
