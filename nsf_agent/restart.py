"""How the agent tells its controller that it restarted and which SAs lost data-plane state
(i2nsf-sadb nsf-status / nsf-restarted; the contract is in docs/restart-safety.md).

A boot record in the state directory says whether the previous run stopped cleanly: it is
written `clean: false` at start (fsync'd) and `clean: true` by a clean stop. Appliers report
the SAs they could not restore intact (`rekey_required()` → {sa name: (reason, suspended)});
`StatusApplier` serves the union as operational state, and the agent sends it as a
notification once its appliers reconciled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from lxml import etree

from netconf_core.applier import Notify, StateOnlyApplier
from netconf_core.datastore import write_atomic
from nsf_agent import sadb

log = logging.getLogger(__name__)

BOOT_FILE = "boot.json"
Q = sadb.Q

# reason → is it about an outbound SA whose counter was lost (then it is not used to send)
REASONS = ("sequence-resumed", "sequence-unknown", "replay-state-lost", "not-kept")


class Reporter(Protocol):
    def rekey_required(self) -> dict[str, tuple[str, bool]]: ...


@dataclass
class BootInfo:
    boot_id: str
    previous_boot_id: str | None
    previous_stop: str  # first-start | clean | unclean
    started: dt.datetime


class BootRecord:
    """The boot record of one state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / BOOT_FILE
        prev: dict[str, object] | None = None
        try:
            prev = json.loads(self.path.read_text())
        except FileNotFoundError:
            prev = None
        except (OSError, ValueError) as e:
            log.warning("boot record %s unreadable (%s): previous stop taken as unclean",
                        self.path, e)
            prev = {}
        if prev is None:
            stop, prev_id = "first-start", None
        else:
            stop = "clean" if prev.get("clean") is True else "unclean"
            prev_id = str(prev["boot_id"]) if prev.get("boot_id") else None
        self.info = BootInfo(str(uuid.uuid4()), prev_id, stop,
                             dt.datetime.now(dt.UTC).replace(microsecond=0))
        self._write(clean=False)
        if stop == "unclean":
            log.warning("the previous run (%s) did not stop cleanly", prev_id or "?")

    def _write(self, clean: bool) -> None:
        write_atomic(self.path, json.dumps({
            "boot_id": self.info.boot_id, "clean": clean,
            "started": self.info.started.isoformat()}).encode())

    def clean_stop(self) -> None:
        self._write(clean=True)


def _boot_leaves(parent: etree._Element, info: BootInfo) -> None:
    etree.SubElement(parent, Q + "boot-id").text = info.boot_id
    if info.previous_boot_id:
        etree.SubElement(parent, Q + "previous-boot-id").text = info.previous_boot_id
    etree.SubElement(parent, Q + "previous-stop").text = info.previous_stop


def _sa_list(parent: etree._Element, sas: dict[str, tuple[str, bool]]) -> None:
    for name in sorted(sas):
        reason, suspended = sas[name]
        e = etree.SubElement(parent, Q + "sa-rekey-required")
        etree.SubElement(e, Q + "ipsec-sa-name").text = name
        etree.SubElement(e, Q + "reason").text = reason
        etree.SubElement(e, Q + "sending-suspended").text = "true" if suspended else "false"


class StatusApplier(StateOnlyApplier):
    """Serves /i2nsf-sadb:nsf-status; takes no configuration (every change is fine)."""

    name = "nsf-status"

    def __init__(self, boot: BootRecord, reporters: list[object]) -> None:
        self.boot = boot
        self.reporters = [r for r in reporters if callable(getattr(r, "rekey_required", None))]
        self.notify: Notify | None = None
        for r in self.reporters:
            if hasattr(r, "on_state_lost"):
                r.on_state_lost = self.state_lost  # type: ignore[attr-defined]

    def state_lost(self) -> None:
        """An applier's data path lost SA state while the agent runs (it died and was
        started again): tell subscribed controllers at once (previous-stop unclean)."""
        self.boot.info.previous_stop = "unclean"
        if self.notify is not None:
            n = self.notification()
            self.notify(n)

    def rekey_required(self) -> dict[str, tuple[str, bool]]:
        out: dict[str, tuple[str, bool]] = {}
        for r in self.reporters:
            out.update(r.rekey_required())  # type: ignore[attr-defined]
        return out

    def notification(self) -> etree._Element:
        n = etree.Element(Q + "nsf-restarted", nsmap={None: sadb.NS})
        _boot_leaves(n, self.boot.info)
        _sa_list(n, self.rekey_required())
        return n

    # Applier protocol (no configuration of its own)
    def bind(self, notify: Notify) -> None:
        self.notify = notify

    def state(self, running: etree._Element) -> list[etree._Element]:
        root = etree.Element(Q + "nsf-status", nsmap={None: sadb.NS})
        _boot_leaves(root, self.boot.info)
        etree.SubElement(root, Q + "started").text = \
            self.boot.info.started.strftime("%Y-%m-%dT%H:%M:%SZ")
        _sa_list(root, self.rekey_required())
        return [root]

    def close(self) -> None:
        return None
