"""Configuration datastores (running, candidate, startup) with RFC 6241 edit semantics.

Every change is made on a copy, validated as a complete tree by libyang, pushed through the
appliers (for running) and only then swapped in, so a failure of any kind leaves every
datastore byte-identical. Trees are kept in libyang's canonical XML form (schema order,
canonical values) so that equal configurations are equal bytes.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import libyang
from lxml import etree

from netconf_core.applier import Applier, ConfigChange
from netconf_core.edit import apply_edit
from netconf_core.errors import NC_NS, RpcError
from netconf_core.incremental import mirrorable, rebuild
from netconf_core.schema import YangSchema, print_xml

log = logging.getLogger(__name__)

DATA = f"{{{NC_NS}}}data"
CONFIG = f"{{{NC_NS}}}config"
DATASTORES = ("running", "candidate", "startup")
TEST_OPTIONS = ("test-then-set", "set", "test-only")
ERROR_OPTIONS = ("stop-on-error", "rollback-on-error", "continue-on-error")


def empty_data() -> etree._Element:
    return etree.Element(DATA, nsmap={None: NC_NS})


def write_atomic(path: Path, data: bytes, durable: bool = True, wipe_old: bool = False
                 ) -> None:
    """Write to a temporary file and rename it over `path`: whenever the process dies the
    file is the old or the new content. `durable` also fsyncs the file and the directory,
    so that the same holds after a power failure. Callers serialise writes to one path.
    `wipe_old`: the replaced file's blocks are overwritten with zeros first (it may hold key
    material that was deleted since: a rename alone leaves it readable on the disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale tmp file keeps its mode through O_CREAT
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    old = None
    if wipe_old:
        try:
            old = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            old = None
    try:
        os.replace(tmp, path)
        if old is not None:
            _zero_fill(old, 0, os.fstat(old).st_size)
            os.fsync(old)  # an unlinked inode's dirty pages may never be written back
    finally:
        if old is not None:
            os.close(old)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def wipe_file(path: Path) -> None:
    """Overwrite a file with zeros, then remove it (deleted secrets must not stay on disk)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _zero_fill(fd, 0, os.fstat(fd).st_size)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)


_ZEROS = bytes(1 << 16)
_ZERO_VIEW = memoryview(_ZEROS)  # slices without copies


def _zero_fill(fd: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        offset += os.pwrite(fd, _ZERO_VIEW[:min(len(_ZEROS), end - offset)], offset)


def _writev_all(fd: int, parts: list[bytes], offset: int) -> None:
    views = [memoryview(p) for p in parts if p]
    while views:
        n = os.pwritev(fd, views[:1024], offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class RunningJournal:
    """running's persistence: the compacted `running.xml` plus an append-only journal of
    complete versions (`running.journal`).

    A commit appends one record (magic, length, CRC-32, the canonical XML) with a single
    write: no temporary file, no rename, which cost a quarter of a small edit's latency.
    A record cut short by a kill (or torn by anything else) fails its length or CRC and is
    ignored, so loading yields the last completely written version. When the journal grows
    past `compact_factor` times the current content (and `min_compact` bytes), it is
    compacted: running.xml is replaced atomically, then the journal truncated; a crash in
    between leaves a journal whose last record equals running.xml. Like running.xml before
    it, the journal is not fsynced (see `Datastores._persist`).

    Deleted or replaced key material must not survive on disk: once a record is written,
    the one before it is overwritten in place (header marked WIPED, body zeros), and
    compaction zeroes what it truncates and the running.xml it replaces. The journal so
    holds one live version; a record damaged by a power loss (length right, CRC wrong)
    falls back to running.xml, as a journal that was never fsynced may do anyway."""

    MAGIC = b"I2NJ"
    WIPED = b"I2NW"
    HEADER = struct.Struct(">4sQI")

    def __init__(self, base: Path, compact_factor: int = 8, min_compact: int = 1 << 20) -> None:
        self.base = base
        self.path = base.with_name(base.stem + ".journal")
        self.compact_factor = compact_factor
        self.min_compact = min_compact
        self._fd: int | None = None
        self._size = 0
        self._live: tuple[int, int] | None = None  # (offset, length) of the last record

    def load(self) -> bytes | None:
        """The newest complete version, or None if nothing was ever written."""
        last: bytes | None = None
        if self.path.exists():
            buf = self.path.read_bytes()
            pos = 0
            h = self.HEADER
            while pos + h.size <= len(buf):
                magic, length, crc = h.unpack_from(buf, pos)
                end = pos + h.size + length
                if magic not in (self.MAGIC, self.WIPED) or end > len(buf):
                    break
                body = buf[pos + h.size:end]
                if magic == self.MAGIC and zlib.crc32(body) == crc:
                    last = body
                pos = end
        if last is None and self.base.exists():
            last = self.base.read_bytes()
        return last

    def write(self, *parts: bytes) -> None:
        """Append one version, given as parts to concatenate (no copy of a big text)."""
        if self._fd is None:
            self._open()
        assert self._fd is not None
        size = sum(len(p) for p in parts)
        if self._size and self._size + size > max(self.min_compact, self.compact_factor * size):
            self.compact(b"".join(parts))
            return
        crc = 0
        for p in parts:
            crc = zlib.crc32(p, crc)
        rec = [self.HEADER.pack(self.MAGIC, size, crc), *parts]
        try:
            _writev_all(self._fd, rec, self._size)
        except BaseException:
            # a partial record would hide every later one: cut it off again
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                log.exception("cannot truncate %s after a failed write", self.path)
            self.close()
            raise
        self._wipe_live()
        self._live = (self._size, size)
        self._size += self.HEADER.size + size

    def _wipe_live(self) -> None:
        """Overwrite the previous record (it is superseded by the one just written)."""
        if self._live is None or self._fd is None:
            return
        off, length = self._live
        header = self.HEADER.pack(self.WIPED, length, 0)
        if length <= len(_ZEROS):  # the usual case: one system call
            _writev_all(self._fd, [header, _ZERO_VIEW[:length]], off)
        else:
            os.pwrite(self._fd, header, off)
            _zero_fill(self._fd, off + self.HEADER.size, length)
        self._live = None

    def compact(self, data: bytes) -> None:
        """running.xml := data (atomically), then an empty journal; nothing of the older
        versions stays readable in either file."""
        write_atomic(self.base, data, durable=False, wipe_old=True)
        if self._fd is None:
            self._open()
        assert self._fd is not None
        if self._size:
            _zero_fill(self._fd, 0, self._size)
            os.fsync(self._fd)  # truncated pages are dropped, not written: zeros first
        os.ftruncate(self._fd, 0)
        self._size = 0
        self._live = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # no O_APPEND: records are wiped in place with pwrite (which O_APPEND redirects)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.fchmod(self._fd, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._live = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


@dataclass
class Canonical:
    """A validated (or at least parsed) configuration in libyang's canonical XML form: the
    lxml tree, libyang's tree (owned by whoever holds this) and the printed children."""

    elem: etree._Element
    dn: libyang.DNode | None
    text: bytes
    exact: bool = False  # known: `elem` serializes (`_clean_children_xml`) to `text`


