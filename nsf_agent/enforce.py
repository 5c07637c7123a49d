"""Refuse configuration no applier of this agent enforces (issue 13.4): an NSF that accepts
SAs it cannot install, or IKE connections without an IKE daemon, tells its controller
"done" while nothing protects the traffic.

`EnforcementGuard` takes part in every commit like an applier and refuses, in `validate`
(before anything changes), IKE-less SAD/SPD entries when no applier drives a data path
(`null` only) and IKE configuration when the `ike` applier is not running.
"""

from __future__ import annotations

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.errors import RpcError

IKE_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ike"
IKELESS_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"

# namespace -> applier names that enforce it (an applier may also list namespaces itself,
# in an `enforces` attribute)
ENFORCED_BY = {
    IKELESS_NS: frozenset({"xfrm", "userspace"}),
    IKE_NS: frozenset({"ike"}),
}
_WHAT = {
    IKELESS_NS: ("IKE-less SAD/SPD entries", "ipsec-ikeless",
                 'an ESP data path: set [dataplane] appliers = ["auto"] (or "xfrm" / '
                 '"userspace")'),
    IKE_NS: ("IKE configuration", "ipsec-ike",
             'strongSwan: add "ike" to [dataplane] appliers'),
}


def _enforced(appliers: list[object]) -> set[str]:
    out: set[str] = set()
    for a in appliers:
        name = str(getattr(a, "name", ""))
        out |= {ns for ns, names in ENFORCED_BY.items() if name in names}
        out |= set(getattr(a, "enforces", ()) or ())
    return out


def _has_entries(data: etree._Element, ns: str) -> bool:
    """Any list entry below the module's top container (empty containers are harmless)."""
    for top in data.iterchildren(f"{{{ns}}}*"):
        for el in top.iter():
            if el is not top and len(el) and el.tag.startswith(f"{{{ns}}}"):
                return True
    return False


class EnforcementGuard:
    """Validates commits against what the configured appliers can enforce."""

    name = "enforcement-guard"

    def __init__(self, appliers: list[object]) -> None:
        self.names = [str(getattr(a, "name", "?")) for a in appliers]
        self.enforced = _enforced(appliers)

    def validate(self, change: ConfigChange) -> None:
        for ns, (what, top, needs) in _WHAT.items():
            if ns in self.enforced or not _has_entries(change.new, ns):
                continue
            raise RpcError(
                "application", "operation-not-supported",
                f"this NSF cannot enforce {what}: its appliers ({', '.join(self.names)}) "
                f"do not drive {'an IPsec data path' if ns == IKELESS_NS else 'IKE'}; "
                f"it needs {needs}",
                path=f"/{'ietf-i2nsf-ikeless' if ns == IKELESS_NS else 'ietf-i2nsf-ike'}:{top}")

    # the rest of the Applier protocol: no backend of its own
    def bind(self, notify: Notify) -> None:
        return None

    def reconcile(self, running: etree._Element) -> None:
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
