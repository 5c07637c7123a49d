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
from collections.abc import Sequence
from pathlib import Path

import libyang
from lxml import etree

from netconf_core.applier import Applier, ConfigChange
from netconf_core.edit import apply_edit
from netconf_core.errors import NC_NS, RpcError
from netconf_core.schema import YangSchema

log = logging.getLogger(__name__)

DATA = f"{{{NC_NS}}}data"
CONFIG = f"{{{NC_NS}}}config"
DATASTORES = ("running", "candidate", "startup")
TEST_OPTIONS = ("test-then-set", "set", "test-only")
ERROR_OPTIONS = ("stop-on-error", "rollback-on-error", "continue-on-error")


def empty_data() -> etree._Element:
    return etree.Element(DATA, nsmap={None: NC_NS})


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file and rename it over `path`: whenever the process dies the
    file is the old or the new content. `durable` also fsyncs the file and the directory,
    so that the same holds after a power failure. Callers serialise writes to one path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


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
        startup = self._load("startup")
        running = self._load("running")
        if running is None:
            running = copy.deepcopy(startup) if startup is not None else empty_data()
        self._trees["running"] = running
        self._trees["startup"] = startup if startup is not None else copy.deepcopy(running)
        # running's libyang tree, kept so that a commit's diff costs no parsing; and what
        # the last change of running was (RFC 6470 netconf-config-change reads it).
        self._running_dn: libyang.DNode | None = self.schema.parse_config(running)
        self.running_generation = 0
        self.last_running_diff: etree._Element | None = None
        self._trees["candidate"] = running
        if state_dir is not None and not (state_dir / "startup.xml").exists():
            self._persist("startup")

    # ---- persistence ----------------------------------------------------------------------

    def _file(self, name: str) -> Path | None:
        return self.state_dir / f"{name}.xml" if self.state_dir is not None else None

    def _load(self, name: str) -> etree._Element | None:
        path = self._file(name)
        if path is None or not path.exists():
            return None
        root = etree.fromstring(path.read_bytes())
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
        path = self._file(name)
        if path is not None:
            write_atomic(path, self.serialize(name), durable=name != "running")

    # ---- helpers -------------------------------------------------------------------------

    def _canonical(self, root: etree._Element, validate: bool = True) -> etree._Element:
        """Validate `root` and return it in libyang's canonical XML form."""
        out, tree = self._canonical_tree(root, validate)
        if tree is not None:
            tree.free()
        return out

    def _canonical_tree(
        self, root: etree._Element, validate: bool = True
    ) -> tuple[etree._Element, libyang.DNode | None]:
        """The canonical XML and the libyang tree it came from (the caller frees it)."""
        tree = self.schema.parse_config(root, validate=validate)
        if tree is None:
            return empty_data(), None
        try:
            text = tree.print_mem("xml", with_siblings=True, pretty=False)
        except BaseException:
            tree.free()
            raise
        if not text:
            return empty_data(), tree
        return etree.fromstring(f'<data xmlns="{NC_NS}">{text}</data>'.encode()), tree

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

    def get_state(self) -> etree._Element:
        """running merged with the appliers' operational state (`<get>`)."""
        data = copy.deepcopy(self._trees["running"])
        for ap in self.appliers:
            for el in ap.state(self._trees["running"]):
                merge_tree(self.schema, data, el)
        return data

    def edit_config(
        self,
        target: str,
        config: etree._Element,
        default_operation: str = "merge",
        test_option: str = "test-then-set",
        error_option: str = "stop-on-error",
    ) -> list[RpcError]:
        """Apply `<config>` (the element itself; its children are top-level data nodes).

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
            continue_on_error=error_option == "continue-on-error",
        )
        # A running datastore is never left invalid: the kernel appliers rely on it.
        validate = test_option != "set" or target == "running"
        if target == "running":
            canonical, dn = self._canonical_tree(new, validate=validate)
            if test_option == "test-only":
                if dn is not None:
                    dn.free()
                return result.errors
            self._commit_running(canonical, dn)
            return result.errors
        canonical, dn = self._canonical_tree(new, validate=validate)
        if test_option == "test-only" or not validate:
            if dn is not None:
                dn.free()
            dn = None
            if test_option == "test-only":
                return result.errors
        self._set_candidate(canonical, dn)
        return result.errors

    def _set_candidate(self, new: etree._Element, dn: libyang.DNode | None) -> None:
        """Make `new` the candidate; `dn` is its validated libyang tree (owned from here)."""
        if etree.tostring(new) == etree.tostring(self._trees["candidate"]):
            if dn is not None:
                dn.free()
            return
        self._drop_candidate_tree()
        self._trees["candidate"] = new
        self._cand_dn = dn
        self._candidate_modified = True

    def _drop_candidate_tree(self) -> None:
        if self._cand_dn is not None:
            self._cand_dn.free()
            self._cand_dn = None

    def _set(self, target: str, new: etree._Element) -> None:
        if target == "running":
            self._commit_running(new)
        elif target == "candidate":
            self._set_candidate(new, None)
        elif target == "startup":
            old = self._trees["startup"]
            self._trees["startup"] = new
            try:
                self._persist("startup")
            except OSError as exc:
                self._trees["startup"] = old
                raise RpcError("application", "operation-failed",
                               f"cannot write startup: {exc}") from exc

    def _commit_running(self, new: etree._Element, new_dn: libyang.DNode | None = None,
                        ) -> None:
        """Make `new` (canonical) running through the appliers. `new_dn` is its libyang tree
        if the caller has it; this method owns it from here on."""
        old = self._trees["running"]
        if new_dn is None:
            new_dn = self.schema.parse_config(new, validate=False)
        try:
            diff = self.schema.diff_trees(self._running_dn, new_dn)
        except BaseException:
            if new_dn is not None:
                new_dn.free()
            raise
        if diff is None:  # nothing changes: no transaction, no notification
            if new_dn is not None:
                new_dn.free()
            return
        change = ConfigChange(old=old, new=new, differ=lambda _o, _n: diff)
        done: list[Applier] = []
        try:
            for ap in self.appliers:
                ap.validate(change)
            for ap in self.appliers:
                ap.prepare(change)
            for ap in self.appliers:
                ap.apply(change)
                done.append(ap)
            self._trees["running"] = new
            self._persist("running")
            if not self._candidate_modified:
                self._trees["candidate"] = new
        except BaseException as exc:
            self._trees["running"] = old
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
        if self._running_dn is not None:
            self._running_dn.free()
        self._running_dn = new_dn
        self.running_generation += 1
        self.last_running_diff = diff
        log.info("running configuration changed (%d appliers)", len(self.appliers))

    def copy_config(self, target: str, source: str | etree._Element) -> None:
        """`source` is a datastore name or an inline `<config>` (or `<data>`) element."""
        self._check_name(target, DATASTORES, "copy-config target")
        if isinstance(source, str) and source == target:
            raise RpcError("protocol", "invalid-value", "source and target are the same")
        new = self._canonical(self._as_data(source))
        self._set(target, new)

    def delete_config(self, target: str) -> None:
        if target == "running":
            raise RpcError("protocol", "operation-not-supported",
                           "the running datastore cannot be deleted")
        self._check_name(target, ("startup",), "delete-config target")
        self._set("startup", empty_data())

    def validate(self, source: str | etree._Element) -> None:
        self._canonical(self._as_data(source))

    def commit(self) -> None:
        """candidate → running through the appliers (all-or-nothing)."""
        cand = self._trees["candidate"]
        if not self._candidate_modified or cand is self._trees["running"]:
            return  # candidate mirrors running: nothing to do (e.g. a confirming commit)
        dn, self._cand_dn = self._cand_dn, None
        if dn is None:
            cand, dn = self._canonical_tree(cand)
        self._commit_running(cand, dn)
        self._trees["candidate"] = self._trees["running"]
        self._candidate_modified = False

    def discard_changes(self) -> None:
        self._drop_candidate_tree()
        self._trees["candidate"] = self._trees["running"]
        self._candidate_modified = False

    def restore_running(self, snapshot: etree._Element) -> None:
        """Put back a previous running tree (confirmed-commit rollback); resets candidate."""
        self._commit_running(self._canonical(copy.deepcopy(snapshot)))
        self.discard_changes()

    @property
    def candidate_modified(self) -> bool:
        return self._candidate_modified

    def serialize(self, name: str) -> bytes:
        """Canonical bytes of a datastore (tests compare these before/after failures)."""
        self._check_name(name, DATASTORES, "datastore")
        return etree.tostring(self._trees[name], xml_declaration=True, encoding="utf-8")

    def reconcile(self) -> None:
        """Start-up: make every backend match running."""
        for ap in self.appliers:
            ap.reconcile(self._trees["running"])


def merge_tree(schema: YangSchema, data: etree._Element, elem: etree._Element) -> None:
    """Merge `elem` (a top-level node, typically state data) into the `<data>` root."""
    _merge(schema, data, elem, None)


def _merge(schema: YangSchema, parent: etree._Element, elem: etree._Element, psn) -> None:
    sn = schema.lookup(psn, elem.tag) if isinstance(elem.tag, str) else None
    if sn is None:
        parent.append(copy.deepcopy(elem))
        return
    existing = None
    if sn.kind == "container":
        existing = parent.find(sn.tag)
    elif sn.kind == "list":
        want = [(elem.findtext(f"{{{sn.namespace}}}{k}") or "").strip() for k in sn.keys]
        for cand in parent.iterchildren(sn.tag):
            got = [(cand.findtext(f"{{{sn.namespace}}}{k}") or "").strip() for k in sn.keys]
            if got == want:
                existing = cand
                break
    if existing is None:
        parent.append(copy.deepcopy(elem))
        return
    for child in elem:
        if isinstance(child.tag, str):
            if sn.kind == "list" and child.tag in {f"{{{sn.namespace}}}{k}" for k in sn.keys}:
                continue
            _merge(schema, existing, child, sn)