class PendingDiff:
    """libyang's diff of one change of running, computed on first use: appliers that
    translate whole trees never ask, and the netconf-config-change notification is built
    after the reply has gone out. Holds the two versions' libyang trees while they are at
    hand, and their canonical texts always: a diff asked for after the trees have moved on
    (the next edit changes running's tree in place) parses the texts instead."""

    def __init__(self, schema: YangSchema, old: libyang.DNode | None, old_text: bytes,
                 new: libyang.DNode | None, new_text: bytes) -> None:
        self.schema = schema
        self.old = old
        self.new = new
        self.old_text = old_text
        self.new_text = new_text
        self.wanted = False
        # the old tree is running's until the change is committed; only then is it ours
        self._owns_old = False
        self._done = False
        self._diff: etree._Element | None = None

    def result(self) -> etree._Element | None:
        if not self._done:
            parsed = []
            try:
                trees = []
                for dn, text in ((self.old, self.old_text), (self.new, self.new_text)):
                    if dn is None and text:
                        dn = self.schema.parse_config_xml(text)
                        parsed.append(dn)
                    trees.append(dn)
                self._diff = self.schema.diff_trees(trees[0], trees[1])
            finally:
                for dn in parsed:
                    if dn is not None:
                        dn.free()
                self._done = True
                self._free_old()
        return self._diff

    def adopt(self) -> None:
        """The change was committed: the old tree is no longer running's."""
        self._owns_old = True
        if self._done:
            self._free_old()

    def release(self) -> None:
        """`new` is about to change or to stop being running: compute the diff now if
        somebody waits for it, then let go of both trees."""
        if self.wanted and not self._done:
            try:
                self.result()
            except Exception:
                log.exception("cannot compute the diff of a running change")
        self._free_old()
        self.new = None

    def _free_old(self) -> None:
        if self._owns_old:
            if self.old is not None:
                self.old.free()
            self.old = None


