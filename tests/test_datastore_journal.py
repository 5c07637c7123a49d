"""running's journal: the last completely written version survives kills and torn writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from netconf_core.datastore import Datastores, RunningJournal
from netconf_core.schema import YangSchema
from netconf_core.yang_context import create_context

NC = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


def test_journal_keeps_last_complete_record(tmp_path: Path) -> None:
    j = RunningJournal(tmp_path / "running.xml")
    assert j.load() is None
    j.write(b"one")
    j.write(b"two")
    assert j.load() == b"two"
    j.close()
    # a kill in the middle of the third write leaves a torn record: ignored
    rec = RunningJournal.HEADER.pack(RunningJournal.MAGIC, 5, 0) + b"thr"
    with open(j.path, "ab") as f:
        f.write(rec)
    assert RunningJournal(tmp_path / "running.xml").load() == b"two"
    # a complete record whose body was damaged fails its CRC
    with open(j.path, "r+b") as f:
        data = f.read()
        f.seek(data.rindex(b"two"))
        f.write(b"twX")
    assert RunningJournal(tmp_path / "running.xml").load() == b"one"


def test_journal_compacts_into_base_file(tmp_path: Path) -> None:
    j = RunningJournal(tmp_path / "running.xml", compact_factor=4, min_compact=64)
    for i in range(50):
        j.write(b"version-%03d" % i + b"x" * 20)
        assert j.load() == b"version-%03d" % i + b"x" * 20
    assert j.path.stat().st_size < 4 * 64 + 200
    assert (tmp_path / "running.xml").read_bytes().startswith(b"version-")
    j.close()


def sad(spi: int) -> etree._Element:
    return etree.fromstring(
        f'<config xmlns="{NC}"><ipsec-ikeless xmlns="{IKELESS}"><spd><spd-entry>'
        f"<name>p</name><direction>outbound</direction><reqid>{spi}</reqid>"
        "<ipsec-policy-config><traffic-selector><local-prefix>10.0.0.1/32</local-prefix>"
        "<remote-prefix>10.0.0.2/32</remote-prefix><inner-protocol>any</inner-protocol>"
        "</traffic-selector><processing-info><action>bypass</action></processing-info>"
        "</ipsec-policy-config></spd-entry></spd></ipsec-ikeless></config>".encode())


@pytest.fixture(scope="module")
def schema() -> YangSchema:
    return YangSchema(create_context(["ietf-i2nsf-ikeless"]))


def test_datastore_restarts_from_journal_and_torn_tail(schema: YangSchema,
                                                       tmp_path: Path) -> None:
    ds = Datastores(schema, state_dir=tmp_path)
    for reqid in range(1, 30):
        ds.edit_config("running", sad(reqid))
    want = ds.serialize("running")
    ds.close()
    with open(tmp_path / "running.journal", "ab") as f:  # a kill during the next commit
        f.write(RunningJournal.HEADER.pack(RunningJournal.MAGIC, 1000, 1) + b"<data")
    ds2 = Datastores(schema, state_dir=tmp_path)
    assert ds2.serialize("running") == want
    assert b"<reqid>29</reqid>" in want
    # start-up compacted the journal: the torn record is gone and new commits append
    ds2.edit_config("running", sad(40))
    ds2.close()
    assert b"<reqid>40</reqid>" in Datastores(schema, state_dir=tmp_path).serialize("running")


def test_unchanged_edit_is_no_commit(schema: YangSchema, tmp_path: Path) -> None:
    ds = Datastores(schema, state_dir=tmp_path)
    ds.edit_config("running", sad(7))
    gen = ds.running_generation
    size = (tmp_path / "running.journal").stat().st_size
    ds.edit_config("running", sad(7))
    assert ds.running_generation == gen
    assert (tmp_path / "running.journal").stat().st_size == size
    diff = ds.last_running_diff
    assert diff is not None and b"create" in etree.tostring(diff)
    ds.close()


def test_failed_append_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netconf_core.datastore as ds_mod

    j = RunningJournal(tmp_path / "running.xml")
    j.write(b"good")
    real = ds_mod._writev_all

    def torn(fd: int, parts: list[bytes]) -> None:
        real(fd, [b"".join(parts)[:7]])  # part of the record reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ds_mod, "_writev_all", torn)
    with pytest.raises(OSError):
        j.write(b"lost", b"-version")
    monkeypatch.undo()
    j.write(b"next")  # appended after the last good record, so it is found
    assert RunningJournal(tmp_path / "running.xml").load() == b"next"
    j.close()
