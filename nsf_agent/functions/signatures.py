"""The signature engine of the IDS/IPS/DPI functions: every payload content of every rule in
one Hyperscan block-mode database (one scan per packet finds all candidate rules), then the
header, offset/depth and sticky-buffer checks of the candidates; flows are tracked to carry
the identified application protocol and server name to later packets."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import hyperscan

from nsf_agent.functions.appid import AppInfo, identify
from nsf_agent.functions.packet import Packet
from nsf_agent.functions.rules import Rule, RuleSyntaxError, parse_rules

MAX_FLOWS = 65536
_PROTO = {"tcp": 6, "udp": 17, "icmp": 1}
FLOW_IDLE = 120.0
IDENTIFY_TRIES = 8  # a flow that shows no known protocol in its first packets has none


@dataclass
class FlowState:
    app: AppInfo | None = None
    reported_app: bool = False
    tries: int = 0  # packets looked at for the application (given up after IDENTIFY_TRIES)
    last: float = 0.0
    alerted: dict[int, float] = field(default_factory=dict)  # sid -> last report time
    client: tuple[bytes, int] | None = None  # (address, port) of the flow's initiator
    both_ways: bool = False  # packets seen in both directions (established)


@dataclass
class Match:
    rule: Rule
    reported: bool  # False when suppressed (same sid and flow reported < 1 s ago)


@dataclass
class Verdict:
    drop: bool
    matches: list[Match]
    app: AppInfo | None
    new_app: bool  # the flow's application was identified by this packet


def _literal(pattern: bytes) -> bytes:
    return b"".join(b"\\x%02x" % b for b in pattern)


class SignatureEngine:
    """Compiled rules. `inspect` is called for every packet, on one thread."""

    def __init__(self, rules: list[Rule], prevent: bool, identify_apps: bool) -> None:
        self.rules = rules
        self.prevent = prevent  # IPS: drop rules drop; IDS: they alert
        self.identify_apps = identify_apps or any(r.app for r in rules)
        self.track = self.identify_apps or any(r.flow_dir or r.flow_state for r in rules)
        self.flows: OrderedDict[tuple[bytes, bytes, int, int, int], FlowState] = OrderedDict()
        self.sid_hits: dict[int, int] = {r.sid: 0 for r in rules}
        self._header_only = [r for r in rules if not any(c.buffer == "payload"
                                                        for c in r.contents)]
        # expression id -> (rule index, content index)
        self._ids: list[tuple[int, int]] = []
        exprs: list[bytes] = []
        flags: list[int] = []
        self._need: list[int] = []  # payload contents per rule
        for ri, r in enumerate(rules):
            n = 0
            for ci, c in enumerate(r.contents):
                if c.buffer != "payload":
                    continue
                self._ids.append((ri, ci))
                exprs.append(_literal(c.pattern))
                flags.append(hyperscan.HS_FLAG_SOM_LEFTMOST
                             | (hyperscan.HS_FLAG_CASELESS if c.nocase else 0))
                n += 1
            self._need.append(n)
        self._db: hyperscan.Database | None = None
        if exprs:
            self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self._db.compile(expressions=exprs, ids=list(range(len(exprs))), flags=flags)
            self._scratch = hyperscan.Scratch(self._db)
            self._db.scratch = self._scratch

    @classmethod
    def from_text(cls, text: str, sf_type: str) -> SignatureEngine:
        """Parse and compile; RuleSyntaxError (with line and reason) for bad rules."""
        rules = parse_rules(text)
        try:
            return cls(rules, prevent=sf_type == "ips", identify_apps=sf_type == "dpi")
        except hyperscan.error as exc:  # should not happen for escaped literals
            raise RuleSyntaxError(0, f"signature compilation failed: {exc}") from None

    # -- per packet --------------------------------------------------------------------------

    def _flow(self, pkt: Packet, now: float) -> FlowState:
        key = pkt.key()
        st = self.flows.get(key)
        if st is None:
            st = FlowState()
            self.flows[key] = st
            if len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        else:
            self.flows.move_to_end(key)
        st.last = now
        return st

    def expire(self, now: float) -> None:
        while self.flows:
            key, st = next(iter(self.flows.items()))
            if now - st.last < FLOW_IDLE:
                break
            del self.flows[key]

    def _header_ok(self, r: Rule, pkt: Packet, app: AppInfo | None) -> bool:
        if r.proto != "ip":
            if r.proto in ("http", "tls", "dns"):
                if app is None or app.protocol != r.proto:
                    return False
            elif pkt.proto != _PROTO[r.proto] and not (r.proto == "icmp" and pkt.proto == 58):
                return False
        if r.app and (app is None or app.protocol != r.app):
            return False
        v = pkt.version
        s, d = pkt.src_int, pkt.dst_int
        if (r.src.match(v, s) and r.dst.match(v, d) and r.sport.match(pkt.sport)
                and r.dport.match(pkt.dport)):
            return True
        return r.bidirectional and (r.src.match(v, d) and r.dst.match(v, s)
                                    and r.sport.match(pkt.dport) and r.dport.match(pkt.sport))

    def _sticky_ok(self, r: Rule, app: AppInfo | None) -> bool:
        for c in r.contents:
            if c.buffer == "payload":
                continue
            if app is None or not c.find_in(app.name.encode()):
                return False
        return True

    def inspect(self, pkt: Packet, now: float | None = None) -> Verdict:
        now = time.monotonic() if now is None else now
        st = self._flow(pkt, now) if self.track else None
        to_server = True
        if st is not None:
            if st.client is None:  # a SYN-ACK first: its receiver opened the connection
                syn_ack = pkt.proto == 6 and pkt.tcp_flags & 0x12 == 0x12
                st.client = (pkt.dst, pkt.dport) if syn_ack else (pkt.src, pkt.sport)
            to_server = (pkt.src, pkt.sport) == st.client
            if not to_server:
                st.both_ways = True
        new_app = False
        if st is not None and self.identify_apps and (st.app is None or not st.app.name) \
                and st.tries < IDENTIFY_TRIES:
            st.tries += 1
            found = identify(pkt)
            if found is not None and (st.app is None or found.name):
                st.app = found
                new_app = bool(found.name) or st.app is None
        app = st.app if st is not None else None
        candidates: list[int] = []
        if self._db is not None and pkt.payload:
            hits: dict[int, set[int]] = {}
            ids, rules = self._ids, self.rules

            def on_match(eid: int, start: int, end: int, _f: int, _c: object) -> None:
                ri, ci = ids[eid]
                if rules[ri].contents[ci].matches_at(start, end):
                    hits.setdefault(ri, set()).add(ci)

            self._db.scan(pkt.payload, match_event_handler=on_match)
            candidates = [ri for ri, cs in hits.items() if len(cs) == self._need[ri]]
        matched: list[Rule] = []
        both = st.both_ways if st is not None else False
        for r in [self.rules[ri] for ri in candidates] + self._header_only:
            if r.flow_dir and (r.flow_dir == "to_server") != to_server:
                continue
            if r.flow_state and (r.flow_state == "established") != both:
                continue
            if self._header_ok(r, pkt, app) and self._sticky_ok(r, app):
                matched.append(r)
        if any(r.action == "pass" for r in matched):
            return Verdict(False, [], app, new_app)
        out: list[Match] = []
        for r in matched:
            self.sid_hits[r.sid] += 1
            report = True
            if st is None:
                st = self._flow(pkt, now)
            last = st.alerted.get(r.sid)
            if last is not None and now - last < 1.0:
                report = False
            else:
                st.alerted[r.sid] = now
            out.append(Match(r, report))
        drop = self.prevent and any(r.action == "drop" for r in matched)
        return Verdict(drop, out, app, new_app)
