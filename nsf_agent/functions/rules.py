"""A documented subset of Suricata's rule language (docs/security-functions.md).

    action proto src sport -> dst dport (option; option; ...)

action: alert | drop | pass. proto: ip, tcp, udp, icmp, or the application protocols http,
tls, dns (the flow must have been identified as that protocol). Addresses: any, an address,
a prefix, a [list], `!` negation, $HOME_NET / $EXTERNAL_NET (both "any" unless given).
Ports: any, N, N:M, N:, :M, [list], `!`. Direction -> or <>.
Options: msg, sid (required, unique), rev, content (with |hex| bytes), nocase, offset,
depth (modifying the content before them), flow (to_server/to_client, established/
not_established: the initiator is the sender of the flow's first packet, a TCP SYN-ACK's
receiver; established = packets seen both ways), the sticky buffers http.host, tls.sni, dns.query
(contents after one match that field), and our advanced actions reclassify:"<result>" and
next-function:"<sf type>". classtype, reference, metadata, priority, gid are accepted and
ignored. Any other keyword is an error (ignoring it would change what the rule matches).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

ACTIONS = ("alert", "drop", "pass")
PROTOS = {"ip": None, "tcp": 6, "udp": 17, "icmp": 1, "http": 6, "tls": 6, "dns": None}
APP_PROTOS = ("http", "tls", "dns")
BUFFERS = ("payload", "http.host", "tls.sni", "dns.query")
IGNORED = ("classtype", "reference", "metadata", "priority", "gid", "rev")
SF_TYPES = ("firewall", "anti-spoofing", "ddos", "ids", "ips", "dpi", "forward")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class RuleSyntaxError(ValueError):
    """A rule that does not parse; the message names the line and the reason."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"rule on line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class AddrSet:
    nets: tuple[Net, ...] = ()  # empty = any
    negated: bool = False
    # (version, network as int, mask as int): what the per-packet check compares
    _ints: tuple[tuple[int, int, int], ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_ints", tuple(
            (n.version, int(n.network_address), int(n.netmask)) for n in self.nets))

    def match(self, version: int, addr: int) -> bool:
        if not self._ints:
            return not self.negated
        hit = any(v == version and addr & m == a for v, a, m in self._ints)
        return hit != self.negated


@dataclass(frozen=True)
class PortSet:
    ranges: tuple[tuple[int, int], ...] = ()  # empty = any
    negated: bool = False

    def match(self, port: int) -> bool:
        if not self.ranges:
            return not self.negated
        hit = any(lo <= port <= hi for lo, hi in self.ranges)
        return hit != self.negated


@dataclass
class Content:
    pattern: bytes
    nocase: bool = False
    offset: int = 0
    depth: int | None = None
    buffer: str = "payload"

    def matches_at(self, start: int, end: int) -> bool:
        """Whether an occurrence at [start, end) of the payload satisfies offset/depth."""
        if start < self.offset:
            return False
        return self.depth is None or end <= self.offset + self.depth

    def find_in(self, data: bytes) -> bool:
        """Search without the multi-pattern engine (short fields: Host, SNI, qname)."""
        hay, pat = (data.lower(), self.pattern.lower()) if self.nocase else (data, self.pattern)
        i = hay.find(pat, self.offset)
        while i >= 0:
            if self.matches_at(i, i + len(pat)):
                return True
            i = hay.find(pat, i + 1)
        return False


@dataclass
class Rule:
    action: str
    proto: str
    src: AddrSet
    sport: PortSet
    dst: AddrSet
    dport: PortSet
    bidirectional: bool
    sid: int
    msg: str = ""
    contents: list[Content] = field(default_factory=list)
    reclassify: str | None = None
    next_function: str | None = None
    flow_dir: str | None = None  # "to_server" | "to_client" (flow keyword)
    flow_state: str | None = None  # "established" | "not_established"
    line: int = 0
    text: str = ""

    @property
    def app(self) -> str | None:
        if self.proto in APP_PROTOS:
            return self.proto
        for c in self.contents:
            if c.buffer != "payload":
                return c.buffer.split(".")[0]
        return None


