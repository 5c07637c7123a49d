"""The client commands of `i2nsf-controller`: NETCONF (ncclient) to the running controller.

For scripts: `--json` on every list/show/status prints one JSON document; `--wait`
blocks until the change took effect on the NSFs (progress on stderr), with `--timeout`;
exit status 0 = done, 1 = failed (an rpc-error, a policy that failed, a refused removal),
2 = bad usage, 3 = timed out waiting. Every error is one line `i2nsf-controller: error: …`.
The controller's host key is verified before any credential is sent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import Any

from lxml import etree

from controller.cli_hostkey import connect
from controller.cli_nc import (
    ENCRYPTION,
    FP,
    INTEGRITY,
    OP,
    Q,
    _config,
    _e,
    _edit,
    _get,
    _policies,
    _rpc,
    _running,
    _state,
    _wait_gone,
    _wait_policies,
    wait,
)
from controller.cli_output import (
    CliError,
    age,
    as_dict,
    emit,
    table,
    text,
    until,
)

# ---- NSFs -----------------------------------------------------------------------------------


def nsf_add(m: Any, a: argparse.Namespace) -> None:
    if a.host_key_file:
        try:
            host_key = a.host_key_file.read_text().split("\n")[0].strip()
        except OSError as exc:
            raise CliError(f"cannot read {a.host_key_file}: {exc}") from exc
    else:
        host_key = a.nsf_host_key
    mgmt = _e("management", None, _e("address", a.address), _e("port", a.mgmt_port),
              _e("username", a.username))
    if a.private_key_file:
        mgmt.append(_e("private-key-file", os.path.abspath(a.private_key_file)))
    else:
        mgmt.append(_e("password-file", os.path.abspath(a.nsf_password_file)))
    mgmt.append(_e("host-key", host_key))
    nsf = _e("nsf", None, _e("name", a.name), mgmt,
             _e("data-plane-address", a.data_plane_address))
    nsf.set(OP, "replace")
    for p in a.prefix:
        nsf.append(_e("protected-prefix", p))
    if a.nat_public_address:
        nat = _e("nat", None, _e("public-address", a.nat_public_address))
        if a.nat_public_port:
            nat.append(_e("public-port", a.nat_public_port))
        nsf.append(nat)
    nsf.append(_e("dataplane", a.dataplane))
    _edit(m, _config(_e("nsfs", None, nsf)))
    print(f"NSF {a.name} saved")
    if a.wait:
        def probe() -> tuple[bool, str | None, str]:
            n = _nsf_state(m).get(a.name)
            st = text(n, "session/state", "unknown")
            bad = st in ("host-key-mismatch", "auth-failed")
            return st == "connected", (text(n, "session/last-error") or st) if bad else None, st

        wait(f"NSF {a.name}", probe, a.timeout, a.quiet)


def _nsf_state(m: Any) -> dict[str, etree._Element]:
    data = _get(m, f'<flow-protection xmlns="{FP}"><nsfs/></flow-protection>')
    return {text(n, "name"): n for n in data.iter(Q + "nsf")}


def nsf_list(m: Any, a: argparse.Namespace) -> None:
    nsfs = list(_nsf_state(m).values())
    rows = [[text(n, "name"),
             f"{text(n, 'management/address')}:{text(n, 'management/port', '830')}",
             text(n, "data-plane-address"),
             ",".join((p.text or "") for p in n.iterfind(Q + "protected-prefix")) or "-",
             text(n, "session/state", "-"), text(n, "session/last-error")] for n in nsfs]
    emit(a, {"nsfs": [as_dict(n) for n in nsfs]},
         table(rows, ["NSF", "MANAGEMENT", "DATA PLANE", "PREFIXES", "SESSION", "LAST ERROR"])
         if rows else "no NSFs")


def _users_of_nsf(m: Any, name: str) -> list[str]:
    cfg = _running(m, f'<flow-protection xmlns="{FP}"/>')
    users = [f"policy {text(p, 'name')}" for p in cfg.iter(Q + "policy")
             if name in (text(p, "endpoint-a/nsf"), text(p, "endpoint-b/nsf"))]
    users += [f"policy group {text(g, 'name')}" for g in cfg.iter(Q + "policy-group")
              if name in [(x.text or "").strip() for x in g.iterfind(Q + "member")]]
    users += [f"road warrior {text(r, 'name')}" for r in cfg.iter(Q + "road-warrior")
              if text(r, "gateway") == name]
    return users


def _deleting_on(m: Any, name: str) -> list[etree._Element]:
    return [p for p in _state(m).iter(Q + "policy")
            if text(p, "status") == "deleting"
            and name in (text(p, "endpoint-a"), text(p, "endpoint-b"))]


def nsf_remove(m: Any, a: argparse.Namespace) -> None:
    if a.name not in _nsf_state(m):
        raise CliError(f"no NSF {a.name!r} in the inventory")
    users = _users_of_nsf(m, a.name)
    if users:
        raise CliError(f"NSF {a.name} is used by {', '.join(users)}: remove those first "
                       "(e.g. 'policy delete NAME --wait')")
    pending = _deleting_on(m, a.name)
    if pending:
        names = [text(p, "name") for p in pending]
        if not a.wait:
            errs = "; ".join(f"{text(p, 'name')}: {text(p, 'error-message')}"
                             for p in pending if text(p, "error-message"))
            raise CliError(f"NSF {a.name} still holds entries of {', '.join(names)} being "
                           "removed" + (f" ({errs})" if errs else "") + "; retry when "
                           "they are gone, or use --wait")
        _wait_gone(m, names, a.timeout, a.quiet)
    nsf = _e("nsf", None, _e("name", a.name))
    nsf.set(OP, "delete")
    _edit(m, _config(_e("nsfs", None, nsf)))
    if a.wait:
        wait(f"removal of NSF {a.name}",
             lambda: ((gone := a.name not in _nsf_state(m)), None,
                      "removed" if gone else "closing its session"), a.timeout, a.quiet)
    print(f"NSF {a.name} removed")


# ---- crypto profiles ----------------------------------------------------------------------


def _profile_elem(name: str, a: argparse.Namespace) -> etree._Element:
    prof = _e("crypto-profile", None, _e("name", name))
    if a.encryption:
        prof.append(_e("encryption-algorithm", ENCRYPTION[a.encryption]))
    key_length = a.key_length
    if key_length is None and a.encryption == "null":
        key_length = 0  # NULL encryption has no key (RFC 9061 allows it for tests)
    if key_length is not None:
        prof.append(_e("key-length", key_length))
    if a.integrity:
        prof.append(_e("integrity-algorithm", INTEGRITY[a.integrity]))
    return prof


def _profile_options(a: argparse.Namespace) -> dict[str, str]:
    """The profile settings given on the command line, as the YANG leaves hold them."""
    out: dict[str, str] = {}
    if a.encryption:
        out["encryption-algorithm"] = str(ENCRYPTION[a.encryption])
    if a.key_length is not None or a.encryption == "null":
        out["key-length"] = str(a.key_length if a.key_length is not None else 0)
    if a.integrity:
        out["integrity-algorithm"] = str(INTEGRITY[a.integrity])
    return out


def _profiles(m: Any) -> dict[str, etree._Element]:
    cfg = _running(m, f'<flow-protection xmlns="{FP}"><crypto-profiles/></flow-protection>')
    return {text(p, "name"): p for p in cfg.iter(Q + "crypto-profile")}


def profile_set(m: Any, a: argparse.Namespace) -> None:
    prof = _profile_elem(a.name, a)
    if a.soft_time is not None:
        prof.append(_e("lifetime-soft", None, _e("time", a.soft_time)))
    if a.hard_time is not None:
        prof.append(_e("lifetime-hard", None, _e("time", a.hard_time)))
    users = [text(p, "name") for p in _running(m, f'<flow-protection xmlns="{FP}"/>')
             .iter(Q + "policy") if text(p, "crypto-profile") == a.name]
    _edit(m, _config(_e("crypto-profiles", None, prof)))
    print(f"crypto profile {a.name} saved" + (f"; policies using it are re-created with the "
                                              f"new settings: {', '.join(users)}" if users
                                              else ""))


def profile_list(m: Any, a: argparse.Namespace) -> None:
    profs = list(_profiles(m).values())
    rows = [[text(p, "name"), text(p, "encryption-algorithm", "20"),
             text(p, "key-length", "128"), text(p, "integrity-algorithm", "0"),
             text(p, "lifetime-soft/time", "3240"), text(p, "lifetime-hard/time", "3600")]
            for p in profs]
    emit(a, {"crypto-profiles": [as_dict(p) for p in profs]},
         table(rows, ["PROFILE", "ENCR", "KEY", "INTEG", "SOFT", "HARD"]) if rows
         else "no crypto profiles")


# ---- policies ---------------------------------------------------------------------------------


def policy_apply(m: Any, a: argparse.Namespace) -> None:
    existing = _profiles(m).get(a.profile)
    wanted = _profile_options(a)
    children: list[etree._Element] = []
    if existing is None:
        children.append(_e("crypto-profiles", None, _profile_elem(a.profile, a)))
    else:
        differ = {k: v for k, v in wanted.items() if text(existing, k) != v}
        if differ:
            raise CliError(
                f"crypto profile {a.profile!r} exists with other settings "
                f"({', '.join(sorted(differ))}); it is shared by other policies, so "
                "'policy apply' does not change it: change it for all its policies with "
                f"'i2nsf-controller profile set {a.profile} ...', or give this policy its "
                "own profile with --profile NEW")
    ea = _e("endpoint-a", None, _e("nsf", a.endpoint_a), *(_e("prefix", p) for p in a.a_prefix))
    eb = _e("endpoint-b", None, _e("nsf", a.endpoint_b), *(_e("prefix", p) for p in a.b_prefix))
    pol = _e("policy", None, _e("name", a.name), ea, eb, _e("inner-protocol", a.protocol),
             _e("mode", a.mode), _e("crypto-profile", a.profile))
    # lifetimes are per policy (overrides of the profile's): the profile stays as it is
    if a.soft_time is not None:
        pol.append(_e("lifetime-soft", None, _e("time", a.soft_time)))
    if a.hard_time is not None:
        pol.append(_e("lifetime-hard", None, _e("time", a.hard_time)))
    if a.on_demand:
        pol.append(_e("ikeless", None, _e("on-demand", "true")))
    if a.ike:
        ike = _e("ike", None, _e("auth-method", a.ike))
        if a.psk_file:
            ike.append(_e("pre-shared-key-file", os.path.abspath(a.psk_file)))
        pol.append(ike)
    pol.set(OP, "replace")
    _edit(m, _config(*children, _e("policies", None, pol)))
    if a.wait:
        _wait_policies(m, [a.name], a.timeout, a.quiet)
        print(f"policy {a.name} active")
    else:
        print(f"policy {a.name} applied; the controller is provisioning it "
              f"(see 'i2nsf-controller policy show {a.name}', or use --wait)")


def policy_list(m: Any, a: argparse.Namespace) -> None:
    pols = list(_policies(_state(m)).values())
    rows = [[text(p, "name"), f"{text(p, 'endpoint-a')} <-> {text(p, 'endpoint-b')}",
             text(p, "status"), text(p, "generation", "-"), until(text(p, "next-rekey")),
             text(p, "error-message")] for p in pols]
    emit(a, {"policies": [as_dict(p, drop=("sa",)) for p in pols]},
         table(rows, ["POLICY", "NSFS", "STATUS", "GEN", "NEXT REKEY", "ERROR"])
         if rows else "no policies")


def sa_rows(st: etree._Element, policy: str | None) -> list[list[str]]:
    rows = []
    for p in st.iter(Q + "policy"):
        if policy and text(p, "name") != policy:
            continue
        for s in p.iter(Q + "sa"):
            spi = int(text(s, "spi", "0"))
            rows.append([text(p, "name"), text(s, "nsf"), text(s, "direction"), f"0x{spi:08x}",
                         f"{text(s, 'source')} -> {text(s, 'destination')}",
                         text(s, "generation"), age(text(s, "created")),
                         until(text(s, "next-rekey"))])
    return rows


SA_HEADER = ["POLICY", "NSF", "DIR", "SPI", "OUTER", "GEN", "AGE", "REKEY"]


def policy_show(m: Any, a: argparse.Namespace) -> None:
    st = _state(m)
    pol = _policies(st).get(a.name)
    if pol is None:
        raise CliError(f"no policy {a.name!r}")
    if a.json:
        emit(a, as_dict(pol), "")
        return
    print(f"policy      {a.name}")
    if text(pol, "group"):
        print(f"group       {text(pol, 'group')}")
    print(f"endpoints   {text(pol, 'endpoint-a')} <-> {text(pol, 'endpoint-b')}")
    print(f"status      {text(pol, 'status')}")
    if text(pol, "error-message"):
        print(f"error       {text(pol, 'error-message')}")
    print(f"generation  {text(pol, 'generation', '-')}")
    print(f"next rekey  {until(text(pol, 'next-rekey'))}")
    rows = sa_rows(st, a.name)
    print()
    print(table(rows, SA_HEADER) if rows else "no SAs (yet)")


def policy_delete(m: Any, a: argparse.Namespace) -> None:
    if a.name not in _policies(_state(m)):
        raise CliError(f"no policy {a.name!r}")
    pol = _e("policy", None, _e("name", a.name))
    pol.set(OP, "delete")
    _edit(m, _config(_e("policies", None, pol)))
    if a.wait:
        _wait_gone(m, [a.name], a.timeout, a.quiet)
        print(f"policy {a.name} deleted and removed from both NSFs")
    else:
        print(f"policy {a.name} deleted; the controller removes it from both NSFs")


def policy_rekey(m: Any, a: argparse.Namespace) -> None:
    out = _rpc(m, "rekey-policy", policy=a.name)
    gen = int(out.findtext(".//" + Q + "generation") or 0)
    if a.wait:
        _wait_policies(m, [a.name], a.timeout, a.quiet, {a.name: gen})
        print(f"policy {a.name}: rekeyed (generation {gen})")
    else:
        print(f"policy {a.name}: rekey started (generation {gen})")


def sa_list(m: Any, a: argparse.Namespace) -> None:
    st = _state(m)
    sas = [{"policy": text(p, "name"), **as_dict(s)} for p in st.iter(Q + "policy")
           if not a.policy or text(p, "name") == a.policy for s in p.iter(Q + "sa")]
    rows = sa_rows(st, a.policy)
    emit(a, {"sas": sas}, table(rows, SA_HEADER) if rows else "no SAs")


# ---- policy groups ------------------------------------------------------------------------


def _group_policies(st: etree._Element, group: str) -> list[str]:
    return [text(p, "name") for p in st.iter(Q + "policy") if text(p, "group") == group]


def group_add(m: Any, a: argparse.Namespace) -> None:
    if len(set(a.member)) < 2:
        raise CliError("a policy group needs at least two different --member NSFs")
    g = _e("policy-group", None, _e("name", a.name), *(_e("member", n) for n in a.member),
           _e("crypto-profile", a.profile))
    g.set(OP, "replace")
    children = []
    if a.profile not in _profiles(m):
        children.append(_e("crypto-profiles", None, _e("crypto-profile", None,
                                                        _e("name", a.profile))))
    _edit(m, _config(*children, _e("policy-groups", None, g)))
    members = sorted(set(a.member))
    names = [f"{a.name}:{x}:{y}" for i, x in enumerate(members) for y in members[i + 1:]]
    if a.wait:
        _wait_policies(m, names, a.timeout, a.quiet)
        print(f"policy group {a.name}: {len(names)} policies active")
    else:
        print(f"policy group {a.name} saved: {len(names)} policies ({', '.join(names)})")


def group_list(m: Any, a: argparse.Namespace) -> None:
    cfg = _running(m, f'<flow-protection xmlns="{FP}"><policy-groups/></flow-protection>')
    st = _state(m)
    pols = _policies(st)
    groups = []
    rows = []
    for g in cfg.iter(Q + "policy-group"):
        name = text(g, "name")
        members = [(x.text or "").strip() for x in g.iterfind(Q + "member")]
        mine = _group_policies(st, name)
        statuses: dict[str, int] = {}
        for n in mine:
            s = text(pols[n], "status")
            statuses[s] = statuses.get(s, 0) + 1
        groups.append({"name": name, "members": members, "crypto-profile":
                       text(g, "crypto-profile"), "policies": mine, "statuses": statuses})
        rows.append([name, ",".join(members), str(len(mine)),
                     ", ".join(f"{v} {k}" for k, v in sorted(statuses.items())) or "-"])
    emit(a, {"policy-groups": groups}, table(rows, ["GROUP", "MEMBERS", "POLICIES", "STATUS"])
         if rows else "no policy groups")


def group_delete(m: Any, a: argparse.Namespace) -> None:
    cfg = _running(m, f'<flow-protection xmlns="{FP}"><policy-groups/></flow-protection>')
    if a.name not in [text(g, "name") for g in cfg.iter(Q + "policy-group")]:
        raise CliError(f"no policy group {a.name!r}")
    names = _group_policies(_state(m), a.name)
    g = _e("policy-group", None, _e("name", a.name))
    g.set(OP, "delete")
    _edit(m, _config(_e("policy-groups", None, g)))
    if a.wait and names:
        _wait_gone(m, names, a.timeout, a.quiet)
    print(f"policy group {a.name} deleted" + (
        f"; its {len(names)} policies are " + ("removed" if a.wait else "being removed")
        if names else ""))


# ---- road warriors --------------------------------------------------------------------------


def rw_add(m: Any, a: argparse.Namespace) -> None:
    rw = _e("road-warrior", None, _e("name", a.name), _e("gateway", a.gateway),
            _e("identity", a.identity),
            (_e("pool", a.pool) if a.pool else _e("inner-address", a.inner_address)),
            *(_e("prefix", p) for p in a.prefix), _e("crypto-profile", a.profile))
    rw.set(OP, "replace")
    _edit(m, _config(_e("road-warriors", None, rw)))
    print(f"road warrior {a.name} saved; export its credentials with "
          f"'i2nsf-controller roadwarrior export {a.name} --out DIR'")


def rw_export(m: Any, a: argparse.Namespace) -> None:
    from controller.ipsec.ike_bundle import write_bundle

    root = etree.fromstring(m.dispatch(_e("export-road-warrior", None,
                                          _e("name", a.name))).xml.encode())
    bundle = {k: root.findtext(".//" + Q + k) or "" for k in
              ("swanctl-conf", "certificate", "private-key", "ca-certificate")}
    files = write_bundle(bundle, a.out)
    print(f"road warrior {a.name}: wrote {', '.join(str(f) for f in files)}")
    print(f"on the host: SWANCTL_DIR={a.out} swanctl --load-all --file {a.out}/swanctl.conf")


def rw_list(m: Any, a: argparse.Namespace) -> None:
    rws = list(_state(m).iter(Q + "road-warrior"))
    rows = [[text(r, "name"), text(r, "gateway"), text(r, "status"), text(r, "peer") or "-",
             text(r, "error-message")] for r in rws]
    emit(a, {"road-warriors": [as_dict(r) for r in rws]},
         table(rows, ["ROAD WARRIOR", "GATEWAY", "STATUS", "FROM", "ERROR"])
         if rows else "no road warriors")


def rw_remove(m: Any, a: argparse.Namespace) -> None:
    cfg = _running(m, f'<flow-protection xmlns="{FP}"><road-warriors/></flow-protection>')
    if a.name not in [text(r, "name") for r in cfg.iter(Q + "road-warrior")]:
        raise CliError(f"no road warrior {a.name!r}")
    rw = _e("road-warrior", None, _e("name", a.name))
    rw.set(OP, "delete")
    _edit(m, _config(_e("road-warriors", None, rw)))
    if a.wait:
        wait(f"removal of road warrior {a.name}",
             lambda: ((gone := a.name not in [text(r, "name") for r in
                                              _state(m).iter(Q + "road-warrior")]),
                      None, "removed" if gone else "removing"), a.timeout, a.quiet)
    print(f"road warrior {a.name} removed; its credentials no longer authenticate")


# ---- overview -------------------------------------------------------------------------------


def status(m: Any, a: argparse.Namespace) -> int:
    """Exit status 1 when something is failed: a policy or road warrior `failed`, or an
    NSF whose session is not connected."""
    nsfs = list(_nsf_state(m).values())
    st = _state(m)
    problems = []
    for n in nsfs:
        s = text(n, "session/state", "unknown")
        if s != "connected":
            problems.append(f"NSF {text(n, 'name')} {s}"
                            + (f": {text(n, 'session/last-error')}"
                               if text(n, "session/last-error") else ""))
    counts: dict[str, int] = {}
    sas = 0
    for p in st.iter(Q + "policy"):
        s = text(p, "status")
        counts[s] = counts.get(s, 0) + 1
        sas += len(p.findall(Q + "sa"))
        if s == "failed":
            problems.append(f"policy {text(p, 'name')} failed: {text(p, 'error-message')}")
    for r in st.iter(Q + "road-warrior"):
        if text(r, "status") == "failed":
            problems.append(f"road warrior {text(r, 'name')} failed: "
                            f"{text(r, 'error-message')}")
    if a.json:
        emit(a, {"nsfs": [{"name": text(n, "name"), **as_dict(n.find(Q + "session"))}
                          for n in nsfs],
                 "policies": counts, "sas": sas, "problems": problems, "ok": not problems}, "")
        return 1 if problems else 0
    print("NSF sessions:")
    rows = [[text(n, "name"), text(n, "session/state", "-"), age(text(n, "session/since")),
             text(n, "session/reconnect-attempts", "0"), text(n, "session/last-error")]
            for n in nsfs]
    print(table(rows, ["NSF", "STATE", "FOR", "RETRIES", "LAST ERROR"]) if rows else "  none")
    print()
    total = sum(counts.values())
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"policies: {total}" + (f" ({detail})" if detail else ""))
    print(f"SAD entries on NSFs: {sas}")
    if problems:
        print()
        print("problems:")
        for p in problems:
            print(f"  {p}")
    return 1 if problems else 0


def resync(m: Any, a: argparse.Namespace) -> None:
    _rpc(m, "resync-nsf", nsf=a.nsf)
    if not getattr(a, "wait", False):
        print(f"NSF {a.nsf}: resync started")
        return
    names = [text(p, "name") for p in _state(m).iter(Q + "policy")
             if a.nsf in (text(p, "endpoint-a"), text(p, "endpoint-b"))
             and text(p, "status") != "deleting"]
    if names:
        _wait_policies(m, names, a.timeout, a.quiet)
    print(f"NSF {a.nsf}: resynced ({len(names)} policies active)")


def rotate_cert(m: Any, a: argparse.Namespace) -> None:
    out = _rpc(m, "rotate-nsf-certificate", nsf=a.name)
    print(f"NSF {a.name}: new certificate (serial {out.findtext('.//' + Q + 'serial')}) "
          "issued and being pushed")


def rotate_ca(m: Any, a: argparse.Namespace) -> None:
    out = etree.fromstring(m.dispatch(_e("rotate-ca")).xml.encode())
    print(f"new CA certificate (serial {out.findtext('.//' + Q + 'serial')}); "
          "certificates re-issued and being pushed")


COMMANDS: dict[tuple[str, str | None], Callable[[Any, argparse.Namespace], Any]] = {
    ("nsf", "add"): nsf_add, ("nsf", "list"): nsf_list, ("nsf", "remove"): nsf_remove,
    ("nsf", "rotate-cert"): rotate_cert, ("ca", "rotate"): rotate_ca,
    ("profile", "set"): profile_set, ("profile", "list"): profile_list,
    ("policy", "apply"): policy_apply, ("policy", "list"): policy_list,
    ("policy", "show"): policy_show, ("policy", "delete"): policy_delete,
    ("policy", "rekey"): policy_rekey, ("sa", "list"): sa_list,
    ("group", "add"): group_add, ("group", "list"): group_list,
    ("group", "delete"): group_delete,
    ("roadwarrior", "add"): rw_add, ("roadwarrior", "export"): rw_export,
    ("roadwarrior", "list"): rw_list, ("roadwarrior", "remove"): rw_remove,
    ("status", None): status, ("resync", None): resync,
}


def run_client(args: argparse.Namespace) -> int:
    fn = COMMANDS.get((args.command, getattr(args, "sub", None)))
    if fn is None:
        raise CliError(f"unknown command {args.command}", code=2)
    return run_client_with(args, fn)


def run_client_with(args: argparse.Namespace, fn: Callable[[Any, argparse.Namespace], Any]
                    ) -> int:
    """Run `fn(manager, args)` on a session to the controller (also the SFC commands)."""
    from ncclient.operations.rpc import RPCError

    m = connect(args)
    try:
        rc = fn(m, args)
    except RPCError as exc:
        errs = getattr(exc, "errors", None) or [exc]
        for e in errs:
            where = f" (at {e.path})" if getattr(e, "path", None) else ""
            print(f"i2nsf-controller: error: {e.tag}: {e.message}{where}", file=sys.stderr)
        return 1
    finally:
        with contextlib.suppress(Exception):  # the session may already be gone
            m.close_session()
    return rc if isinstance(rc, int) else 0
