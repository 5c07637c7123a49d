"""Policy → RFC 9061 ietf-i2nsf-ikeless configuration of the two NSFs.

A policy between NSFs a and b protects one or more *flows* (prefix pairs). For each flow each
NSF gets an outbound and an inbound SPD entry, and there are two unidirectional SAs: a→b
(outbound on a, inbound on b) and b→a. Each SA is written to both NSFs with the same SPI and
keys; RFC 9061 gives a SAD entry no direction, so it takes the direction of the SPD entry with
the same reqid on that NSF (as the agent reads it).

Tunnel mode also needs a `fwd` policy in the Linux kernel for forwarded traffic; RFC 9061 has
no such direction, so the agent's kernel applier derives it from the inbound SPD entry.

Names are deterministic so that every SAD entry can be traced back from an NSF notification:
  SPD  fp/<policy>/<flow>/out|in
  SAD  fp/<policy>/<flow>/a2b|b2a/<generation>
Generations make make-before-break rekeys possible: generation n and n+1 coexist on an NSF.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal
from xml.sax.saxutils import escape

from lxml import etree

from controller.core.records import NAME_PREFIX, Role, SaKeys, SaSpec, sad_name  # noqa: F401 - the store's records, re-exported
from controller.ipsec.keys import KeyManager
from controller.ipsec.model import (
    CryptoProfile,
    FlowConfig,
    FlowSpec,
    Limits,
    Nsf,
    Policy,
    policy_flows,
)
from netconf_core.errors import NC_NS
from netconf_core.i2nsf.namespaces import IKELESS_NS
from netconf_core.i2nsf.types import IpAddr, PortRange

Q = f"{{{IKELESS_NS}}}"
OPERATION = f"{{{NC_NS}}}operation"
NATT_PORT = 4500

Direction = Literal["outbound", "inbound"]


def spd_name(policy: str, flow: int, direction: Direction) -> str:
    return f"{NAME_PREFIX}/{policy}/{flow}/{'out' if direction == 'outbound' else 'in'}"


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
    # rendered XML of the parts of its entries that never change (see _spd_xml)
    xml_cache: dict[tuple[str, str, int, str], object] = field(
        default_factory=dict, compare=False, repr=False)

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
#
# Entries are rendered as text and parsed by lxml (C) in one go per NSF edit: building them
# node by node in Python cost more than everything else the controller does per SA. The
# parts of an entry that depend only on the policy, the side and the flow are rendered once
# per plan (`Plan.xml_cache`); per SA only its name, SPI and keys are filled in.

_NC_DECL = f'xmlns:nc="{NC_NS}"'
_CONFIG_HEAD = f'<nc:config {_NC_DECL}><ipsec-ikeless xmlns="{IKELESS_NS}">'
_CONFIG_TAIL = "</ipsec-ikeless></nc:config>"
_PARSER = etree.XMLParser(remove_blank_text=False, resolve_entities=False, no_network=True,
                          huge_tree=True)


def _text(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return escape(v)
    return str(v)  # numbers, addresses, prefixes: nothing to escape


def _leaf(name: str, v: object) -> str:
    return f"<{name}>{_text(v)}</{name}>"


def _hex(b: bytes) -> str:
    return b.hex(":")


def _ports(name: str, ports: Iterable[PortRange]) -> str:
    return "".join(f"<{name}><start>{r.start}</start><end>{r.end}</end></{name}>"
                   for r in ports)


def _selector(plan: Plan, side: Side, flow: FlowSpec) -> str:
    key = ("ts", side.role, flow.index, "")
    hit = plan.xml_cache.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    local, remote = ((flow.a_prefix, flow.b_prefix) if side.role == "a"
                     else (flow.b_prefix, flow.a_prefix))
    ep, peer_ep = ((plan.policy.a, plan.policy.b) if side.role == "a"
                   else (plan.policy.b, plan.policy.a))
    proto = plan.policy.params.inner_protocol
    out = ("<traffic-selector>" + _leaf("local-prefix", local)
           + _leaf("remote-prefix", remote)
           + _leaf("inner-protocol", "any" if proto is None else proto)
           + _ports("local-ports", ep.ports) + _ports("remote-ports", peer_ep.ports)
           + "</traffic-selector>")
    plan.xml_cache[key] = out
    return out


def _tunnel(side: Side) -> str:
    return ("<tunnel>" + _leaf("local", side.local_addr) + _leaf("remote", side.remote_addr)
            + "<df-bit>clear</df-bit><bypass-dscp>true</bypass-dscp></tunnel>")


def _lifetime(name: str, lim: Limits, action: str | None) -> str:
    act = _leaf("action", action) if action else ""
    return (f"<{name}><time>{lim.time}</time><bytes>{lim.bytes}</bytes>"
            f"<packets>{lim.packets}</packets>{act}</{name}>")


def _spd_xml(plan: Plan, side: Side, flow: FlowSpec, direction: Direction) -> str:
    """An SPD entry's XML (without operation); entirely determined by the plan."""
    key = ("spd", side.role, flow.index, direction)
    hit = plan.xml_cache.get(key)
    if hit is not None:
        return hit
    prof = plan.profile
    mode = plan.policy.params.mode
    algs = _leaf("integrity", prof.integrity) if prof.integrity else ""
    if prof.encryption != 11:
        algs += (f"<encryption><id>1</id><algorithm-type>{prof.encryption}</algorithm-type>"
                 f"<key-length>{prof.key_length}</key-length></encryption>")
    out = ("<name>" + _text(spd_name(plan.name, flow.index, direction)) + "</name>"
           + _leaf("direction", direction)
           + _leaf("reqid", reqid(plan.policy_id, flow.index, direction))
           + "<ipsec-policy-config>" + _leaf("anti-replay-window-size", prof.anti_replay_window)
           + _selector(plan, side, flow)
           + "<processing-info><action>protect</action><ipsec-sa-cfg>"
           + _leaf("ext-seq-num", prof.ext_seq_num) + "<seq-overflow>false</seq-overflow>"
           + _leaf("mode", mode) + "<protocol-parameters>esp</protocol-parameters>"
           + f"<esp-algorithms>{algs}</esp-algorithms>"
           + (_tunnel(side) if mode == "tunnel" else "")
           + "</ipsec-sa-cfg></processing-info></ipsec-policy-config>")
    plan.xml_cache[key] = out
    return out