def _split_options(body: str, line: int) -> list[tuple[str, str | None]]:
    """`k:v; k; ...` with quoted values holding escaped quotes and semicolons."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(body)
    while i < n:
        while i < n and body[i] in " \t":
            i += 1
        if i >= n:
            break
        j = i
        while j < n and body[j] not in ":;":
            j += 1
        key = body[i:j].strip()
        if not key:
            raise RuleSyntaxError(line, f"empty option at column {i + 1}")
        if j >= n:
            raise RuleSyntaxError(line, f"option {key!r} is not terminated by ';'")
        if body[j] == ";":
            out.append((key, None))
            i = j + 1
            continue
        j += 1
        val: list[str] = []
        in_q = False
        while j < n:
            ch = body[j]
            if ch == "\\" and j + 1 < n:
                val.append(body[j:j + 2])
                j += 2
                continue
            if ch == '"':
                in_q = not in_q
            elif ch == ";" and not in_q:
                break
            val.append(ch)
            j += 1
        if j >= n:
            raise RuleSyntaxError(line, f"option {key!r} is not terminated by ';'")
        out.append((key, "".join(val).strip()))
        i = j + 1
    return out


def _unquote(v: str | None, key: str, line: int) -> str:
    if v is None or len(v) < 2 or v[0] != '"' or v[-1] != '"':
        raise RuleSyntaxError(line, f"{key} needs a quoted value")
    return re.sub(r'\\(["\\;:])', r"\1", v[1:-1])


def parse_content(value: str, line: int) -> bytes:
    """Content text with |hex hex| byte blocks into bytes."""
    out = bytearray()
    parts = value.split("|")
    if len(parts) % 2 == 0:
        raise RuleSyntaxError(line, "content has an unterminated |hex| block")
    for i, part in enumerate(parts):
        if i % 2:
            hexs = part.replace(" ", "")
            if not hexs or len(hexs) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", hexs):
                raise RuleSyntaxError(line, f"bad hex bytes |{part}| in content")
            out += bytes.fromhex(hexs)
        else:
            out += part.encode()
    if not out:
        raise RuleSyntaxError(line, "empty content")
    return bytes(out)


def _int(v: str | None, key: str, line: int, lo: int = 0, hi: int = 2**32 - 1) -> int:
    try:
        n = int(v or "")
    except ValueError:
        raise RuleSyntaxError(line, f"{key} needs an integer, not {v!r}") from None
    if not lo <= n <= hi:
        raise RuleSyntaxError(line, f"{key} {n} is out of range {lo}..{hi}")
    return n


def _list_items(text: str, what: str, line: int) -> tuple[bool, list[str]]:
    neg = text.startswith("!")
    if neg:
        text = text[1:]
    if text.startswith("["):
        if not text.endswith("]"):
            raise RuleSyntaxError(line, f"{what} list {text!r} is not closed")
        items = [t.strip() for t in text[1:-1].split(",")]
        if any(not t for t in items):
            raise RuleSyntaxError(line, f"empty item in {what} list {text!r}")
        return neg, items
    return neg, [text]


def parse_addr(text: str, line: int, variables: dict[str, str]) -> AddrSet:
    if text.startswith("$"):
        if text[1:] not in variables:
            raise RuleSyntaxError(line, f"unknown variable {text}")
        text = variables[text[1:]]
    neg, items = _list_items(text, "address", line)
    if items == ["any"]:
        if neg:
            raise RuleSyntaxError(line, "!any matches nothing")
        return AddrSet()
    nets: list[Net] = []
    for it in items:
        if it.startswith("!"):
            raise RuleSyntaxError(line, f"negation inside a list ({it}) is not supported")
        try:
            nets.append(ipaddress.ip_network(it, strict=False))
        except ValueError:
            raise RuleSyntaxError(line, f"bad address {it!r}") from None
    return AddrSet(tuple(nets), neg)


def parse_ports(text: str, line: int) -> PortSet:
    neg, items = _list_items(text, "port", line)
    if items == ["any"]:
        if neg:
            raise RuleSyntaxError(line, "!any matches nothing")
        return PortSet()
    ranges: list[tuple[int, int]] = []
    for it in items:
        m = re.fullmatch(r"(\d*)(:?)(\d*)", it)
        if not m or not (m.group(1) or m.group(3)) or (not m.group(2) and m.group(3)):
            raise RuleSyntaxError(line, f"bad port {it!r}")
        lo = int(m.group(1)) if m.group(1) else 0
        hi = int(m.group(3)) if m.group(3) else (65535 if m.group(2) else lo)
        if not 0 <= lo <= hi <= 65535:
            raise RuleSyntaxError(line, f"bad port range {it!r}")
        ranges.append((lo, hi))
    return PortSet(tuple(ranges), neg)


_HEADER = re.compile(r"^(\S+)\s+(\S+)\s+(\S+|\[[^\]]*\])\s+(\S+|\[[^\]]*\])\s+(->|<>)\s+"
                     r"(\S+|\[[^\]]*\])\s+(\S+|\[[^\]]*\])\s*\((.*)\)\s*$")


def parse_rule(text: str, line: int = 1, variables: dict[str, str] | None = None) -> Rule:
    variables = {"HOME_NET": "any", "EXTERNAL_NET": "any", **(variables or {})}
    m = _HEADER.match(text.strip())
    if not m:
        raise RuleSyntaxError(line, "expected 'action proto src sport -> dst dport (options)'")
    action, proto, src, sport, direction, dst, dport, body = m.groups()
    if action not in ACTIONS:
        raise RuleSyntaxError(line, f"unknown action {action!r} (alert, drop or pass)")
    if proto not in PROTOS:
        raise RuleSyntaxError(line, f"unknown protocol {proto!r} ({', '.join(PROTOS)})")
    rule = Rule(action, proto, parse_addr(src, line, variables), parse_ports(sport, line),
                parse_addr(dst, line, variables), parse_ports(dport, line), direction == "<>",
                sid=0, line=line, text=text.strip())
    if proto in ("ip", "icmp") and (rule.sport.ranges or rule.dport.ranges):
        raise RuleSyntaxError(line, f"protocol {proto} has no ports")
    buffer = "payload"
    sid: int | None = None
    for key, val in _split_options(body, line):
        if key == "msg":
            rule.msg = _unquote(val, key, line)
        elif key == "sid":
            sid = _int(val, key, line, 1)
        elif key == "content":
            raw = _unquote(val, key, line)
            if raw.startswith("!"):
                raise RuleSyntaxError(line, "negated content is not supported")
            rule.contents.append(Content(parse_content(raw, line), buffer=buffer))
        elif key in ("nocase", "offset", "depth"):
            if not rule.contents:
                raise RuleSyntaxError(line, f"{key} must follow a content")
            c = rule.contents[-1]
            if key == "nocase":
                if val is not None:
                    raise RuleSyntaxError(line, "nocase takes no value")
                c.nocase = True
            elif key == "offset":
                c.offset = _int(val, key, line, 0, 65535)
            else:
                c.depth = _int(val, key, line, 1, 65535)
                if c.depth < len(c.pattern):
                    raise RuleSyntaxError(line, f"depth {c.depth} is shorter than the content")
        elif key in BUFFERS[1:]:
            if val is not None:
                raise RuleSyntaxError(line, f"{key} takes no value")
            buffer = key
        elif key == "reclassify":
            rule.reclassify = _unquote(val, key, line)
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", rule.reclassify):
                raise RuleSyntaxError(line, f"bad reclassify result name {rule.reclassify!r}")
        elif key == "next-function":
            nf = _unquote(val, key, line)
            if nf not in SF_TYPES:
                raise RuleSyntaxError(line, f"next-function {nf!r} is not a function type "
                                      f"({', '.join(SF_TYPES)})")
            rule.next_function = nf
        elif key == "flow":
            for opt in (o.strip() for o in (val or "").split(",")):
                if opt in ("to_server", "from_client"):
                    d = "to_server"
                elif opt in ("to_client", "from_server"):
                    d = "to_client"
                elif opt in ("established", "not_established"):
                    rule.flow_state = opt
                    continue
                elif opt == "stateless":
                    continue
                else:
                    raise RuleSyntaxError(line, f"unsupported flow option {opt!r} "
                                          "(to_server, to_client, from_server, from_client, "
                                          "established, not_established, stateless)")
                if rule.flow_dir not in (None, d):
                    raise RuleSyntaxError(line, "flow names both directions")
                rule.flow_dir = d
        elif key in IGNORED:
            continue
        else:
            raise RuleSyntaxError(line, f"unsupported keyword {key!r}")
    if sid is None:
        raise RuleSyntaxError(line, "missing sid")
    if rule.reclassify and rule.next_function:
        raise RuleSyntaxError(line, "a rule asks for reclassify or next-function, not both")
    apps = {c.buffer.split(".")[0] for c in rule.contents if c.buffer != "payload"}
    if len(apps) > 1 or (apps and proto in APP_PROTOS and apps != {proto}):
        raise RuleSyntaxError(line, "a rule's sticky buffers must belong to one application "
                              "protocol (its own)")
    rule.sid = sid
    return rule


def parse_rules(text: str, variables: dict[str, str] | None = None) -> list[Rule]:
    """All rules of a rule file; the first bad one raises RuleSyntaxError."""
    rules: list[Rule] = []
    seen: dict[int, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        r = parse_rule(s, n, variables)
        if r.sid in seen:
            raise RuleSyntaxError(n, f"sid {r.sid} is already used on line {seen[r.sid]}")
        seen[r.sid] = n
        rules.append(r)
    return rules
