"""An agreement → the RFC 9061 ikeless entries of the local NSF.

The translation is the IPsec service's (`controller.ipsec.translate`): a `Plan` whose side
"a" is the initiator's NSF and side "b" the responder's, one of them real (ours) and the
other built from what the peer announced. Only our side's entries are rendered, renamed
`ew/...` so that the IPsec service's resync (which owns `fp/...`) leaves them alone.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from controller.core.records import Role, SaSpec
from controller.eastwest.model import Algorithms
from controller.ipsec import translate
from controller.ipsec.model import Endpoint, FlowParams, FlowSpec, Nsf, Policy
from netconf_core.i2nsf.namespaces import IKELESS_NS
from netconf_core.i2nsf.types import IpNet

EW_PREFIX = "ew"


@dataclass(frozen=True)
class Agreement:
    """Both controllers compute the same one (apart from `role` and the local names)."""

    policy: str  # local policy name
    policy_id: int
    peer: str
    role: Role  # "a": we initiated
    generation: int
    nonce: str
    local_nsf: Nsf
    remote_address: str
    flows: tuple[FlowSpec, ...]  # a = initiator's prefix, b = responder's
    algorithms: Algorithms
    sas: tuple[SaSpec, ...]
    created: float = 0.0  # wall clock: when it was agreed (rekey schedule)

    def plan(self) -> translate.Plan:
        remote = Nsf(name=f"peer:{self.peer}", address="", username="", host_key="",
                     data_plane_address=ipaddress.ip_address(self.remote_address),
                     dataplane=self.local_nsf.dataplane)
        a, b = (self.local_nsf, remote) if self.role == "a" else (remote, self.local_nsf)
        pol = Policy(self.policy, Endpoint(a.name, tuple(f.a_prefix for f in self.flows)),
                     Endpoint(b.name, tuple(f.b_prefix for f in self.flows)),
                     FlowParams(crypto_profile="east-west"))
        prof = self.algorithms.profile()
        soft, hard = pol.lifetimes(prof)
        return translate.Plan(pol, self.policy_id, a, b, prof, self.flows, soft, hard)

    def sad_names(self) -> list[str]:
        return [ew_name(sa.name) for sa in self.sas]

    def spd_names(self) -> list[str]:
        return [ew_name(n) for n in self.plan().spd_names()]

    def spis(self, inbound: bool) -> list[int]:
        """SPIs of the SAs inbound to (or outbound from) our NSF, in flow order."""
        mine = [sa for sa in self.sas if (sa.receiver == self.role) == inbound]
        return [sa.spi for sa in sorted(mine, key=lambda s: s.flow)]


def ew_name(name: str) -> str:
    return EW_PREFIX + name[len(translate.NAME_PREFIX):]


def flows_for(initiator: tuple[IpNet, ...], responder: tuple[IpNet, ...]
              ) -> tuple[FlowSpec, ...]:
    pairs = [(x, y) for x in initiator for y in responder if x.version == y.version]
    return tuple(FlowSpec(i, x, y) for i, (x, y) in enumerate(pairs))


def _rename(entry: str) -> str:
    return entry.replace(f"<name>{translate.NAME_PREFIX}/", f"<name>{EW_PREFIX}/", 1)


def install_bytes(ag: Agreement, remove_spd: list[str], remove_sad: list[str]) -> bytes:
    """The `<config>` for the local NSF: every entry of `ag` (replace) and the removal of
    entries of a previous agreement that `ag` does not have any more."""
    spd, sad = translate.install_parts(ag.plan(), ag.sas)[ag.local_nsf.name]
    keep_spd, keep_sad = set(ag.spd_names()), set(ag.sad_names())
    rm_spd, rm_sad = translate.delete_by_names_parts(
        [n for n in remove_spd if n not in keep_spd],
        [n for n in remove_sad if n not in keep_sad])
    return _config([*map(_rename, spd), *rm_spd], [*map(_rename, sad), *rm_sad])


def remove_bytes(spd_names: list[str], sad_names: list[str]) -> bytes:
    spd, sad = translate.delete_by_names_parts(spd_names, sad_names)
    return _config(spd, sad)


def _config(spd: list[str], sad: list[str]) -> bytes:
    return ("".join((translate._CONFIG_HEAD, f"<spd>{''.join(spd)}</spd>" if spd else "",
                     f"<sad>{''.join(sad)}</sad>" if sad else "", translate._CONFIG_TAIL))
            ).encode()


__all__ = ["IKELESS_NS", "Agreement", "ew_name", "flows_for", "install_bytes",
           "remove_bytes"]


def rekey_bytes(old: Agreement, new: Agreement, done: int, upto: int) -> bytes:
    """Steps `done+1 .. upto` of a make-before-break rekey on our NSF: 1 add the new inbound
    SAs, 2 switch outbound (old out removed, new out added), 3 remove the old inbound SAs —
    the IPsec service's rekey steps (`translate`), on our side only."""
    plan = new.plan()
    steps = {1: lambda: translate.add_inbound_parts(plan, new.sas),
             2: lambda: translate.switch_outbound_parts(plan, old.sas, new.sas),
             3: lambda: translate.remove_old_parts(plan, old.sas)}
    joined = translate.join_parts(*(steps[i]() for i in range(done + 1, upto + 1)))
    spd, sad = joined.get(new.local_nsf.name, ([], []))
    return _config([_rename(e) for e in spd], [_rename(e) for e in sad])