class Datastores:
    """running / candidate / startup, each a `<data>` root (NETCONF base namespace) of config.

    Stored trees are never modified in place (every change builds a new tree), so an
    unmodified candidate simply shares running's tree and follows every change of running.

    All methods are synchronous; the server serialises calls. Every method that changes a
    datastore validates the complete resulting tree with libyang first and raises `RpcError`
    (leaving every datastore byte-identical) on any problem.
    """

    def __init__(
        self,
        schema: YangSchema,
        appliers: Sequence[Applier] = (),
        state_dir: Path | None = None,
    ) -> None:
        self.schema = schema
        self.appliers = list(appliers)
        self.state_dir = state_dir
        self._trees: dict[str, etree._Element] = {}
        self._candidate_modified = False
        # candidate's libyang tree when its last edit validated it: commit then needs no
        # second parse (the controller's edit → commit → confirm cycle is the hot path).
        self._cand_dn: libyang.DNode | None = None
        self._cand_text: bytes | None = None
        self._cand_valid = False  # the modified candidate passed full validation
        # datastore → (lxml tree, text) last seen to serialize alike (see `_is_exact`)
        self._exact: dict[str, tuple[etree._Element, bytes]] = {}
        # Edits change the libyang tree they start from in place (no copy of a big tree,
        # no old tree to free) unless the old tree is wanted for a diff: a subscription to
        # netconf-config-change (the server sets this). A tree consumed that way is parsed
        # again from its canonical text if it is needed later (see `_dn`).
        self.keep_diff_trees: Callable[[], bool] = lambda: False
        self._journal = (RunningJournal(state_dir / "running.xml")
                         if state_dir is not None else None)
        startup = self._load("startup")
        running = self._load("running")
        if running is None:
            running = copy.deepcopy(startup) if startup is not None else empty_data()
        self._trees["running"] = running
        self._trees["startup"] = startup if startup is not None else copy.deepcopy(running)
        # running's libyang tree and canonical text, kept so that a commit's diff and its
        # no-change test cost no parsing; and the last change of running (RFC 6470
        # netconf-config-change reads it).
        canon = self._canonical_tree(running)
        self._running_dn: libyang.DNode | None = canon.dn
        self._running_text = canon.text
        self.running_generation = 0
        self.last_change: PendingDiff | None = None
        self._trees["candidate"] = running
        if self._journal is not None:
            # start from one clean version (drops a torn record left by a kill)
            self._journal.compact(self._data_bytes(canon.text))
        if state_dir is not None and not (state_dir / "startup.xml").exists():
            self._persist("startup")

    # ---- persistence ----------------------------------------------------------------------

    def _file(self, name: str) -> Path | None:
        return self.state_dir / f"{name}.xml" if self.state_dir is not None else None

    def _load(self, name: str) -> etree._Element | None:
        path = self._file(name)
        if path is None:
            return None
        if name == "running" and self._journal is not None:
            raw = self._journal.load()
        else:
            raw = path.read_bytes() if path.exists() else None
        if raw is None:
            return None
        root = etree.fromstring(raw)
        if root.tag != DATA:
            raise ValueError(f"{path}: root element must be <data xmlns={NC_NS!r}>")
        try:
            return self._canonical(root)
        except RpcError as err:
            raise ValueError(f"{path}: stored {name} configuration is invalid: {err}") from err

    def _persist(self, name: str) -> None:
        """startup is the boot configuration: written durably. running survives a crash or
        kill of the agent (atomic rename) but is not fsynced on every commit: after a power
        loss the kernel state it describes is gone too, and start-up re-applies it."""
        if name == "running":
            if self._journal is not None:
                self._journal.write(*self._data_parts(self._running_text))
            return
        path = self._file(name)
        if path is not None:
            write_atomic(path, self.serialize(name), wipe_old=True)

    @staticmethod
    def _data_parts(text: bytes) -> tuple[bytes, bytes, bytes]:
        return b"<?xml version='1.0' encoding='utf-8'?>\n" + _DATA_OPEN, text, _DATA_CLOSE

    @classmethod
    def _data_bytes(cls, text: bytes) -> bytes:
        return b"".join(cls._data_parts(text))

    # ---- helpers -------------------------------------------------------------------------

    def _canonical(self, root: etree._Element, validate: bool = True) -> etree._Element:
        """Validate `root` and return it in libyang's canonical XML form."""
        canon = self._canonical_tree(root, validate)
        if canon.dn is not None:
            canon.dn.free()
        return canon.elem

    def _canonical_tree(self, root: etree._Element, validate: bool = True) -> Canonical:
        """The canonical XML and the libyang tree it came from (the caller frees it)."""
        tree = self.schema.parse_config(root, validate=validate)
        if tree is None:
            return Canonical(empty_data(), None, b"")
        return self._print_canonical(tree)

    @staticmethod
    def _print_canonical(tree: libyang.DNode, edited: etree._Element | None = None
                         ) -> Canonical:
        """The canonical form of a libyang tree, which the result then owns. `edited`: the
        lxml tree it was built from, kept when it already prints the same (cheaper than
        parsing the print)."""
        try:
            raw = print_xml(tree)
        except BaseException:
            tree.free()
            raise
        if not raw:
            return Canonical(empty_data(), tree, b"", exact=True)
        if edited is not None and _clean_children_xml(edited) == raw:
            return Canonical(edited, tree, raw, exact=True)
        return Canonical(etree.fromstring(_data_xml(raw)), tree, raw)

    @staticmethod
    def _check_name(name: str, allowed: Sequence[str], what: str) -> None:
        if name not in allowed:
            raise RpcError(
                "protocol", "invalid-value",
                f"{what} {name!r} is not supported here (use one of {', '.join(allowed)})",
            )

    def _as_data(self, source: str | etree._Element) -> etree._Element:
        if isinstance(source, str):
            self._check_name(source, DATASTORES, "source datastore")
            return copy.deepcopy(self._trees[source])
        data = empty_data()
        for child in source:
            if isinstance(child.tag, str):
                data.append(copy.deepcopy(child))
        for el in data.iter():
            if isinstance(el.tag, str) and f"{{{NC_NS}}}operation" in el.attrib:
                raise RpcError(
                    "protocol", "unknown-attribute",
                    "the 'operation' attribute is only allowed in edit-config",
                    info={"bad-attribute": "operation", "bad-element": el.tag.rpartition("}")[2]},
                )
        return data

    # ---- public API ------------------------------------------------------------------------

    def get_config(self, source: str) -> etree._Element:
        """A deep copy of the named datastore's `<data>` root."""
        self._check_name(source, DATASTORES, "source datastore")
        return copy.deepcopy(self._trees[source])

    def running_tree(self) -> etree._Element:
        """running's `<data>` root itself, not a copy: stored trees are never modified in
        place (every change builds a new tree), so a reader that does not modify it may
        keep it (the confirmed-commit snapshot)."""
        return self._trees["running"]

    def config_bytes(self, source: str) -> bytes | None:
        """The named datastore's `<data>` root as canonical XML, when it is at hand without
        copying or serializing the tree (running; a validated candidate), else None."""
        self._check_name(source, DATASTORES, "source datastore")
        if source == "startup":
            return None
        text = self._current_text(source)
        if text is None:
            return None
        return _data_xml(text)

    def get_state(self, selects: Callable[[str], bool] | None = None) -> etree._Element:
        """running merged with the appliers' operational state (`<get>`). `selects`: the
        top-level nodes (by tag) a filter can select, None for all; the others are left
        out instead of being copied and merged only to be filtered away (a monitoring
        client polling the state of thousands of policies must not copy their whole
        configuration every time)."""
        running = self._trees["running"]
        data = empty_data()
        for child in running:
            if isinstance(child.tag, str) and (selects is None or selects(child.tag)):
                data.append(copy.deepcopy(child))
        index: _ListIndex = {}
        for ap in self.appliers:
            for el in ap.state(running):
                if selects is None or (isinstance(el.tag, str) and selects(el.tag)):
                    _merge(self.schema, data, el, None, index)
        return data

    def edit_config(
        self,
        target: str,
        config: etree._Element,
        default_operation: str = "merge",
        test_option: str = "test-then-set",
        error_option: str = "stop-on-error",
        consume: bool = False,
    ) -> list[RpcError]:
        """Apply `<config>` (the element itself; its children are top-level data nodes);
        `consume`: the caller discards `config` afterwards (see `apply_edit`).

        Returns the errors skipped under continue-on-error (the reply must still report them).
        """
        self._check_name(target, ("running", "candidate"), "edit-config target")
        if test_option not in TEST_OPTIONS:
            raise RpcError("protocol", "invalid-value", f"bad test-option {test_option!r}",
                           path="/rpc/edit-config/test-option")
        if error_option not in ERROR_OPTIONS:
            raise RpcError("protocol", "invalid-value", f"bad error-option {error_option!r}",
                           path="/rpc/edit-config/error-option")
        new = copy.deepcopy(self._trees[target])
        result = apply_edit(
            self.schema, new, config, default_operation,
            continue_on_error=error_option == "continue-on-error", consume=consume,
        )
        # A running datastore is never left invalid: the kernel appliers rely on it.
        validate = test_option != "set" or target == "running"
        canon = None
        if validate and mirrorable(result):
            shares = self._trees[target] is self._trees["running"]
            in_place = test_option != "test-only" and not self.keep_diff_trees()
            base = self._take_base("running" if shares else "candidate", in_place)
            built = rebuild(self.schema.ctx, base, new, result, in_place=in_place)
            if built is not None and built.verbatim and self._is_exact(target):
                # only leaf values changed, to their canonical texts: the edited tree
                # prints as libyang's would (cheaper than libyang's print and a compare)
                canon = Canonical(new, built.dn, _clean_children_xml(new), exact=True)
            elif built is not None:
                canon = self._print_canonical(built.dn, edited=new)
        if canon is None and target == "running" and test_option != "test-only" \
                and self._speculative_commit(new):
            return result.errors
        if canon is None:
            canon = self._canonical_tree(new, validate=validate)
        if test_option == "test-only":
            if canon.dn is not None:
                canon.dn.free()
            return result.errors
        if target == "running":
            self._commit_running(canon)
            return result.errors
        if not validate and canon.dn is not None:
            canon.dn.free()
            canon.dn = None
        self._set_candidate(canon, validated=validate)
        return result.errors

    def _is_exact(self, name: str) -> bool:
        """Does the named datastore's lxml tree serialize to its canonical text, as far as
        we know? (The tree and the text are never changed in place: identity says they are
        still the pair that was checked.)"""
        tree, text = self._trees[name], self._current_text(name)
        return any(t is tree and x is text for t, x in self._exact.values())

    def _note_exact(self, name: str, canon: Canonical) -> None:
        if canon.exact:
            self._exact[name] = (canon.elem, canon.text)
        else:
            self._exact.pop(name, None)

    def _current_text(self, name: str) -> bytes | None:
        if name == "running" or self._trees["candidate"] is self._trees["running"]:
            return self._running_text
        return self._cand_text

    def _dn(self, name: str) -> libyang.DNode | None:
        """The validated libyang tree of running, or of a validated modified candidate
        (None: empty, or a candidate that was not validated), parsed again from its
        canonical text when an in-place edit consumed it."""
        if name == "running":
            if self._running_dn is None and self._running_text:
                self._running_dn = self.schema.parse_config_xml(self._running_text)
            return self._running_dn
        if self._cand_dn is None and self._cand_valid and self._cand_text:
            self._cand_dn = self.schema.parse_config_xml(self._cand_text)
        return self._cand_dn

    def _take_base(self, name: str, consume: bool) -> libyang.DNode | None:
        """The tree an edit of `name` starts from; `consume`: it is the edit's from now on
        (running's last change lets go of it first)."""
        if name == "candidate" and not self._cand_valid:
            return None
        base = self._dn(name)
        if consume and base is not None:
            if name == "running":
                if self.last_change is not None:
                    self.last_change.release()
                self._running_dn = None
            else:
                self._cand_dn = None
        return base

    def _give_back(self, dn: libyang.DNode | None, name: str) -> None:
        """`dn` turned out to be the same configuration as `name`'s (an edit that changed
        nothing): it becomes that datastore's tree again if an edit had consumed it."""
        if dn is None:
            return
        if name == "running" and self._running_dn is None:
            self._running_dn = dn
        elif name == "candidate" and self._cand_valid and self._cand_dn is None:
            self._cand_dn = dn
        else:
            dn.free()

    def _set_candidate(self, canon: Canonical, validated: bool = True) -> None:
        """Make `canon` the candidate; its `dn` (if any) is its validated libyang tree,
        owned from here."""
        old_text = self._current_text("candidate")
        same = (canon.text == old_text if old_text is not None
                else etree.tostring(canon.elem) == etree.tostring(self._trees["candidate"]))
        if same:
            shares = self._trees["candidate"] is self._trees["running"]
            self._give_back(canon.dn, "running" if shares else "candidate")
            return
        self._drop_candidate_tree()
        self._trees["candidate"] = canon.elem
        self._cand_dn = canon.dn
        self._cand_text = canon.text
        self._cand_valid = validated
        self._note_exact("candidate", canon)
        self._candidate_modified = True

    def _drop_candidate_tree(self) -> None:
        self._exact.pop("candidate", None)
        if self._cand_dn is not None:
            self._cand_dn.free()
            self._cand_dn = None
        self._cand_text = None
        self._cand_valid = False

    def _set(self, target: str, new: Canonical) -> None:
        """`new` is canonical; for running/candidate its `dn` is handed over."""
        if target == "running":
            self._commit_running(new)
        elif target == "candidate":
            self._set_candidate(new)
        elif target == "startup":
            if new.dn is not None:
                new.dn.free()
                new.dn = None
            old = self._trees["startup"]
            self._trees["startup"] = new.elem
            try:
                self._persist("startup")
            except OSError as exc:
                self._trees["startup"] = old
                raise RpcError("application", "operation-failed",
                               f"cannot write startup: {exc}") from exc

    def _speculative_commit(self, new: etree._Element) -> bool:
        """A big tree parsed in full: let libyang parse, validate and print it in a worker
        thread (its C code runs without the GIL) while the appliers validate and prepare
        the change on the edited tree (both are free of side effects). When libyang's
        canonical print equals the tree as edited, which is the rule for configuration
        written by a controller, the appliers' work stands and the canonical tree needs no
        re-parse; otherwise the commit is redone from the canonical tree. Errors are
        reported as in the sequential order: libyang's first, then the appliers'.
        False: not worth it (small tree, no appliers); nothing was done."""
        if not self.appliers:
            return False
        xml = _clean_children_xml(new)
        if len(xml) < SPECULATE_BYTES:
            return False
        box: dict[str, object] = {}

        def parse() -> None:
            try:
                dn = self.schema.parse_config_xml(xml)
                box["dn"] = dn
                box["text"] = print_xml(dn) if dn is not None else b""
            except BaseException as exc:  # handed to the committing thread
                box["error"] = exc

        worker = threading.Thread(target=parse, name="libyang-validate", daemon=True)
        worker.start()

        def differ(_o: etree._Element, _n: etree._Element) -> etree._Element | None:
            worker.join()
            if "error" in box:
                raise box["error"]  # type: ignore[misc]
            return self.schema.diff_trees(self._dn("running"), box["dn"])  # type: ignore[arg-type]

        spec = ConfigChange(old=self._trees["running"], new=new, differ=differ)
        spec_error: BaseException | None = None
        try:
            for ap in self.appliers:
                ap.validate(spec)
            for ap in self.appliers:
                ap.prepare(spec)
        except Exception as exc:
            spec_error = exc
        finally:
            worker.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        dn: libyang.DNode | None = box["dn"]  # type: ignore[assignment]
        text: bytes = box["text"]  # type: ignore[assignment]
        if text != xml:
            canon = Canonical(etree.fromstring(_data_xml(text)), dn, text)
            self._commit_running(canon)
            return True
        if spec_error is not None:
            if dn is not None:
                dn.free()
            if isinstance(spec_error, RpcError):
                raise spec_error
            log.error("commit failed", exc_info=spec_error)
            raise RpcError("application", "operation-failed",
                           f"commit failed: {spec_error}") from spec_error
        self._commit_running(Canonical(new, dn, text), prepared=spec)
        return True

    def _commit_running(self, canon: Canonical, prepared: ConfigChange | None = None) -> None:
        """Make `canon` (canonical, validated) running through the appliers. This method
        owns its libyang tree from here on. `prepared`: the appliers have validated and
        prepared this change already."""
        old = self._trees["running"]
        new, new_dn = canon.elem, canon.dn
        if canon.text == self._running_text:  # nothing changes: no transaction, no event
            self._give_back(new_dn, "running")
            return
        if self.last_change is not None:
            self.last_change.release()
        pending = PendingDiff(self.schema, self._running_dn, self._running_text, new_dn,
                              canon.text)
        change = prepared if prepared is not None else ConfigChange(
            old=old, new=new, differ=lambda _o, _n: pending.result())
        old_text = self._running_text
        done: list[Applier] = []
        try:
            if prepared is None:
                for ap in self.appliers:
                    ap.validate(change)
                for ap in self.appliers:
                    ap.prepare(change)
            for ap in self.appliers:
                ap.apply(change)
                done.append(ap)
            self._trees["running"] = new
            self._running_text = canon.text
            self._note_exact("running", canon)
            self._persist("running")
            if not self._candidate_modified:
                self._trees["candidate"] = new
        except BaseException as exc:
            self._trees["running"] = old
            self._running_text = old_text
            if new_dn is not None:
                new_dn.free()
            for ap in reversed(done):
                try:
                    ap.abort(change)
                except Exception:
                    log.exception("applier %s failed to undo a change", ap.name)
            if isinstance(exc, RpcError):
                raise
            if isinstance(exc, OSError):
                raise RpcError("application", "operation-failed",
                               f"cannot persist running: {exc}") from exc
            log.exception("commit failed")
            raise RpcError("application", "operation-failed", f"commit failed: {exc}") from exc
        pending.adopt()
        self.last_change = pending
        self._running_dn = new_dn
        self.running_generation += 1
        log.info("running configuration changed (%d appliers)", len(self.appliers))

    def copy_config(self, target: str, source: str | etree._Element) -> None:
        """`source` is a datastore name or an inline `<config>` (or `<data>`) element."""
        self._check_name(target, DATASTORES, "copy-config target")
        if isinstance(source, str) and source == target:
            raise RpcError("protocol", "invalid-value", "source and target are the same")
        self._set(target, self._canonical_tree(self._as_data(source)))

    def delete_config(self, target: str) -> None:
        if target == "running":
            raise RpcError("protocol", "operation-not-supported",
                           "the running datastore cannot be deleted")
        self._check_name(target, ("startup",), "delete-config target")
        self._set("startup", Canonical(empty_data(), None, b""))

    def validate(self, source: str | etree._Element) -> None:
        if source == "running" or (source == "candidate" and (
                self._cand_valid or self._trees["candidate"] is self._trees["running"])):
            return  # validated completely when it was last changed
        self._canonical(self._as_data(source))

    def commit(self) -> None:
        """candidate → running through the appliers (all-or-nothing)."""
        cand = self._trees["candidate"]
        if not self._candidate_modified or cand is self._trees["running"]:
            return  # candidate mirrors running: nothing to do (e.g. a confirming commit)
        if self._cand_valid:
            assert self._cand_text is not None
            canon = Canonical(cand, self._take_base("candidate", True), self._cand_text,
                              exact=self._is_exact("candidate"))
        else:
            canon = self._canonical_tree(cand)
        self._commit_running(canon)
        self._trees["candidate"] = self._trees["running"]
        self._candidate_modified = False
        self._drop_candidate_tree()

    def discard_changes(self) -> None:
        self._drop_candidate_tree()
        self._trees["candidate"] = self._trees["running"]
        self._candidate_modified = False

    def restore_running(self, snapshot: etree._Element) -> None:
        """Put back a previous running tree (confirmed-commit rollback); resets candidate."""
        self._commit_running(self._canonical_tree(copy.deepcopy(snapshot)))
        self.discard_changes()

    @property
    def last_running_diff(self) -> etree._Element | None:
        """libyang's diff of the last change of running (computed on first use)."""
        return self.last_change.result() if self.last_change is not None else None

    @property
    def candidate_modified(self) -> bool:
        return self._candidate_modified

    def serialize(self, name: str) -> bytes:
        """Canonical bytes of a datastore (tests compare these before/after failures)."""
        self._check_name(name, DATASTORES, "datastore")
        return etree.tostring(self._trees[name], xml_declaration=True, encoding="utf-8")

    def close(self) -> None:
        """Release the journal's file descriptor (the agent is stopping)."""
        if self._journal is not None:
            self._journal.close()

    def reconcile(self) -> None:
        """Start-up: make every backend match running."""
        for ap in self.appliers:
            ap.reconcile(self._trees["running"])


