"""Semantic checks of a flow-protection configuration: what libyang cannot see.

Effective lifetimes after overrides, algorithm tables, endpoints and prefix pairs, selector
overlaps between policies on one NSF, and the IKE case's own rules (`ike_check`). They run
before anything is pushed to an NSF, so bad input ends as an rpc-error with nothing changed.
"""

from __future__ import annotations

import ipaddress

from lxml import etree

from controller.ipsec.ike_config import check_ike
from controller.ipsec.model import (
    MAX_FLOWS_PER_POLICY,
    MODULE,
    FlowConfig,
    Policy,
    Q,
    check_profile,
    policy_flows,
)
from netconf_core.errors import RpcError
from netconf_core.i2nsf.types import PortRange


def _ppath(p: Policy) -> str:
    if p.group is not None:
        return f"/{MODULE}:flow-protection/policy-groups/policy-group[name='{p.group}']"
    return f"/{MODULE}:flow-protection/policies/policy[name='{p.name}']"


def _ports_overlap(x: tuple[PortRange, ...], y: tuple[PortRange, ...]) -> bool:
    if not x or not y:
        return True
    return any(r.start <= s.end and s.start <= r.end for r in x for s in y)


# (list in flow-protection, its key, prefix leaves under an entry) holding prefixes
_PREFIX_LEAVES = (
    ("nsfs/nsf", "name", ("protected-prefix",)),
    ("policies/policy", "name", ("endpoint-a/prefix", "endpoint-b/prefix")),
    ("road-warriors/road-warrior", "name", ("pool", "prefix")),
)


def prefix_problems(data: etree._Element | None) -> list[RpcError]:
    """Prefixes written with host bits (10.5.0.1/24) in `data` (a `<config>`/`<data>` root
    or `<flow-protection>`): refused instead of being silently truncated to their network
    (the operator may have meant a host or another prefix)."""
    if data is None:
        return []
    root = data if data.tag == Q + "flow-protection" else data.find(Q + "flow-protection")
    if root is None:
        return []
    out = []
    for lpath, key, leaves in _PREFIX_LEAVES:
        for entry in root.iterfind("/".join(Q + s for s in lpath.split("/"))):
            name = (entry.findtext(Q + key) or "").strip()
            for leaf in leaves:
                for el in entry.iterfind("/".join(Q + s for s in leaf.split("/"))):
                    text = (el.text or "").strip()
                    try:
                        net = ipaddress.ip_network(text, strict=False)
                    except ValueError:
                        continue  # libyang's type check reports it
                    if ipaddress.ip_interface(text).ip != net.network_address:
                        out.append(RpcError(
                            "application", "invalid-value",
                            f"{lpath.rpartition('/')[2]} {name!r}, {leaf}: {text} has host "
                            f"bits set; did you mean {net}? (write the network address of "
                            f"the prefix, or /{net.max_prefixlen} for one host)",
                            path=f"/{MODULE}:flow-protection/{lpath}[{key}='{name}']/{leaf}",
                            app_tag="prefix-host-bits"))
    return out


def refuse_host_bits(config: etree._Element | None) -> None:
    """For the northbound's edit-config/copy-config: `config` as the client wrote it (the
    datastore keeps libyang's canonical form, in which 10.5.0.1/24 already is 10.5.0.0/24)."""
    errors = prefix_problems(config)
    if errors:
        first, *rest = errors
        first.others = rest
        raise first