def _sad_parts(plan: Plan, side: Side, flow: FlowSpec, direction: Direction
               ) -> tuple[str, str, str]:
    """The fixed parts of a SAD entry on `side`: before the SPI, between the SPI and the
    keys, after the keys."""
    key = ("sad", side.role, flow.index, direction)
    hit = plan.xml_cache.get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    prof = plan.profile
    mode = plan.policy.params.mode
    head = (_leaf("reqid", reqid(plan.policy_id, flow.index, direction))
            + "<ipsec-sa-config><spi>")
    mid = ("</spi>" + _leaf("ext-seq-num", prof.ext_seq_num)
           + "<seq-overflow>false</seq-overflow>"
           + _leaf("anti-replay-window-size", prof.anti_replay_window)
           + _selector(plan, side, flow)
           + "<protocol-parameters>esp</protocol-parameters>" + _leaf("mode", mode)
           + "<esp-sa><encryption>" + _leaf("encryption-algorithm", prof.encryption))
    if side.nat:
        # Ports of the SA's packets as this NSF sees them: its own port is 4500, the peer's
        # is the NAT's public port when the peer is behind NAT. oaddr: the peer's real
        # address, when a NAT hides it from this NSF.
        sport, dport = ((NATT_PORT, side.peer_port) if direction == "outbound"
                        else (side.peer_port, NATT_PORT))
        encap = (f"<espencap>espinudp</espencap><sport>{sport}</sport><dport>{dport}</dport>"
                 + (_leaf("oaddr", side.peer.data_plane_address) if side.peer.nat else ""))
    else:
        encap = "<espencap>none</espencap>"
    tail = ("</esp-sa>" + _lifetime("sa-lifetime-hard", plan.hard, None)
            + _lifetime("sa-lifetime-soft", plan.soft, "replace")
            + (_tunnel(side) if mode == "tunnel" else "")
            + f"<encapsulation-type>{encap}</encapsulation-type></ipsec-sa-config>")
    out = (head, mid, tail)
    plan.xml_cache[key] = out
    return out


def _sad_xml(plan: Plan, side: Side, sa: SaSpec) -> str:
    """The SAD entry of `sa` on `side` (without operation): outbound if the side sends it,
    inbound otherwise."""
    direction: Direction = "outbound" if sa.sender == side.role else "inbound"
    head, mid, tail = _sad_parts(plan, side, plan.flows[sa.flow], direction)
    k = sa.keys
    keys = (f"<key>{_hex(k.enc_key)}</key>" if k.enc_key else "") + (
        f"<iv>{_hex(k.iv)}</iv>" if k.iv else "") + "</encryption>"
    if plan.profile.integrity:
        keys += (f"<integrity><integrity-algorithm>{plan.profile.integrity}"
                 f"</integrity-algorithm><key>{_hex(k.integ_key)}</key></integrity>")
    return f"<name>{_text(sa.name)}</name>{head}{sa.spi}{mid}{keys}{tail}"


