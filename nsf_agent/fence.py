"""The controller fence (#21, yang/i2nsf-controller-fence): refuse a commit that would lower
the controller epoch this NSF holds, so that an old active controller that was paused or
partitioned cannot push stale SAs after a standby took over (a newer epoch). Takes part in
every commit like an applier and refuses in `validate`, before anything changes."""

from __future__ import annotations

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError

NS = "urn:i2nsf-sdn:yang:i2nsf-controller-fence"
_EPOCH = f"{{{NS}}}controller-fence/{{{NS}}}epoch"
PATH = "/i2nsf-controller-fence:controller-fence/epoch"


def epoch_of(data: etree._Element) -> int | None:
    el = data.find(_EPOCH)
    return None if el is None or not (el.text or "").strip() else int(el.text.strip())


class FenceGuard:
    """The epoch may grow or stay; never drop or disappear."""

    name = "controller-fence"

    def bind(self, notify: Notify) -> None:
        return None

    def reconcile(self, running: etree._Element) -> None:
        return None

    def validate(self, change: ConfigChange) -> None:
        old, new = epoch_of(change.old), epoch_of(change.new)
        if old is None or (new is not None and new >= old):
            return
        if new is None:
            msg = (f"this NSF is fenced at controller epoch {old}; removing the fence would "
                   "let a stale controller in: refused")
        else:
            msg = (f"the change carries controller epoch {new}, but this NSF already "
                   f"accepted epoch {old} from a newer active controller: refused, nothing "
                   "changed (is the sender a controller instance that lost its lease?)")
        raise RpcError("application", "operation-failed", msg, path=PATH,
                       app_tag="stale-controller-epoch", info={"bad-element": "epoch"})

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