def check_config(cfg: FlowConfig) -> None:
    """Raise one RpcError (others attached) for every problem libyang cannot see."""
    errors: list[RpcError] = []

    def err(path: str, msg: str, tag: str = "invalid-value",
            app_tag: str | None = None) -> None:
        errors.append(RpcError("application", tag, msg, path=path, app_tag=app_tag))

    for prof in cfg.profiles.values():
        for m in check_profile(prof):
            err(f"/{MODULE}:flow-protection/crypto-profiles/crypto-profile[name='{prof.name}']",
                f"crypto profile {prof.name!r}: {m}")

    policies = cfg.all_policies()
    # flows per NSF for the overlap check: the local and remote prefixes as integer ranges
    # (two prefixes overlap iff their ranges do; ipaddress.overlaps costs ~10x more), proto,
    # local and remote ports, policy
    seen: dict[str, list[tuple[int, int, int, int, int, int | None, tuple[PortRange, ...],
                               tuple[PortRange, ...], str]]] = {}
    for pol in sorted(policies.values(), key=lambda p: p.name):
        path = _ppath(pol)
        what = f"policy {pol.name!r}"
        prm = pol.params
        a, b = cfg.nsfs.get(pol.a.nsf), cfg.nsfs.get(pol.b.nsf)
        if a is None or b is None:
            missing = pol.a.nsf if a is None else pol.b.nsf
            err(path, f"{what}: unknown NSF {missing!r}", tag="data-missing",
                app_tag="instance-required")
            continue
        if a.name == b.name:
            err(path, f"{what}: the two endpoints must be different NSFs")
            continue
        prof = cfg.profiles.get(prm.crypto_profile)
        if prof is None:
            err(path + "/crypto-profile", f"{what}: unknown crypto profile "
                f"{prm.crypto_profile!r}", tag="data-missing", app_tag="instance-required")
            continue
        soft, hard = pol.lifetimes(prof)
        for kind in ("time", "bytes", "packets"):
            s, h = getattr(soft, kind), getattr(hard, kind)
            if h and not (0 < s < h):
                err(path + f"/lifetime-soft/{kind}",
                    f"{what}: soft {kind} lifetime ({s}) must be non-zero and less than the "
                    f"hard one ({h})")
        if prm.mode == "transport":
            if a.nat or b.nat:
                err(path + "/mode", f"{what}: transport mode through NAT is not supported; "
                    "use tunnel mode")
                continue
            for ep, nsf in ((pol.a, a), (pol.b, b)):
                host = ipaddress.ip_network(nsf.data_plane_address)
                if ep.prefixes and ep.prefixes != (host,):
                    err(path + "/mode", f"{what}: transport mode protects the NSFs' own "
                        f"traffic; {nsf.name}'s prefix must be {host} or left out")
        flows = policy_flows(pol, a, b)
        if not flows:
            err(path, f"{what}: no prefix pair to protect (give prefixes or set the NSFs' "
                "protected-prefix, same address family on both ends)", tag="data-missing")
            continue
        if len(flows) > MAX_FLOWS_PER_POLICY:
            err(path, f"{what}: {len(flows)} prefix pairs; at most {MAX_FLOWS_PER_POLICY}")
            continue
        if prm.mode == "tunnel" and (a.data_plane_address.version
                                     != b.reachable_address.version):
            err(path, f"{what}: the data-plane addresses of {a.name} and {b.name} are of "
                "different address families")
            continue
        same = [f for f in flows if f.a_prefix.overlaps(f.b_prefix)]
        if same:
            f = same[0]
            rel = "is the same prefix as" if f.a_prefix == f.b_prefix else "overlaps"
            err(path, f"{what}: endpoint a's prefix {f.a_prefix} {rel} endpoint b's "
                f"{f.b_prefix}; a policy protects traffic between two different networks",
                app_tag="same-prefix-both-ends")
            continue
        for f in flows:
            for nsf, loc, rem, lp, rp in ((a.name, f.a_prefix, f.b_prefix, pol.a.ports,
                                           pol.b.ports),
                                          (b.name, f.b_prefix, f.a_prefix, pol.b.ports,
                                           pol.a.ports)):
                ver = loc.version
                l_lo, l_hi = int(loc.network_address), int(loc.broadcast_address)
                r_lo, r_hi = int(rem.network_address), int(rem.broadcast_address)
                for (v2, l2lo, l2hi, r2lo, r2hi, pr2, lp2, rp2, other) in seen.get(nsf, []):
                    if (v2 == ver and l_lo <= l2hi and l2lo <= l_hi and r_lo <= r2hi
                            and r2lo <= r_hi and other != pol.name
                            and (prm.inner_protocol is None or pr2 is None
                                 or prm.inner_protocol == pr2)
                            and _ports_overlap(lp, lp2) and _ports_overlap(rp, rp2)):
                        err(path, f"{what}: its selector {loc} <-> {rem} on NSF {nsf} "
                            f"overlaps policy {other!r}", tag="operation-failed",
                            app_tag="overlapping-selectors")
                        break
                seen.setdefault(nsf, []).append((ver, l_lo, l_hi, r_lo, r_hi,
                                                 prm.inner_protocol, lp, rp, pol.name))
    for path, msg, tag, app_tag in check_ike(cfg):
        err(path, msg, tag, app_tag)
    if errors:
        first, *rest = errors
        first.others = rest
        raise first