_DATA_OPEN = b'<data xmlns="' + NC_NS.encode() + b'">'
_DATA_CLOSE = b"</data>"


def _data_xml(text: bytes) -> bytes:
    """Printed top-level data nodes under a `<data>` root."""
    return _DATA_OPEN + text + _DATA_CLOSE


SPECULATE_BYTES = 256 << 10  # below this, a worker thread costs more than it overlaps
_NC_DECL = re.compile(rb'\s+xmlns:[\w.-]+="' + re.escape(NC_NS.encode()) + rb'"')


def _clean_children_xml(root: etree._Element) -> bytes:
    """The children of a `<data>` root serialized as libyang prints them: lxml repeats the
    declaration of the NETCONF namespace (in scope from `<data>`/`<config>`) on each of
    them, which only their start tags can carry."""
    parts = []
    for c in root:
        raw = etree.tostring(c)
        end = raw.find(b">")
        parts.append(_NC_DECL.sub(b"", raw[:end]) + raw[end:])
    return b"".join(parts)


def merge_tree(schema: YangSchema, data: etree._Element, elem: etree._Element) -> None:
    """Merge `elem` (a top-level node, typically state data) into the `<data>` root."""
    _merge(schema, data, elem, None, {})


def _list_key(el: etree._Element, sn) -> tuple[str, ...]:
    return tuple((el.findtext(kt) or "").strip() for kt in sn.key_tags)


