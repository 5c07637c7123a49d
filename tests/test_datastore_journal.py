"""running's journal: the last completely written version survives kills and torn writes."""

from __future__ import annotations

import os
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
    # a complete record whose body was damaged fails its CRC; "one" was wiped when "two"
    # was written (old versions hold deleted keys), so the base file is what is left
    with open(j.path, "r+b") as f:
        data = f.read()
        f.seek(data.rindex(b"two"))
        f.write(b"twX")
    assert b"one" not in data
    assert RunningJournal(tmp_path / "running.xml").load() is None
    (tmp_path / "running.xml").write_bytes(b"base")
    assert RunningJournal(tmp_path / "running.xml").load() == b"base"


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

    def torn(fd: int, parts: list[bytes], offset: int) -> None:
        real(fd, [b"".join(parts)[:7]], offset)  # part of the record reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ds_mod, "_writev_all", torn)
    with pytest.raises(OSError):
        j.write(b"lost", b"-version")
    monkeypatch.undo()
    j.write(b"next")  # appended after the last good record, so it is found
    assert RunningJournal(tmp_path / "running.xml").load() == b"next"
    j.close()


KEY_HEX = "de:ad:be:ef:" * 3 + "de:ad:be:ef"


def sad_with_key(key: str) -> etree._Element:
    return etree.fromstring(
        f'<config xmlns="{NC}"><ipsec-ikeless xmlns="{IKELESS}"><sad><sad-entry>'
        "<name>sa1</name><reqid>1</reqid><ipsec-sa-config><spi>4096</spi>"
        "<ext-seq-num>true</ext-seq-num><seq-overflow>false</seq-overflow>"
        "<anti-replay-window-size>64</anti-replay-window-size><traffic-selector>"
        "<local-prefix>10.0.0.1/32</local-prefix><remote-prefix>10.0.0.2/32</remote-prefix>"
        "<inner-protocol>any</inner-protocol></traffic-selector>"
        "<protocol-parameters>esp</protocol-parameters><mode>transport</mode><esp-sa>"
        "<encryption><encryption-algorithm>20</encryption-algorithm>"
        f"<key>{key}</key><iv>00:01:02:03:04:05:06:07</iv></encryption>"
        "</esp-sa></ipsec-sa-config></sad-entry></sad></ipsec-ikeless></config>".encode())


def _files_with(tmp_path: Path, needle: bytes) -> list[str]:
    return [p.name for p in tmp_path.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_deleted_keys_do_not_survive_in_state_files(schema: YangSchema, tmp_path: Path) -> None:
    """Issue 13 §4: a deleted or replaced key leaves no copy in running.journal, running.xml
    or startup.xml, and every state file is 0600."""
    ds = Datastores(schema, state_dir=tmp_path)
    ds.edit_config("running", sad_with_key(KEY_HEX))
    stored = b"de:ad:be:ef"
    assert _files_with(tmp_path, stored) == ["running.journal"]
    ds.copy_config("startup", "running")
    # a hard link keeps the inode running.xml/startup.xml had: it must be zeroed on replace
    old_startup = tmp_path / "old-startup"
    os.link(tmp_path / "startup.xml", old_startup)
    # a rekey (new key in place of the old one), then everything deleted
    ds.edit_config("running", sad_with_key("ca:fe:ba:be:" * 3 + "ca:fe:ba:be"))
    assert stored not in (tmp_path / "running.journal").read_bytes()
    ds.edit_config("running", etree.fromstring(
        f'<config xmlns="{NC}" xmlns:nc="{NC}"><ipsec-ikeless xmlns="{IKELESS}" '
        'nc:operation="remove"/></config>'.encode()))
    ds.copy_config("startup", "running")
    assert set(old_startup.read_bytes()) <= {0}
    old_startup.unlink()
    assert _files_with(tmp_path, stored) == []
    assert _files_with(tmp_path, b"ca:fe:ba:be") == []
    for p in tmp_path.iterdir():
        assert p.stat().st_mode & 0o777 == 0o600, p
    # many commits, then compaction: still nothing old, and restart gives the last version
    for i in range(1, 40):
        ds.edit_config("running", sad_with_key(f"{i:02x}:" * 15 + "77"))
    ds.close()
    assert _files_with(tmp_path, b"01:01:01:01") == []
    again = Datastores(schema, state_dir=tmp_path)
    assert b"27:27:27:27" in again.serialize("running")
    again.close()