def _entry(tag: str, body: str, operation: str | None) -> str:
    op = f' nc:operation="{operation}"' if operation else ""
    return f"<{tag}{op}>{body}</{tag}>"


def _parse_entry(tag: str, body: str) -> etree._Element:
    return etree.fromstring(f'<{tag} xmlns="{IKELESS_NS}">{body}</{tag}>', _PARSER)


def spd_entry(plan: Plan, side: Side, flow: FlowSpec, direction: Direction) -> etree._Element:
    return _parse_entry("spd-entry", _spd_xml(plan, side, flow, direction))


def sad_entry(plan: Plan, side: Side, sa: SaSpec) -> etree._Element:
    """The SAD entry of `sa` on `side`: outbound if the side sends it, inbound otherwise."""
    return _parse_entry("sad-entry", _sad_xml(plan, side, sa))


def _config_text(spd: Iterable[str], sad: Iterable[str]) -> etree._Element:
    """`<config>` for edit-config from rendered entries (with their operations)."""
    spd, sad = "".join(spd), "".join(sad)
    return etree.fromstring(
        _CONFIG_HEAD + (f"<spd>{spd}</spd>" if spd else "")
        + (f"<sad>{sad}</sad>" if sad else "") + _CONFIG_TAIL, _PARSER)


def _remove(tag: str, name: str) -> str:
    return f'<{tag} nc:operation="remove"><name>{_text(name)}</name></{tag}>'


def config_element(spd: Iterable[etree._Element] = (),
                   sad: Iterable[etree._Element] = ()) -> etree._Element:
    """`<config>` for edit-config holding the given SPD and SAD entries."""
    conf = etree.Element(f"{{{NC_NS}}}config", nsmap={"nc": NC_NS})
    root = etree.SubElement(conf, Q + "ipsec-ikeless", nsmap={None: IKELESS_NS})
    spd, sad = list(spd), list(sad)
    if spd:
        s = etree.SubElement(root, Q + "spd")
        for e in spd:
            s.append(e)
    if sad:
        s = etree.SubElement(root, Q + "sad")
        for e in sad:
            s.append(e)
    return conf


Edits = dict[str, etree._Element]  # NSF name → <config> for its edit-config


# Parts: per NSF, its rendered SPD and SAD entries (with operations). The engine joins the
# parts of all actions of a transaction and renders one edit-config per NSF from them; the
# *_edit functions give the same as `<config>` elements.
Parts = dict[str, tuple[list[str], list[str]]]


def install_parts(plan: Plan, sas: Iterable[SaSpec] = ()) -> Parts:
    sas = list(sas)
    return {side.nsf.name: (
        [_entry("spd-entry", _spd_xml(plan, side, f, d), "replace") for f in plan.flows
         for d in ("outbound", "inbound")],
        [_entry("sad-entry", _sad_xml(plan, side, sa), "replace") for sa in sas])
        for side in plan.sides()}


def add_inbound_parts(plan: Plan, new: Iterable[SaSpec]) -> Parts:
    new = list(new)
    return {side.nsf.name: ([], [_entry("sad-entry", _sad_xml(plan, side, sa), "replace")
                                 for sa in new if sa.receiver == side.role])
            for side in plan.sides()}


def switch_outbound_parts(plan: Plan, old: Iterable[SaSpec], new: Iterable[SaSpec]) -> Parts:
    old, new = list(old), list(new)
    return {side.nsf.name: ([], [_remove("sad-entry", sa.name) for sa in old
                                 if sa.sender == side.role]
                            + [_entry("sad-entry", _sad_xml(plan, side, sa), "replace")
                               for sa in new if sa.sender == side.role])
            for side in plan.sides()}


def remove_old_parts(plan: Plan, old: Iterable[SaSpec]) -> Parts:
    old = list(old)
    return {side.nsf.name: ([], [_remove("sad-entry", sa.name) for sa in old
                                 if sa.receiver == side.role])
            for side in plan.sides()}


