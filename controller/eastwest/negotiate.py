"""The negotiation itself, without I/O: what a proposal carries, how a responder checks it
against its own policy, and how both sides compute the same SAs.

Roles are fixed by the controller ids: the one that sorts first initiates (role "a"), so two
admins committing at the same moment never produce two competing key sets. SA "a2b" goes
from the initiator's NSF to the responder's, so its SPI is the responder's to allocate (the
SA is inbound to the responder's NSF), and "b2a"'s is the initiator's.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from controller.core.records import SaSpec
from controller.eastwest.keys import derive_keys
from controller.eastwest.model import Algorithms, EwPolicy
from controller.ipsec.model import FlowSpec
from netconf_core.i2nsf.types import IpNet


@dataclass(frozen=True)
class Proposal:
    initiator: str
    policy: str
    generation: int
    nonce: str
    public_key: str
    data_plane_address: str
    initiator_prefixes: tuple[IpNet, ...]
    responder_prefixes: tuple[IpNet, ...]
    inbound_spis: tuple[int, ...]  # b2a SPIs, one per flow
    algorithms: Algorithms


class Mismatch(ValueError):
    """The responder's matching policy differs from the proposal."""


class NoMatch(LookupError):
    """The responder has no policy for this traffic (yet)."""


def sa_label(initiator: str, responder: str, flow: FlowSpec, a2b: bool, generation: int,
             spi: int) -> str:
    return (f"{initiator}|{responder}|{flow.a_prefix}|{flow.b_prefix}|"
            f"{'a2b' if a2b else 'b2a'}|{generation}|{spi}")


def build_sas(policy: str, flows: tuple[FlowSpec, ...], initiator: str, responder: str,
              generation: int, nonce: str, shared: bytes, a2b_spis: tuple[int, ...],
              b2a_spis: tuple[int, ...], algorithms: Algorithms) -> tuple[SaSpec, ...]:
    if len(a2b_spis) != len(flows) or len(b2a_spis) != len(flows):
        raise ValueError(f"{len(flows)} flows need as many SPIs each way "
                         f"(got {len(a2b_spis)} and {len(b2a_spis)})")
    prof = algorithms.profile()
    out = []
    for f in flows:
        for a2b, spis in ((True, a2b_spis), (False, b2a_spis)):
            spi = spis[f.index]
            keys = derive_keys(shared, nonce,
                               sa_label(initiator, responder, f, a2b, generation, spi), prof)
            out.append(SaSpec(policy, f.index, a2b, generation, spi, keys))
    return tuple(out)


def _overlap(xs: tuple[IpNet, ...], ys: tuple[IpNet, ...]) -> bool:
    return any(x.version == y.version and x.overlaps(y) for x in xs for y in ys)


def _fmt(nets: tuple[IpNet, ...]) -> str:
    return ", ".join(str(n) for n in sorted(nets, key=lambda n: (n.version, n))) or "-"


def match_policy(prop: Proposal, candidates: list[tuple[EwPolicy, tuple[IpNet, ...]]]
                 ) -> EwPolicy:
    """The responder's policy for `prop` among `candidates` (its policies with the
    initiator as peer, each with its resolved local prefixes). Overlapping traffic that is
    not exactly mirrored, or other algorithms, is a Mismatch: the admins must fix one side.
    """
    for pol, local in candidates:
        if not (_overlap(local, prop.responder_prefixes)
                or _overlap(pol.remote_prefixes, prop.initiator_prefixes)):
            continue
        problems = []
        if set(local) != set(prop.responder_prefixes):
            problems.append(f"local prefixes here {_fmt(local)}, proposed "
                            f"{_fmt(prop.responder_prefixes)}")
        if set(pol.remote_prefixes) != set(prop.initiator_prefixes):
            problems.append(f"remote prefixes here {_fmt(pol.remote_prefixes)}, proposed "
                            f"{_fmt(prop.initiator_prefixes)}")
        if pol.algorithms != prop.algorithms:
            problems.append(f"algorithms here {pol.algorithms.describe()}, proposed "
                            f"{prop.algorithms.describe()}")
        if problems:
            raise Mismatch(pol.name, "; ".join(problems))
        return pol
    raise NoMatch(f"no east-west policy here for {_fmt(prop.initiator_prefixes)} <-> "
                  f"{_fmt(prop.responder_prefixes)} with {prop.initiator}")


def parse_nets(texts: list[str]) -> tuple[IpNet, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)
