"""`i2nsf-controller`: run the I2NSF security controller, and drive a running one.

`serve` runs the controller. Every other command is a NETCONF client (ncclient) of the
running controller's northbound interface — the same `i2nsf-flow-policy` module any
NETCONF tool can use; there is no second API.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lxml import etree

from netconf_core import __version__
from netconf_core.daemon import serve_until_signalled, setup_logging

log = logging.getLogger("controller")

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"

# IKEv2 transform ids (RFC 9061 / IANA) for readable --encryption/--integrity values.
ENCRYPTION = {"aes-gcm-16": 20, "aes-gcm-8": 18, "aes-gcm-12": 19, "aes-cbc": 12,
              "aes-ctr": 13, "chacha20-poly1305": 28, "null": 11}
INTEGRITY = {"none": 0, "hmac-sha1-96": 2, "hmac-sha2-256-128": 12,
             "hmac-sha2-384-192": 13, "hmac-sha2-512-256": 14}


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# ---- argument parsing ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="i2nsf-controller",
        description="I2NSF security controller: provisions IPsec flow protection "
        "(RFC 9061, IKE-less) on NSF agents over NETCONF, and rekeys it forever. "
        "'serve' runs it; the other commands talk to a running controller over its "
        "NETCONF interface.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--host", default=os.environ.get("I2NSF_CONTROLLER_HOST", "127.0.0.1"),
                   help="controller address (default 127.0.0.1, env I2NSF_CONTROLLER_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("I2NSF_CONTROLLER_PORT",
                                                                  "8300")),
                   help="controller NETCONF port (default 8300)")
    p.add_argument("--user", "-u", default=os.environ.get("I2NSF_USER", "admin"),
                   help="user name (default admin, env I2NSF_USER)")
    p.add_argument("--password-file", type=Path,
                   help="file whose first line is the password (else env I2NSF_PASSWORD)")
    p.add_argument("--key", "-i", type=Path, help="SSH private key for public key login")
    p.add_argument("--host-key", help="pin the controller's host key (base64 of the OpenSSH "
                   "public key, or a 'ssh-ed25519 AAAA...' line); default: not verified")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("serve", help="run the controller",
                       description="Serve NETCONF northbound and manage the NSFs until "
                       "SIGINT/SIGTERM.")
    s.add_argument("-c", "--config", type=Path, required=True, help="controller TOML file")
    s.add_argument("--ready-file", help="write the bound port here once serving")
    s.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    s.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="text (default) or json: one JSON object per line (journald, log "
                   "collectors)")

    nsf = sub.add_parser("nsf", help="the NSF inventory").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    a = nsf.add_parser("add", help="add or update an NSF")
    a.add_argument("name")
    a.add_argument("--address", required=True, help="management address of the agent")
    a.add_argument("--mgmt-port", type=int, default=830, help="agent NETCONF port (830)")
    a.add_argument("--username", required=True, help="SSH user on the agent")
    cred = a.add_mutually_exclusive_group(required=True)
    cred.add_argument("--private-key-file", help="controller-side SSH key for the agent")
    cred.add_argument("--password-file", dest="nsf_password_file",
                      help="controller-side file holding the agent password")
    hk = a.add_mutually_exclusive_group(required=True)
    hk.add_argument("--host-key", dest="nsf_host_key",
                    help="the agent's pinned host key: 'ssh-ed25519 AAAA...' or SHA256:...")
    hk.add_argument("--host-key-file", type=Path, help="file holding the agent's public key")
    a.add_argument("--data-plane-address", required=True, help="tunnel endpoint address")
    a.add_argument("--prefix", action="append", default=[], help="protected prefix "
                   "(repeatable)")
    a.add_argument("--nat-public-address", help="the NSF is behind NAT with this address")
    a.add_argument("--nat-public-port", type=int, help="NAT's public UDP port (4500)")
    a.add_argument("--dataplane", choices=["kernel", "userspace"], default="kernel")
    nsf.add_parser("list", help="list NSFs and their session state")
    r = nsf.add_parser("remove", help="remove an NSF (its policies must be gone)")
    r.add_argument("name")
    rc = nsf.add_parser("rotate-cert", help="IKE case: issue a new key and certificate to "
                        "an NSF and push them (established IKE SAs stay up)")
    rc.add_argument("name")

    ca = sub.add_parser("ca", help="the controller's certificate authority (IKE case)"
                        ).add_subparsers(dest="sub", metavar="ACTION", required=True)
    ca.add_parser("rotate", help="new CA key and certificate; re-issue and push every "
                  "certificate (the previous CA stays trusted)")
    rw = sub.add_parser("roadwarrior", help="remote hosts connecting to a gateway (IKE case)"
                        ).add_subparsers(dest="sub", metavar="ACTION", required=True)
    rwa = rw.add_parser("add", help="add or replace a road warrior")
    rwa.add_argument("name")
    rwa.add_argument("--gateway", required=True, help="gateway NSF")
    rwa.add_argument("--identity", required=True, help="the host's IKE identity (FQDN)")
    inner = rwa.add_mutually_exclusive_group(required=True)
    inner.add_argument("--inner-address", help="the host's fixed address inside the tunnel "
                       "(configured on the host)")
    inner.add_argument("--pool", help="prefix the gateway hands the host a virtual IP "
                       "address from")
    rwa.add_argument("--prefix", action="append", default=[], help="network behind the "
                     "gateway (default: its protected prefixes)")
    rwa.add_argument("--profile", default="default", help="crypto profile")
    rwe = rw.add_parser("export", help="write the host's credential bundle (swanctl.conf, "
                        "key, certificate, CA certificate) for 'swanctl --load-all'")
    rwe.add_argument("name")
    rwe.add_argument("--out", type=Path, required=True, help="directory to write")
    rw.add_parser("list", help="road warriors and whether they are connected")

    pol = sub.add_parser("policy", help="flow protection policies").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    pa = pol.add_parser("apply", help="create or replace a policy between two NSFs")
    pa.add_argument("name")
    pa.add_argument("-a", "--endpoint-a", required=True, help="NSF of end a")
    pa.add_argument("-b", "--endpoint-b", required=True, help="NSF of end b")
    pa.add_argument("--a-prefix", action="append", default=[], help="prefix of end a "
                    "(default: the NSF's protected prefixes)")
    pa.add_argument("--b-prefix", action="append", default=[], help="prefix of end b")
    pa.add_argument("--profile", default="default", help="crypto profile (created with "
                    "the options below if it does not exist; default 'default')")
    pa.add_argument("--encryption", choices=sorted(ENCRYPTION), help="profile encryption")
    pa.add_argument("--key-length", type=int, help="profile key length in bits (0 with "
                    "--encryption null, which implies it)")
    pa.add_argument("--integrity", choices=sorted(INTEGRITY), help="profile integrity")
    pa.add_argument("--soft-time", type=int, help="soft lifetime (s): rekey before it")
    pa.add_argument("--hard-time", type=int, help="hard lifetime (s)")
    pa.add_argument("--mode", choices=["tunnel", "transport"], default="tunnel")
    pa.add_argument("--protocol", default="any", help="inner protocol number or 'any'")
    pa.add_argument("--on-demand", action="store_true",
                    help="install SPD entries only; create SAs on the first sadb-acquire")
    pa.add_argument("--ike", choices=["psk", "certificate"],
                    help="IKE case: the NSFs negotiate with IKEv2, authenticated by a "
                    "generated pre-shared key or by certificates from the controller's CA")
    pa.add_argument("--psk-file", help="IKE case: pre-shared key file on the controller host "
                    "instead of a generated key")
    pol.add_parser("list", help="list policies with status and generation")
    sh = pol.add_parser("show", help="a policy's configuration, status and SAs")
    sh.add_argument("name")
    d = pol.add_parser("delete", help="delete a policy (removed from both NSFs)")
    d.add_argument("name")
    rk = pol.add_parser("rekey", help="rekey a policy now (make-before-break)")
    rk.add_argument("name")

    sa = sub.add_parser("sa", help="security associations").add_subparsers(
        dest="sub", metavar="ACTION", required=True)
    sl = sa.add_parser("list", help="every SA on every NSF (SPI, direction, age, next rekey)")
    sl.add_argument("--policy", help="only this policy's SAs")

    sub.add_parser("status", help="controller overview: NSF sessions, policies")
    rs = sub.add_parser("resync", help="rewrite an NSF's entries from the controller's store")
    rs.add_argument("nsf")
    from controller import cli_setup

    cli_setup.add_parsers(sub)
    kg = sub.add_parser("keygen", help="write a new ed25519 SSH key (for the controller's "
                        "logins to agents, or an agent's host key) and print its public key",
                        description="Write an OpenSSH ed25519 private key to PATH (mode "
                        "0600) and its public key to PATH.pub; print the public key line "
                        "(what 'nsf add --host-key' or an agent's authorized_keys want).")
    kg.add_argument("path", type=Path)
    kg.add_argument("--public", action="store_true",
                    help="only print the public key of an existing private key at PATH")
    return p


# ---- serve --------------------------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from controller.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"i2nsf-controller: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format == "json")
    if not cfg.users:
        log.warning("no [[users]] configured: nobody can use the northbound interface")
    asyncio.run(_serve(cfg, args.ready_file))
    return 0


async def _serve(cfg: Any, ready_file: str | None) -> None:
    from controller.server import ControllerServer

    ctl = ControllerServer(cfg)
    await serve_until_signalled(ctl.start, ctl.stop, lambda: ctl.port, ready_file)


# ---- client side --------------------------------------------------------------------------------


def _connect(args: argparse.Namespace) -> Any:
    import ncclient.transport.session as nc_session
    from ncclient import manager
    from ncclient.transport.errors import AuthenticationError, SSHError

    nc_session.TICK = 0.001  # ncclient otherwise sleeps up to 100 ms per rpc
    logging.getLogger("ncclient").setLevel(logging.WARNING)
    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise CliError(f"cannot read password file {args.password_file}: {exc}") from exc
    else:
        password = os.environ.get("I2NSF_PASSWORD")
    if password is None and args.key is None:
        raise CliError("no credentials: give --password-file, --key or set I2NSF_PASSWORD")
    kw: dict[str, Any] = dict(host=args.host, port=args.port, username=args.user,
                              password=password, allow_agent=False, look_for_keys=False,
                              timeout=30, hostkey_verify=False)
    if args.key:
        kw["key_filename"] = str(args.key)
    if args.host_key:
        parts = args.host_key.split()
        kw["hostkey_b64"] = parts[1] if len(parts) > 1 else parts[0]
    try:
        return manager.connect(**kw)
    except AuthenticationError as exc:
        raise CliError(f"authentication as {args.user!r} failed: {exc}") from exc
    except (SSHError, OSError) as exc:
        raise CliError(f"cannot reach the controller at {args.host}:{args.port}: {exc}"
                       ) from exc


def _e(tag: str, text: object | None = None, *children: etree._Element) -> etree._Element:
    el = etree.Element(Q + tag, nsmap={None: FP})
    if text is not None:
        el.text = str(text)
    for c in children:
        el.append(c)
    return el


def _config(*children: etree._Element) -> etree._Element:
    conf = etree.Element(f"{{{NC_NS}}}config", nsmap={"nc": NC_NS})
    conf.append(_e("flow-protection", None, *children))
    return conf


def _edit(m: Any, conf: etree._Element) -> None:
    m.edit_config(target="running", config=conf)


def _get(m: Any, subtree: str) -> etree._Element:
    reply = m.get(filter=("subtree", subtree))
    return etree.fromstring(reply.xml.encode())


def _t(el: etree._Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    v = el.findtext("/".join(Q + p for p in path.split("/")))
    return v.strip() if v is not None else default


def _table(rows: list[list[str]], header: list[str]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _age(ts: str) -> str:
    if not ts:
        return "-"
    try:
        t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = (dt.datetime.now(dt.UTC) - t).total_seconds()
    return _dur(secs)


def _until(ts: str) -> str:
    if not ts:
        return "-"
    try:
        t = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return ts
    secs = (t - dt.datetime.now(dt.UTC)).total_seconds()
    return "now" if secs <= 0 else "in " + _dur(secs)


def _dur(secs: float) -> str:
    secs = max(0, int(secs))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"


def _nsf_add(m: Any, a: argparse.Namespace) -> None:
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
    nsf.set(f"{{{NC_NS}}}operation", "replace")
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


def _nsf_list(m: Any) -> None:
    data = _get(m, f'<flow-protection xmlns="{FP}"><nsfs/></flow-protection>')
    rows = []
    for n in data.iter(Q + "nsf"):
        rows.append([
            _t(n, "name"), f"{_t(n, 'management/address')}:{_t(n, 'management/port', '830')}",
            _t(n, "data-plane-address"),
            ",".join((p.text or "") for p in n.iterfind(Q + "protected-prefix")) or "-",
            _t(n, "session/state", "-"), _t(n, "session/last-error") or ""])
    print(_table(rows, ["NSF", "MANAGEMENT", "DATA PLANE", "PREFIXES", "SESSION",
                        "LAST ERROR"]) if rows else "no NSFs")


def _nsf_remove(m: Any, name: str) -> None:
    nsf = _e("nsf", None, _e("name", name))
    nsf.set(f"{{{NC_NS}}}operation", "delete")
    _edit(m, _config(_e("nsfs", None, nsf)))
    print(f"NSF {name} removed")


def _policy_apply(m: Any, a: argparse.Namespace) -> None:
    prof = _e("crypto-profile", None, _e("name", a.profile))
    if a.encryption:
        prof.append(_e("encryption-algorithm", ENCRYPTION[a.encryption]))
    key_length = a.key_length
    if key_length is None and a.encryption == "null":
        key_length = 0  # NULL encryption has no key (RFC 9061 allows it for tests)
    if key_length is not None:  # 0 too: it is the only value NULL encryption takes
        prof.append(_e("key-length", key_length))
    if a.integrity:
        prof.append(_e("integrity-algorithm", INTEGRITY[a.integrity]))
    if a.soft_time is not None:
        prof.append(_e("lifetime-soft", None, _e("time", a.soft_time)))
    if a.hard_time is not None:
        prof.append(_e("lifetime-hard", None, _e("time", a.hard_time)))
    ea = _e("endpoint-a", None, _e("nsf", a.endpoint_a), *(_e("prefix", p) for p in a.a_prefix))
    eb = _e("endpoint-b", None, _e("nsf", a.endpoint_b), *(_e("prefix", p) for p in a.b_prefix))
    pol = _e("policy", None, _e("name", a.name), ea, eb, _e("inner-protocol", a.protocol),
             _e("mode", a.mode), _e("crypto-profile", a.profile))
    if a.on_demand:
        pol.append(_e("ikeless", None, _e("on-demand", "true")))
    if a.ike:
        ike = _e("ike", None, _e("auth-method", a.ike))
        if a.psk_file:
            ike.append(_e("pre-shared-key-file", os.path.abspath(a.psk_file)))
        pol.append(ike)
    pol.set(f"{{{NC_NS}}}operation", "replace")
    _edit(m, _config(_e("crypto-profiles", None, prof), _e("policies", None, pol)))
    print(f"policy {a.name} applied; the controller is provisioning it "
          f"(see 'i2nsf-controller policy show {a.name}')")


def _state(m: Any) -> etree._Element:
    return _get(m, f'<flow-protection-state xmlns="{FP}"/>')


def _policy_list(m: Any) -> None:
    st = _state(m)
    rows = []
    for p in st.iter(Q + "policy"):
        rows.append([_t(p, "name"), f"{_t(p, 'endpoint-a')} <-> {_t(p, 'endpoint-b')}",
                     _t(p, "status"), _t(p, "generation", "-"), _until(_t(p, "next-rekey")),
                     _t(p, "error-message")])
    print(_table(rows, ["POLICY", "NSFS", "STATUS", "GEN", "NEXT REKEY", "ERROR"])
          if rows else "no policies")


def _sa_rows(st: etree._Element, policy: str | None) -> list[list[str]]:
    rows = []
    for p in st.iter(Q + "policy"):
        if policy and _t(p, "name") != policy:
            continue
        for s in p.iter(Q + "sa"):
            spi = int(_t(s, "spi", "0"))
            rows.append([_t(p, "name"), _t(s, "nsf"), _t(s, "direction"), f"0x{spi:08x}",
                         f"{_t(s, 'source')} -> {_t(s, 'destination')}", _t(s, "generation"),
                         _age(_t(s, "created")), _until(_t(s, "next-rekey"))])
    return rows


SA_HEADER = ["POLICY", "NSF", "DIR", "SPI", "OUTER", "GEN", "AGE", "REKEY"]


def _policy_show(m: Any, name: str) -> None:
    st = _state(m)
    pol = next((p for p in st.iter(Q + "policy") if _t(p, "name") == name), None)
    if pol is None:
        raise CliError(f"no policy {name!r}")
    print(f"policy      {name}")
    if _t(pol, "group"):
        print(f"group       {_t(pol, 'group')}")
    print(f"endpoints   {_t(pol, 'endpoint-a')} <-> {_t(pol, 'endpoint-b')}")
    print(f"status      {_t(pol, 'status')}")
    if _t(pol, "error-message"):
        print(f"error       {_t(pol, 'error-message')}")
    print(f"generation  {_t(pol, 'generation', '-')}")
    print(f"next rekey  {_until(_t(pol, 'next-rekey'))}")
    rows = _sa_rows(st, name)
    print()
    print(_table(rows, SA_HEADER) if rows else "no SAs (yet)")


def _policy_delete(m: Any, name: str) -> None:
    pol = _e("policy", None, _e("name", name))
    pol.set(f"{{{NC_NS}}}operation", "delete")
    _edit(m, _config(_e("policies", None, pol)))
    print(f"policy {name} deleted; the controller removes it from both NSFs")


def _rpc(m: Any, name: str, arg: str, value: str) -> etree._Element:
    el = _e(name, None, _e(arg, value))
    reply = m.dispatch(el)
    return etree.fromstring(reply.xml.encode())


def _rw_add(m: Any, a: argparse.Namespace) -> None:
    rw = _e("road-warrior", None, _e("name", a.name), _e("gateway", a.gateway),
            _e("identity", a.identity),
            (_e("pool", a.pool) if a.pool else _e("inner-address", a.inner_address)),
            *(_e("prefix", p) for p in a.prefix), _e("crypto-profile", a.profile))
    rw.set(f"{{{NC_NS}}}operation", "replace")
    _edit(m, _config(_e("road-warriors", None, rw)))
    print(f"road warrior {a.name} saved; export its credentials with "
          f"'i2nsf-controller roadwarrior export {a.name} --out DIR'")


def _rw_export(m: Any, name: str, out: Path) -> None:
    from controller.ipsec.ike_bundle import write_bundle

    reply = m.dispatch(_e("export-road-warrior", None, _e("name", name)))
    root = etree.fromstring(reply.xml.encode())
    bundle = {k: root.findtext(".//" + Q + k) or "" for k in
              ("swanctl-conf", "certificate", "private-key", "ca-certificate")}
    files = write_bundle(bundle, out)
    print(f"road warrior {name}: wrote {', '.join(str(f) for f in files)}")
    print(f"on the host: SWANCTL_DIR={out} swanctl --load-all --file {out}/swanctl.conf")


def _rw_list(m: Any) -> None:
    st = _state(m)
    rows = [[_t(r, "name"), _t(r, "gateway"), _t(r, "status"), _t(r, "peer") or "-",
             _t(r, "error-message")] for r in st.iter(Q + "road-warrior")]
    print(_table(rows, ["ROAD WARRIOR", "GATEWAY", "STATUS", "FROM", "ERROR"])
          if rows else "no road warriors")


def _status(m: Any) -> None:
    data = _get(m, f'<flow-protection xmlns="{FP}"><nsfs/></flow-protection>')
    st = _state(m)
    print("NSF sessions:")
    rows = [[_t(n, "name"), _t(n, "session/state", "-"), _age(_t(n, "session/since")),
             _t(n, "session/reconnect-attempts", "0"), _t(n, "session/last-error")]
            for n in data.iter(Q + "nsf")]
    print(_table(rows, ["NSF", "STATE", "FOR", "RETRIES", "LAST ERROR"]) if rows else "  none")
    counts: dict[str, int] = {}
    sas = 0
    for p in st.iter(Q + "policy"):
        counts[_t(p, "status")] = counts.get(_t(p, "status"), 0) + 1
        sas += len(p.findall(Q + "sa"))
    print()
    total = sum(counts.values())
    detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    print(f"policies: {total}" + (f" ({detail})" if detail else ""))
    print(f"SAD entries on NSFs: {sas}")


def _run_client(args: argparse.Namespace) -> int:
    from ncclient.operations.rpc import RPCError

    m = _connect(args)
    try:
        cmd, sub = args.command, getattr(args, "sub", None)
        if cmd == "nsf" and sub == "add":
            _nsf_add(m, args)
        elif cmd == "nsf" and sub == "list":
            _nsf_list(m)
        elif cmd == "nsf" and sub == "remove":
            _nsf_remove(m, args.name)
        elif cmd == "nsf" and sub == "rotate-cert":
            out = _rpc(m, "rotate-nsf-certificate", "nsf", args.name)
            print(f"NSF {args.name}: new certificate (serial "
                  f"{out.findtext('.//' + Q + 'serial')}) issued and being pushed")
        elif cmd == "ca" and sub == "rotate":
            out = etree.fromstring(m.dispatch(_e("rotate-ca")).xml.encode())
            print(f"new CA certificate (serial {out.findtext('.//' + Q + 'serial')}); "
                  "certificates re-issued and being pushed")
        elif cmd == "roadwarrior" and sub == "add":
            _rw_add(m, args)
        elif cmd == "roadwarrior" and sub == "export":
            _rw_export(m, args.name, args.out)
        elif cmd == "roadwarrior" and sub == "list":
            _rw_list(m)
        elif cmd == "policy" and sub == "apply":
            _policy_apply(m, args)
        elif cmd == "policy" and sub == "list":
            _policy_list(m)
        elif cmd == "policy" and sub == "show":
            _policy_show(m, args.name)
        elif cmd == "policy" and sub == "delete":
            _policy_delete(m, args.name)
        elif cmd == "policy" and sub == "rekey":
            out = _rpc(m, "rekey-policy", "policy", args.name)
            print(f"policy {args.name}: rekey started (generation "
                  f"{out.findtext('.//' + Q + 'generation')})")
        elif cmd == "sa":
            rows = _sa_rows(_state(m), args.policy)
            print(_table(rows, SA_HEADER) if rows else "no SAs")
        elif cmd == "status":
            _status(m)
        elif cmd == "resync":
            _rpc(m, "resync-nsf", "nsf", args.nsf)
            print(f"NSF {args.nsf}: resync started")
    except RPCError as exc:
        errs = getattr(exc, "errors", None) or [exc]
        for e in errs:
            where = f" (at {e.path})" if getattr(e, "path", None) else ""
            print(f"i2nsf-controller: {e.tag}: {e.message}{where}", file=sys.stderr)
        return 1
    finally:
        try:
            m.close_session()
        except Exception:
            log.debug("close-session failed", exc_info=True)
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    import asyncssh

    path: Path = args.path
    if args.public:
        try:
            key = asyncssh.read_private_key(str(path))
        except (OSError, asyncssh.KeyImportError) as exc:
            print(f"i2nsf-controller: cannot read {path}: {exc}", file=sys.stderr)
            return 1
        print(key.export_public_key().decode().strip())
        return 0
    if path.exists():
        print(f"i2nsf-controller: {path} exists; not overwriting", file=sys.stderr)
        return 1
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    pub = key.export_public_key().decode().strip()
    Path(f"{path}.pub").write_text(pub + "\n")
    print(pub)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _cmd_serve(args)
    if args.command == "keygen":
        return _cmd_keygen(args)
    if args.command in ("init-config", "install-unit"):
        from controller import cli_setup

        return (cli_setup.cmd_init_config(args) if args.command == "init-config"
                else cli_setup.cmd_install_unit(args))
    try:
        return _run_client(args)
    except CliError as exc:
        print(f"i2nsf-controller: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
