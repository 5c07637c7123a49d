"""The interface between committed configuration and a backend (kernel XFRM, userspace ESP,
strongSwan, SFC tables).

A commit into `running` is a two-phase transaction across all appliers: every applier first
`validate`s and `prepare`s the change (nothing visible yet), then each `apply`s it. If any
step fails, the appliers already applied are asked to `abort` (undo) in reverse order, the
commit fails with the applier's `RpcError`, and `running` keeps its old content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from lxml import etree

# An applier calls this to emit a notification (an element of a YANG notification, e.g.
# <sadb-expire xmlns="urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless">...</sadb-expire>).
# The server validates it against the schema, stamps eventTime and delivers it to subscribers.
Notify = Callable[[etree._Element], None]


@dataclass
class ConfigChange:
    """What a commit changes. `old` and `new` are `<data>` roots holding full config trees
    (lxml, NETCONF base namespace). `diff` is libyang's diff of the two as XML with
    `yang:operation` annotations (None when there is no difference), computed on first use
    because appliers that translate whole trees do not need it."""

    old: etree._Element
    new: etree._Element
    differ: Callable[[etree._Element, etree._Element], etree._Element | None] | None = None
    # Free space for appliers to keep per-transaction state between prepare/apply/abort.
    scratch: dict[str, object] = field(default_factory=dict)
    _diff: etree._Element | None = field(default=None, init=False, repr=False)
    _diff_done: bool = field(default=False, init=False, repr=False)

    @property
    def diff(self) -> etree._Element | None:
        if not self._diff_done:
            self._diff = self.differ(self.old, self.new) if self.differ else None
            self._diff_done = True
        return self._diff


@runtime_checkable
class Applier(Protocol):
    name: str

    def bind(self, notify: Notify) -> None:
        """Called once when the server starts, before `reconcile`."""

    def reconcile(self, running: etree._Element) -> None:
        """Make the backend match `running` at start-up (the agent may have been restarted
        while the backend kept or lost state)."""

    def validate(self, change: ConfigChange) -> None:
        """Reject a change the backend cannot carry out (raise RpcError). No side effects."""

    def prepare(self, change: ConfigChange) -> None:
        """Compute and stage the backend operations. No visible side effects."""

    def apply(self, change: ConfigChange) -> None:
        """Carry out the staged operations, all or nothing: on failure undo what was done
        and raise RpcError."""

    def abort(self, change: ConfigChange) -> None:
        """Undo an `apply` that succeeded (another applier failed after it)."""

    def state(self, running: etree._Element) -> list[etree._Element]:
        """Operational state (config false nodes) as top-level elements of their modules,
        merged by the server into `get` replies."""

    def close(self) -> None:
        """Release backend resources at shutdown."""


class StateOnlyApplier:
    """Base of appliers that only contribute operational state to `get` and take no part
    in commits (subclasses set `name` and override `state`)."""

    name = "state"

    def bind(self, notify: Notify) -> None:
        return None

    def reconcile(self, running: etree._Element) -> None:
        return None

    def validate(self, change: ConfigChange) -> None:
        return None

    def prepare(self, change: ConfigChange) -> None:
        return None

    def apply(self, change: ConfigChange) -> None:
        return None

    def abort(self, change: ConfigChange) -> None:
        return None

    def state(self, running: etree._Element) -> list[etree._Element]:
        return []

    def close(self) -> None:
        return None


class NullApplier:
    """Accepts everything (agents that only store configuration). Remembers the last
    `keep` changes it was asked to apply or abort, for tests to look at; agents keep none:
    each holds two whole configurations, and an agent runs for months. `fail_next` makes
    the next apply fail, to test rollback."""

    name = "null"

    def __init__(self, keep: int = 8) -> None:
        self.notify: Notify | None = None
        self.keep = keep
        self.applied: list[ConfigChange] = []
        self.aborted: list[ConfigChange] = []
        self.reconciled: list[etree._Element] = []
        self.fail_next: str | None = None
        self.state_elements: list[etree._Element] = []

    def _remember(self, seen: list, item: object) -> None:  # type: ignore[type-arg]
        seen.append(item)
        if len(seen) > self.keep:
            del seen[:len(seen) - self.keep]

    def bind(self, notify: Notify) -> None:
        self.notify = notify

    def reconcile(self, running: etree._Element) -> None:
        self._remember(self.reconciled, running)

    def validate(self, change: ConfigChange) -> None:
        return None

    def prepare(self, change: ConfigChange) -> None:
        return None

    def apply(self, change: ConfigChange) -> None:
        if self.fail_next is not None:
            from netconf_core.errors import operation_failed

            msg, self.fail_next = self.fail_next, None
            raise operation_failed(msg)
        self._remember(self.applied, change)

    def abort(self, change: ConfigChange) -> None:
        self._remember(self.aborted, change)

    def state(self, running: etree._Element) -> list[etree._Element]:
        return list(self.state_elements)

    def close(self) -> None:
        return None
