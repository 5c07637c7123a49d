"""The records the store keeps: policies with their status, and the SAs with their keys.

They are plain data shared by the store (`core.store`) and the IPsec service that writes them
(`ipsec`): an SA is named as its SAD entries are on the NSFs (`fp/<policy>/<flow>/<a2b|b2a>/
<generation>`), so that the store, the translation and an NSF's notifications agree on it.
Key material never reaches a log: `SaKeys` hides it from repr and str.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

NAME_PREFIX = "fp"  # every entry the controller writes on an NSF is named fp/...

Role = Literal["a", "b"]


def sad_name(policy: str, flow: int, a2b: bool, generation: int) -> str:
    return f"{NAME_PREFIX}/{policy}/{flow}/{'a2b' if a2b else 'b2a'}/{generation}"


@dataclass(frozen=True)
class SaKeys:
    """Key material of one SA. repr/str never show it; `to_dict` is for the store only."""

    enc_key: bytes = field(repr=False)
    integ_key: bytes = field(repr=False)
    iv: bytes = field(repr=False)

    def __repr__(self) -> str:
        return (f"SaKeys(enc={len(self.enc_key)}B, integ={len(self.integ_key)}B, "
                f"iv={len(self.iv)}B, <hidden>)")

    __str__ = __repr__

    def to_dict(self) -> dict[str, str]:
        return {"enc": self.enc_key.hex(), "integ": self.integ_key.hex(), "iv": self.iv.hex()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SaKeys:
        return cls(bytes.fromhex(d["enc"]), bytes.fromhex(d["integ"]), bytes.fromhex(d["iv"]))


@dataclass(frozen=True)
class SaSpec:
    """One unidirectional SA: a→b (sent by a) or b→a."""

    policy: str
    flow: int
    a2b: bool
    generation: int
    spi: int
    keys: SaKeys

    @property
    def name(self) -> str:
        return sad_name(self.policy, self.flow, self.a2b, self.generation)

    @property
    def sender(self) -> Role:
        return "a" if self.a2b else "b"

    @property
    def receiver(self) -> Role:
        return "b" if self.a2b else "a"


@dataclass(frozen=True)
class PolicyRecord:
    name: str
    policy_id: int  # stable for the policy's life; its reqids derive from it
    data: dict[str, Any]  # model.Policy.to_dict()
    group: str | None
    status: str
    error: str | None
    generation: int
    updated: float


@dataclass(frozen=True)
class SaRecord:
    """One unidirectional SA as written to its sender (outbound) and receiver (inbound),
    with the outer addresses each of them sees (they differ through a NAT)."""

    policy: str
    flow: int
    a2b: bool
    generation: int
    spi: int
    keys: SaKeys
    sender: str
    receiver: str
    sender_src: str
    sender_dst: str
    receiver_src: str
    receiver_dst: str
    created: float

    @property
    def name(self) -> str:
        return sad_name(self.policy, self.flow, self.a2b, self.generation)

    def spec(self) -> SaSpec:
        return SaSpec(self.policy, self.flow, self.a2b, self.generation, self.spi, self.keys)


@dataclass(frozen=True)
class PolicyView:
    """What the operational state shows of a policy (no JSON to decode, no keys)."""

    name: str
    group: str | None
    endpoint_a: str | None
    endpoint_b: str | None
    status: str
    error: str | None
    generation: int
    updated: float


@dataclass(frozen=True)
class SaView:
    """What the operational state shows of an SA: everything but its keys."""

    policy: str
    flow: int
    a2b: bool
    generation: int
    spi: int
    sender: str
    receiver: str
    sender_src: str
    sender_dst: str
    receiver_src: str
    receiver_dst: str
    created: float

    @property
    def name(self) -> str:
        return sad_name(self.policy, self.flow, self.a2b, self.generation)
