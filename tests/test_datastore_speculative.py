"""Big full-tree commits validate in libyang while the appliers prepare: the outcome must be
what the sequential order gives (libyang's errors first, appliers see the canonical tree)."""

from __future__ import annotations

import pytest
from lxml import etree

import netconf_core.datastore as datastore
from netconf_core.applier import ConfigChange, NullApplier
from netconf_core.datastore import Datastores
from netconf_core.errors import RpcError, operation_failed
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


class Recorder(NullApplier):
    """Records the tree each phase saw; can refuse in validate."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bytes]] = []
        self.refuse: str | None = None

    def validate(self, change: ConfigChange) -> None:
        self.seen.append(("validate", etree.tostring(change.new)))
        if self.refuse:
            raise operation_failed(self.refuse)

    def prepare(self, change: ConfigChange) -> None:
        self.seen.append(("prepare", etree.tostring(change.new)))


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context(["ietf-i2nsf-ikeless"]))


@pytest.fixture(autouse=True)
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datastore, "SPECULATE_BYTES", 1)


def entries(n: int, window: str = "64", order_ok: bool = True) -> etree._Element:
    body = []
    for i in range(n):
        head = f"<name>s{i}</name><reqid>{i + 1}</reqid>"
        cfgp = (f"<ipsec-sa-config><spi>{1000 + i}</spi><anti-replay-window-size>{window}"
                "</anti-replay-window-size><traffic-selector><local-prefix>10.0.0.1/32"
                "</local-prefix><remote-prefix>10.0.0.2/32</remote-prefix><inner-protocol>any"
                "</inner-protocol></traffic-selector><protocol-parameters>esp"
                "</protocol-parameters><mode>transport</mode></ipsec-sa-config>")
        body.append(f"<sad-entry>{head}{cfgp}</sad-entry>" if order_ok
                    else f"<sad-entry>{cfgp}{head}</sad-entry>")
    return etree.fromstring(
        f'<config xmlns="{NC}"><ipsec-ikeless xmlns="{IKELESS}"><sad>{"".join(body)}</sad>'
        "</ipsec-ikeless></config>".encode())


def reference(schema: YangSchema, cfg: etree._Element) -> bytes:
    ref = Datastores(schema)
    ref.edit_config("running", cfg)
    return ref.serialize("running")


@pytest.mark.parametrize("order_ok", [True, False])
def test_outcome_and_applier_view_match_sequential(schema: YangSchema, order_ok: bool) -> None:
    rec = Recorder()
    ds = Datastores(schema, [rec])
    calls: list[bool] = []
    real = ds._commit_running
    ds._commit_running = lambda c, prepared=None: (  # type: ignore[method-assign]
        calls.append(prepared is not None), real(c, prepared))[1]
    cfg = entries(20, order_ok=order_ok)
    ds.edit_config("running", cfg)
    assert ds.serialize("running") == reference(schema, entries(20, order_ok=order_ok))
    # canonical input: the speculative work stands; otherwise redone on the canonical tree
    assert calls == [order_ok]
    final = etree.tostring(ds.get_config("running"))
    assert rec.seen[-2:] == [("validate", final), ("prepare", final)]
    assert len(rec.applied) == 1
    assert etree.tostring(rec.applied[0].new) == final


def test_libyang_error_wins_and_nothing_applied(schema: YangSchema) -> None:
    rec = Recorder()
    rec.refuse = "applier says no"
    ds = Datastores(schema, [rec])
    before = ds.serialize("running")
    with pytest.raises(RpcError) as ei:
        ds.edit_config("running", entries(20, window="not-a-number"))
    assert ei.value.error_tag == "invalid-value"
    assert "applier" not in ei.value.message
    assert rec.applied == [] and ds.serialize("running") == before


def test_applier_error_after_valid_tree(schema: YangSchema) -> None:
    rec = Recorder()
    rec.refuse = "applier says no"
    ds = Datastores(schema, [rec])
    before = ds.serialize("running")
    with pytest.raises(RpcError, match="applier says no"):
        ds.edit_config("running", entries(20))
    assert rec.applied == [] and ds.serialize("running") == before
    rec.refuse = None
    ds.edit_config("running", entries(20))
    assert ds.serialize("running") == reference(schema, entries(20))