def remove_sas_parts(plan: Plan, sas: Iterable[SaSpec]) -> Parts:
    names = [sa.name for sa in sas]
    return {side.nsf.name: ([], [_remove("sad-entry", n) for n in names])
            for side in plan.sides()}


def delete_by_names_parts(spd_names: Iterable[str], sad_names: Iterable[str]
                          ) -> tuple[list[str], list[str]]:
    return ([_remove("spd-entry", n) for n in spd_names],
            [_remove("sad-entry", n) for n in sad_names])


def join_parts(*parts: Parts) -> Parts:
    """The entries of several parts, in order, per NSF."""
    out: Parts = {}
    for p in parts:
        for nsf, (spd, sad) in p.items():
            have = out.get(nsf)
            if have is None:
                out[nsf] = (list(spd), list(sad))
            else:
                have[0].extend(spd)
                have[1].extend(sad)
    return out


def parts_to_edits(parts: Parts) -> Edits:
    return {nsf: _config_text(spd, sad) for nsf, (spd, sad) in parts.items()}


def parts_to_bytes(parts: Iterable[Parts]) -> dict[str, bytes]:
    """The `<config>` of one edit-config per NSF carrying the entries of all `parts`, in
    order, serialised. NSFs whose entries add up to nothing are left out: they need no
    transaction."""
    joined = join_parts(*parts)
    return {nsf: "".join((_CONFIG_HEAD, f"<spd>{''.join(spd)}</spd>" if spd else "",
                          f"<sad>{''.join(sad)}</sad>" if sad else "", _CONFIG_TAIL)).encode()
            for nsf, (spd, sad) in joined.items() if spd or sad}


def install_edit(plan: Plan, sas: Iterable[SaSpec] = ()) -> Edits:
    """Write (or overwrite) the policy's SPD entries and the given SAs on both NSFs.
    Entries are `replace`d so that retrying after a failure is harmless."""
    return parts_to_edits(install_parts(plan, sas))


def add_inbound_edit(plan: Plan, new: Iterable[SaSpec]) -> Edits:
    """Rekey step 1: every NSF learns the new SAs it will receive; nothing sends on them yet."""
    return parts_to_edits(add_inbound_parts(plan, new))


def switch_outbound_edit(plan: Plan, old: Iterable[SaSpec], new: Iterable[SaSpec]) -> Edits:
    """Rekey step 2: in one edit per NSF, the old outbound SAs go and the new ones come, so
    the outbound SPD entry always has exactly one SA; the peer already has its inbound twin."""
    return parts_to_edits(switch_outbound_parts(plan, old, new))


def remove_old_edit(plan: Plan, old: Iterable[SaSpec]) -> Edits:
    """Rekey step 3 (after the grace period): the old inbound SAs go."""
    return parts_to_edits(remove_old_parts(plan, old))


def remove_sas_edit(plan: Plan, sas: Iterable[SaSpec]) -> Edits:
    """Remove SAs on both NSFs (both directions), e.g. before re-creating a policy."""
    return parts_to_edits(remove_sas_parts(plan, sas))


def delete_edit(plan: Plan, sa_names: Iterable[str]) -> Edits:
    """Remove everything of the policy from both NSFs. `remove` (not `delete`) so that a
    retried or partial delete does not fail on entries already gone."""
    names = list(sa_names)
    return {side.nsf.name: _config_text(*delete_by_names_parts(plan.spd_names(), names))
            for side in plan.sides()}


def delete_by_names_edit(spd_names: Iterable[str], sad_names: Iterable[str]) -> etree._Element:
    """One NSF's removal edit when only the stored entry names are left (the policy or an
    NSF is gone from the configuration)."""
    return _config_text(*delete_by_names_parts(spd_names, sad_names))


def merge_edits(*edits: Edits) -> Edits:
    """One `<config>` per NSF holding the entries of several edits, in order (applied as one
    edit-config, so all-or-nothing on each NSF). The entries are moved: the inputs are
    left empty."""
    spd: dict[str, list[etree._Element]] = {}
    sad: dict[str, list[etree._Element]] = {}
    for e in edits:
        for nsf, conf in e.items():
            spd.setdefault(nsf, []).extend(conf.iterfind(f"{Q}ipsec-ikeless/{Q}spd/{Q}spd-entry"))
            sad.setdefault(nsf, []).extend(conf.iterfind(f"{Q}ipsec-ikeless/{Q}sad/{Q}sad-entry"))
    return {nsf: config_element(spd[nsf], sad[nsf]) for nsf in spd}