# list entries by key, per (parent element, list tag)
_ListIndex = dict[tuple[etree._Element, str], dict[tuple[str, ...], etree._Element]]


def _merge(schema: YangSchema, parent: etree._Element, elem: etree._Element, psn,
           index: _ListIndex) -> None:
    """`index` is built on first use per list, so that merging the state of n entries
    into n configured ones is O(n), not O(n²)."""
    sn = schema.lookup(psn, elem.tag) if isinstance(elem.tag, str) else None
    if sn is None:
        parent.append(copy.deepcopy(elem))
        return
    existing = None
    entries = None
    if sn.kind == "container":
        existing = parent.find(sn.tag)
    elif sn.kind == "list":
        entries = index.get((parent, sn.tag))
        if entries is None:
            entries = index[(parent, sn.tag)] = {}
            for cand in parent.iterchildren(sn.tag):
                entries.setdefault(_list_key(cand, sn), cand)
        existing = entries.get(_list_key(elem, sn))
    if existing is None:
        new = copy.deepcopy(elem)
        parent.append(new)
        if entries is not None:
            entries.setdefault(_list_key(new, sn), new)
        return
    for child in elem:
        if isinstance(child.tag, str):
            if sn.kind == "list" and child.tag in sn.key_tags:
                continue
            _merge(schema, existing, child, sn, index)
