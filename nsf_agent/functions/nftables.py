"""nftables for the functions, inside the instance's namespace: an accounting table made once
(every forwarded packet counted, whatever the rules) and the function's rule table, always
replaced whole in one `nft -f` transaction (create, delete, re-create: atomic, so a bad
table leaves the old one in force). Drops are reported through NFLOG (rate limited)."""

from __future__ import annotations

import ipaddress
import json
import subprocess

from nsf_agent.functions.spec import FwRule, Spec

ACCT = "i2nsf_acct"
TABLE = "i2nsf_sf"
NFLOG_GROUP = 1
QUEUE_NUM = 0
# NFLOG prefixes "<kind> <id>": fw <seq> (0 = default action), spoof <n>, ddos <n>
SPOOF_MARTIAN, SPOOF_NOT_ALLOWED = 1, 2
DDOS_SYN, DDOS_RATE = 1, 2
MARTIANS4 = ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/3")
MARTIANS6 = ("::/128", "::1/128", "ff00::/8")


class NftError(RuntimeError):
    pass


def run_nft(text: str) -> None:
    r = subprocess.run(["nft", "-f", "-"], input=text, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise NftError(r.stderr.strip() or f"nft exited {r.returncode}")


def acct_table() -> str:
    return (f"table inet {ACCT} {{\n  counter total {{}}\n"
            "  chain forward {\n    type filter hook forward priority raw; policy accept;\n"
            "    counter name total\n  }\n}\n")


def _split(prefixes: list[str]) -> tuple[list[str], list[str]]:
    v4 = [str(ipaddress.ip_network(p, strict=False)) for p in prefixes if ":" not in p]
    v6 = [str(ipaddress.ip_network(p, strict=False)) for p in prefixes if ":" in p]
    return v4, v6


def _deny_chain(name: str, prefix: str, verdict: str, report: bool, rate: int) -> str:
    log = (f"    limit rate {rate}/second burst 5 packets log group {NFLOG_GROUP} "
           f'prefix "{prefix}" queue-threshold 1\n') if report else ""
    return f"  chain {name} {{\n{log}    counter name dropped\n    {verdict}\n  }}\n"


def _fw_match(r: FwRule) -> str:
    parts: list[str] = []
    for key, pfx in (("saddr", r.source_prefix), ("daddr", r.destination_prefix)):
        if pfx:
            net = ipaddress.ip_network(pfx, strict=False)
            parts.append(f"{'ip' if net.version == 4 else 'ip6'} {key} {net}")
    if r.protocol is not None:
        parts.append(f"meta l4proto {r.protocol}")
    for key, ports in (("sport", r.source_port), ("dport", r.destination_port)):
        if ports:
            parts.append(f"th {key} {ports}")
    if r.ct_state:
        parts.append("ct state { " + ", ".join(r.ct_state) + " }")
    return " ".join(parts)


def _firewall(spec: Spec) -> tuple[list[str], list[str], list[str]]:
    fw = spec.firewall
    counters, rules, chains = ["r0"], [], []
    if fw.accept_established:
        counters.append("established")
        rules.append("ct state established,related counter name established accept")
    for r in sorted(fw.rules, key=lambda r: r.seq):
        c = f"r{r.seq}"
        counters.append(c)
        match = _fw_match(r)
        if r.action == "accept":
            rules.append(f"{match} counter name {c} accept".strip())
        else:
            verdict = "reject with tcp reset" if r.action == "reject" and r.protocol == 6 \
                else ("reject" if r.action == "reject" else "drop")
            chains.append(_deny_chain(f"deny_{r.seq}", f"fw {r.seq}", verdict, r.report,
                                      spec.report_rate))
            rules.append(f"{match} counter name {c} jump deny_{r.seq}".strip())
    if fw.default_action == "drop":
        chains.append(_deny_chain("deny_0", "fw 0", "drop", True, spec.report_rate))
        rules.append("counter name r0 jump deny_0")
    else:
        rules.append("counter name r0 accept")
    return counters, rules, chains


def _anti_spoofing(spec: Spec) -> tuple[list[str], list[str], list[str]]:
    a = spec.anti_spoofing
    counters = ["martian", "not_allowed"]
    rules: list[str] = []
    chains = [_deny_chain("deny_martian", f"spoof {SPOOF_MARTIAN}", "drop", True,
                          spec.report_rate),
              _deny_chain("deny_not_allowed", f"spoof {SPOOF_NOT_ALLOWED}", "drop", True,
                          spec.report_rate)]
    if a.drop_martians:
        rules.append("ip saddr { " + ", ".join(MARTIANS4) + " } counter name martian "
                     "jump deny_martian")
        rules.append("ip6 saddr { " + ", ".join(MARTIANS6) + " } counter name martian "
                     "jump deny_martian")
        rules.append("fib saddr type { local, broadcast, multicast } counter name martian "
                     "jump deny_martian")
    if a.drop_martians or a.bogon_prefix:
        # uRPF-style: a source whose route is a blackhole (the bogons) or missing
        rules.append("fib saddr oif missing counter name martian jump deny_martian")
    if a.allowed_source_prefix:
        v4, v6 = _split(a.allowed_source_prefix)
        for fam, key, nets in (("ipv4", "ip", v4), ("ipv6", "ip6", v6)):
            cond = f"{key} saddr != {{ {', '.join(nets)} }} " if nets else ""
            rules.append(f"meta nfproto {fam} {cond}counter name not_allowed "
                         "jump deny_not_allowed")
    return counters, rules, chains


def _ddos(spec: Spec) -> tuple[list[str], list[str], list[str], list[str]]:
    d = spec.ddos
    counters = ["syn_dropped", "rate_dropped"]
    sets = []
    for fam, typ in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
        for kind in ("syn", "src"):
            sets.append(f"  set {kind}{fam} {{ type {typ}; flags dynamic,timeout; timeout 60s; "
                        "size 65536; }\n")
    rules: list[str] = []
    v4, v6 = _split(d.exempt_prefix)
    for key, nets in (("ip", v4), ("ip6", v6)):
        if nets:
            rules.append(f"{key} saddr {{ {', '.join(nets)} }} accept")
    syn = "tcp flags & (fin|syn|rst|ack) == syn"
    for fam, key in (("4", "ip"), ("6", "ip6")):
        rules.append(f"{syn} update @syn{fam} {{ {key} saddr limit rate over "
                     f"{d.syn_per_source_pps}/second burst {d.syn_burst} packets }} "
                     "counter name syn_dropped jump deny_syn")
    for fam, key in (("4", "ip"), ("6", "ip6")):
        rules.append(f"update @src{fam} {{ {key} saddr limit rate over {d.per_source_pps}"
                     f"/second burst {d.per_source_burst} packets }} "
                     "counter name rate_dropped jump deny_rate")
    chains = [_deny_chain("deny_syn", f"ddos {DDOS_SYN}", "drop", True, spec.report_rate),
              _deny_chain("deny_rate", f"ddos {DDOS_RATE}", "drop", True, spec.report_rate)]
    return counters, rules, chains, sets


def rule_table(spec: Spec) -> str:
    """The whole rule table of the function, as one replace transaction."""
    counters: list[str] = []
    rules: list[str] = []
    chains: list[str] = []
    sets: list[str] = []
    if spec.type == "firewall":
        counters, rules, chains = _firewall(spec)
    elif spec.type == "anti-spoofing":
        counters, rules, chains = _anti_spoofing(spec)
    elif spec.type == "ddos":
        counters, rules, chains, sets = _ddos(spec)
    body = "".join(f"  counter {c} {{}}\n" for c in ["dropped", *counters])
    body += "".join(sets)
    body += "".join(chains)
    body += ("  chain forward {\n    type filter hook forward priority filter; policy accept;\n"
             + "".join(f"    {r}\n" for r in rules) + "  }\n")
    return f"table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n{body}}}\n"


def apply(spec: Spec) -> None:
    run_nft(rule_table(spec))


def counters() -> dict[str, tuple[int, int]]:
    """Named counters of both tables: name -> (packets, bytes)."""
    r = subprocess.run(["nft", "-j", "list", "counters"], capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        raise NftError(r.stderr.strip())
    out: dict[str, tuple[int, int]] = {}
    for item in json.loads(r.stdout).get("nftables", []):
        c = item.get("counter")
        if c and c.get("table") in (ACCT, TABLE):
            out[c["name"]] = (int(c.get("packets", 0)), int(c.get("bytes", 0)))
    return out


def queue_rules(bypass: bool, remove: bool = False) -> None:
    """Feed every forwarded packet to NFQUEUE. nft's own `queue` expression is not in every
    kernel (CONFIG_NFT_QUEUE); the xtables NFQUEUE target through iptables-nft (nft_compat)
    is, and lives in the same nftables ruleset."""
    for tool in ("iptables-nft", "ip6tables-nft"):
        if not remove:  # a restarted process in the same namespace: no second hook
            subprocess.run([tool, "-w", "-F", "FORWARD"], capture_output=True, check=False)
        args = [tool, "-w", "-D" if remove else "-A", "FORWARD", "-j", "NFQUEUE",
                "--queue-num", str(QUEUE_NUM)]
        if bypass:
            args.append("--queue-bypass")
        r = subprocess.run(args, capture_output=True, text=True, check=False)
        if r.returncode != 0 and not remove:
            raise NftError(f"{tool}: {r.stderr.strip()}")
