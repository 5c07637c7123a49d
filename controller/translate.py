"""Policy → RFC 9061 ietf-i2nsf-ikeless configuration of the two NSFs.

A policy between NSFs a and b protects one or more *flows* (prefix pairs). For each flow each
NSF gets an outbound and an inbound SPD entry, and there are two unidirectional SAs: a→b
(outbound on a, inbound on b) and b→a. Each SA is written to both NSFs with the same SPI and
keys; RFC 9061 gives a SAD entry no direction, so it takes the direction of the SPD entry with
the same reqid on that NSF (see nsf_agent/ikeless.py).

Tunnel mode also needs a `fwd` policy in the Linux kernel for forwarded traffic; RFC 9061 has
no such direction, so the agent's kernel applier derives it from the inbound SPD entry.

Names are deterministic so that every SAD entry can be traced back from an NSF notification:
  SPD  fp/<policy>/<flow>/out|in
  SAD  fp/<policy>/<flow>/a2b|b2a/<generation>
Generations make make-before-break rekeys possible: generation n and n+1 coexist on an NSF.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lxml import etree

from controller.keys import KeyManager, SaKeys
from controller.model import (
    CryptoProfile,
    FlowConfig,
    FlowSpec,
    Limits,
    Nsf,
    Policy,
    policy_flows,
)
from netconf_core.errors import NC_NS
from nsf_agent.ikeless import NS as IKELESS_NS
from nsf_agent.ikeless import IpAddr, PortRange

Q = f"{{{IKELESS_NS}}}"
OPERATION = f"{{{NC_NS}}}operation"
NAME_PREFIX = "fp"
NATT_PORT = 4500

Role = Literal["a", "b"]
Direction = Literal["outbound", "inbound"]


def spd_name(policy: str, flow: int, direction: Direction) -> str:
    return f"{NAME_PREFIX}/{policy}/{flow}/{'out' if direction == 'outbound' else 'in'}"


def sad_name(policy: str, flow: int, a2b: bool, generation: int) -> str:
    return f"{NAME_PREFIX}/{policy}/{flow}/{'a2b' if a2b else 'b2a'}/{generation}"


@dataclass(frozen=True)
class SadRef:
    policy: str
    flow: int
    a2b: bool
    generation: int


def parse_sad_name(name: str) -> SadRef | None:
    """Map an NSF's SAD entry name (e.g. from sadb-expire) back to its policy; None if the
    entry was not written by this controller."""
    parts = name.split("/")
    if len(parts) != 5 or parts[0] != NAME_PREFIX or parts[3] not in ("a2b", "b2a"):
        return None
    try:
        return SadRef(parts[1], int(parts[2]), parts[3] == "a2b", int(parts[4]))
    except ValueError:
        return None


def parse_spd_name(name: str) -> tuple[str, int, Direction] | None:
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != NAME_PREFIX or parts[3] not in ("out", "in"):
        return None
    try:
        return parts[1], int(parts[2]), "outbound" if parts[3] == "out" else "inbound"
    except ValueError:
        return None


def reqid(policy_id: int, flow: int, direction: Direction) -> int:
    """Unique per NSF because policy ids are unique in the controller; fits the kernel's u32
    for policy ids below 2**22 (flows per policy are capped at 256)."""
    if not 1 <= policy_id < 1 << 22:
        raise ValueError(f"policy id {policy_id} out of range")
    return (policy_id << 10) | (flow << 1) | (0 if direction == "outbound" else 1)


@dataclass(frozen=True)
class Side:
    """One NSF of a policy and what it sees of the other."""

    role: Role
    nsf: Nsf
    peer: Nsf
    nat: bool  # either end behind NAT: ESP in UDP on both

    @property
    def local_addr(self) -> IpAddr:
        return self.nsf.data_plane_address

    @property
    def remote_addr(self) -> IpAddr:
        return self.peer.reachable_address

    @property
    def peer_port(self) -> int:
        return self.peer.reachable_port


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
class Plan:
    """Everything needed to write a policy to its two NSFs, except the SAs themselves."""

    policy: Policy
    policy_id: int
    a: Nsf
    b: Nsf
    profile: CryptoProfile
    flows: tuple[FlowSpec, ...]
    soft: Limits
    hard: Limits

    @property
    def name(self) -> str:
        return self.policy.name

    def side(self, role: Role) -> Side:
        nat = bool(self.a.nat or self.b.nat)
        if role == "a":
            return Side("a", self.a, self.b, nat)
        return Side("b", self.b, self.a, nat)

    def sides(self) -> tuple[Side, Side]:
        return self.side("a"), self.side("b")

    def spi_holders(self, a2b: bool) -> list[tuple[str, IpAddr]]:
        """(NSF, destination as that NSF sees it) for the sender and the receiver of an SA."""
        snd, rcv = (self.side("a"), self.side("b")) if a2b else (self.side("b"),
                                                                  self.side("a"))
        return [(snd.nsf.name, snd.remote_addr), (rcv.nsf.name, rcv.local_addr)]

    def spd_names(self) -> list[str]:
        return [spd_name(self.name, f.index, d) for f in self.flows
                for d in ("outbound", "inbound")]


def make_plan(policy: Policy, cfg: FlowConfig, policy_id: int) -> Plan:
    """Assumes `model.check_config(cfg)` passed."""
    a, b = cfg.nsfs[policy.a.nsf], cfg.nsfs[policy.b.nsf]
    profile = cfg.profiles[policy.params.crypto_profile]
    soft, hard = policy.lifetimes(profile)
    return Plan(policy, policy_id, a, b, profile, tuple(policy_flows(policy, a, b)), soft, hard)


def new_sas(plan: Plan, km: KeyManager, generation: int) -> list[SaSpec]:
    """Fresh SPIs and keys for every SA of a policy (both directions of every flow)."""
    out = []
    for f in plan.flows:
        for a2b in (True, False):
            spi = km.allocate_spi(plan.spi_holders(a2b))
            out.append(SaSpec(plan.name, f.index, a2b, generation, spi,
                              km.new_keys(plan.profile)))
    return out


# ---- XML ------------------------------------------------------------------------------------


def _sub(parent: etree._Element, name: str, text: object | None = None) -> etree._Element:
    el = etree.SubElement(parent, Q + name)
    if isinstance(text, bool):
        el.text = "true" if text else "false"
    elif text is not None:
        el.text = str(text)
    return el


def _hex(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ports(parent: etree._Element, name: str, ports: Iterable[PortRange]) -> None:
    for r in ports:
        p = _sub(parent, name)
        _sub(p, "start", r.start)
        _sub(p, "end", r.end)


def _selector(parent: etree._Element, plan: Plan, side: Side, flow: FlowSpec) -> None:
    ts = _sub(parent, "traffic-selector")
    local, remote = ((flow.a_prefix, flow.b_prefix) if side.role == "a"
                     else (flow.b_prefix, flow.a_prefix))
    ep, peer_ep = ((plan.policy.a, plan.policy.b) if side.role == "a"
                   else (plan.policy.b, plan.policy.a))
    _sub(ts, "local-prefix", local)
    _sub(ts, "remote-prefix", remote)
    proto = plan.policy.params.inner_protocol
    _sub(ts, "inner-protocol", "any" if proto is None else proto)
    _ports(ts, "local-ports", ep.ports)
    _ports(ts, "remote-ports", peer_ep.ports)


def _tunnel(parent: etree._Element, side: Side) -> None:
    t = _sub(parent, "tunnel")
    _sub(t, "local", side.local_addr)
    _sub(t, "remote", side.remote_addr)
    _sub(t, "df-bit", "clear")
    _sub(t, "bypass-dscp", True)


def _lifetime(parent: etree._Element, name: str, lim: Limits, action: str | None) -> None:
    el = _sub(parent, name)
    _sub(el, "time", lim.time)
    _sub(el, "bytes", lim.bytes)
    _sub(el, "packets", lim.packets)
    if action:
        _sub(el, "action", action)


def spd_entry(plan: Plan, side: Side, flow: FlowSpec, direction: Direction) -> etree._Element:
    prof = plan.profile
    mode = plan.policy.params.mode
    ent = etree.Element(Q + "spd-entry", nsmap={None: IKELESS_NS})
    _sub(ent, "name", spd_name(plan.name, flow.index, direction))
    _sub(ent, "direction", direction)
    _sub(ent, "reqid", reqid(plan.policy_id, flow.index, direction))
    cfg = _sub(ent, "ipsec-policy-config")
    _sub(cfg, "anti-replay-window-size", prof.anti_replay_window)
    _selector(cfg, plan, side, flow)
    pi = _sub(cfg, "processing-info")
    _sub(pi, "action", "protect")
    sa = _sub(pi, "ipsec-sa-cfg")
    _sub(sa, "ext-seq-num", prof.ext_seq_num)
    _sub(sa, "seq-overflow", False)
    _sub(sa, "mode", mode)
    _sub(sa, "protocol-parameters", "esp")
    algs = _sub(sa, "esp-algorithms")
    if prof.integrity:
        _sub(algs, "integrity", prof.integrity)
    if prof.encryption != 11:
        enc = _sub(algs, "encryption")
        _sub(enc, "id", 1)
        _sub(enc, "algorithm-type", prof.encryption)
        _sub(enc, "key-length", prof.key_length)
    if mode == "tunnel":
        _tunnel(sa, side)
    return ent


def sad_entry(plan: Plan, side: Side, sa: SaSpec) -> etree._Element:
    """The SAD entry of `sa` on `side`: outbound if the side sends it, inbound otherwise."""
    prof = plan.profile
    mode = plan.policy.params.mode
    direction: Direction = "outbound" if sa.sender == side.role else "inbound"
    flow = plan.flows[sa.flow]
    ent = etree.Element(Q + "sad-entry", nsmap={None: IKELESS_NS})
    _sub(ent, "name", sa.name)
    _sub(ent, "reqid", reqid(plan.policy_id, sa.flow, direction))
    cfg = _sub(ent, "ipsec-sa-config")
    _sub(cfg, "spi", sa.spi)
    _sub(cfg, "ext-seq-num", prof.ext_seq_num)
    _sub(cfg, "seq-overflow", False)
    _sub(cfg, "anti-replay-window-size", prof.anti_replay_window)
    _selector(cfg, plan, side, flow)
    _sub(cfg, "protocol-parameters", "esp")
    _sub(cfg, "mode", mode)
    esp = _sub(cfg, "esp-sa")
    enc = _sub(esp, "encryption")
    _sub(enc, "encryption-algorithm", prof.encryption)
    if sa.keys.enc_key:
        _sub(enc, "key", _hex(sa.keys.enc_key))
    if sa.keys.iv:
        _sub(enc, "iv", _hex(sa.keys.iv))
    if prof.integrity:
        integ = _sub(esp, "integrity")
        _sub(integ, "integrity-algorithm", prof.integrity)
        _sub(integ, "key", _hex(sa.keys.integ_key))
    _lifetime(cfg, "sa-lifetime-hard", plan.hard, None)
    _lifetime(cfg, "sa-lifetime-soft", plan.soft, "replace")
    if mode == "tunnel":
        _tunnel(cfg, side)
    encap = _sub(cfg, "encapsulation-type")
    if side.nat:
        # Ports of the SA's packets as this NSF sees them: its own port is 4500, the peer's
        # is the NAT's public port when the peer is behind NAT. oaddr: the peer's real
        # address, when a NAT hides it from this NSF.
        _sub(encap, "espencap", "espinudp")
        sport, dport = ((NATT_PORT, side.peer_port) if direction == "outbound"
                        else (side.peer_port, NATT_PORT))
        _sub(encap, "sport", sport)
        _sub(encap, "dport", dport)
        if side.peer.nat:
            _sub(encap, "oaddr", side.peer.data_plane_address)
    else:
        _sub(encap, "espencap", "none")
    return ent


def _remove(tag: str, name: str) -> etree._Element:
    ent = etree.Element(Q + tag, nsmap={None: IKELESS_NS})
    ent.set(OPERATION, "remove")
    _sub(ent, "name", name)
    return ent


def _replace(ent: etree._Element) -> etree._Element:
    ent.set(OPERATION, "replace")
    return ent


def config_element(spd: Iterable[etree._Element] = (),
                   sad: Iterable[etree._Element] = ()) -> etree._Element:
    """`<config>` for edit-config holding the given SPD and SAD entries."""
    conf = etree.Element(f"{{{NC_NS}}}config", nsmap={"nc": NC_NS})
    root = etree.SubElement(conf, Q + "ipsec-ikeless", nsmap={None: IKELESS_NS})
    spd, sad = list(spd), list(sad)
    if spd:
        s = _sub(root, "spd")
        for e in spd:
            s.append(e)
    if sad:
        s = _sub(root, "sad")
        for e in sad:
            s.append(e)
    return conf


Edits = dict[str, etree._Element]  # NSF name → <config> for its edit-config


def install_edit(plan: Plan, sas: Iterable[SaSpec] = ()) -> Edits:
    """Write (or overwrite) the policy's SPD entries and the given SAs on both NSFs.
    Entries are `replace`d so that retrying after a failure is harmless."""
    sas = list(sas)
    out: Edits = {}
    for side in plan.sides():
        spd = [_replace(spd_entry(plan, side, f, d)) for f in plan.flows
               for d in ("outbound", "inbound")]
        sad = [_replace(sad_entry(plan, side, sa)) for sa in sas]
        out[side.nsf.name] = config_element(spd, sad)
    return out


def add_inbound_edit(plan: Plan, new: Iterable[SaSpec]) -> Edits:
    """Rekey step 1: every NSF learns the new SAs it will receive; nothing sends on them yet."""
    new = list(new)
    return {side.nsf.name: config_element(
        sad=[_replace(sad_entry(plan, side, sa)) for sa in new if sa.receiver == side.role])
        for side in plan.sides()}


def switch_outbound_edit(plan: Plan, old: Iterable[SaSpec], new: Iterable[SaSpec]) -> Edits:
    """Rekey step 2: in one edit per NSF, the old outbound SAs go and the new ones come, so
    the outbound SPD entry always has exactly one SA; the peer already has its inbound twin."""
    old, new = list(old), list(new)
    out: Edits = {}
    for side in plan.sides():
        sad = [_remove("sad-entry", sa.name) for sa in old if sa.sender == side.role]
        sad += [_replace(sad_entry(plan, side, sa)) for sa in new if sa.sender == side.role]
        out[side.nsf.name] = config_element(sad=sad)
    return out


def remove_old_edit(plan: Plan, old: Iterable[SaSpec]) -> Edits:
    """Rekey step 3 (after the grace period): the old inbound SAs go."""
    old = list(old)
    return {side.nsf.name: config_element(
        sad=[_remove("sad-entry", sa.name) for sa in old if sa.receiver == side.role])
        for side in plan.sides()}


def remove_sas_edit(plan: Plan, sas: Iterable[SaSpec]) -> Edits:
    """Remove SAs on both NSFs (both directions), e.g. before re-creating a policy."""
    names = [sa.name for sa in sas]
    return {side.nsf.name: config_element(sad=[_remove("sad-entry", n) for n in names])
            for side in plan.sides()}


def delete_edit(plan: Plan, sa_names: Iterable[str]) -> Edits:
    """Remove everything of the policy from both NSFs. `remove` (not `delete`) so that a
    retried or partial delete does not fail on entries already gone."""
    names = list(sa_names)
    return {side.nsf.name: config_element(
        spd=[_remove("spd-entry", n) for n in plan.spd_names()],
        sad=[_remove("sad-entry", n) for n in names])
        for side in plan.sides()}


def delete_by_names_edit(spd_names: Iterable[str], sad_names: Iterable[str]) -> etree._Element:
    """One NSF's removal edit when only the stored entry names are left (the policy or an
    NSF is gone from the configuration)."""
    return config_element(spd=[_remove("spd-entry", n) for n in spd_names],
                          sad=[_remove("sad-entry", n) for n in sad_names])


def merge_edits(*edits: Edits) -> Edits:
    """One `<config>` per NSF holding the entries of several edits, in order (applied as one
    edit-config, so all-or-nothing on each NSF)."""
    spd: dict[str, list[etree._Element]] = {}
    sad: dict[str, list[etree._Element]] = {}
    for e in edits:
        for nsf, conf in e.items():
            spd.setdefault(nsf, []).extend(conf.iterfind(f"{Q}ipsec-ikeless/{Q}spd/{Q}spd-entry"))
            sad.setdefault(nsf, []).extend(conf.iterfind(f"{Q}ipsec-ikeless/{Q}sad/{Q}sad-entry"))
    return {nsf: config_element(spd[nsf], sad[nsf]) for nsf in spd}
