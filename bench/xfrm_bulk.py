#!/usr/bin/env python3
"""Install N SPD entries in a fresh network namespace: our netlink batch API vs
``ip -batch`` (iproute2, one netlink round trip per line) vs one NETCONF edit-config
through a real agent, flushing in between.

Why: the agent provisions whole SPDs at once (controller commits, startup
re-apply); the target is at most 2x iproute2's time for 10,000 policies.

Each method is a ``Measurement`` (setup / run / verify); add the agent's full
NETCONF path later as another entry in ``MEASUREMENTS`` — the baseline stays
``ip -batch``.  Needs root.  Usage: bench/xfrm_bulk.py [--count N] [--repeat R]

``--applier`` instead times the xfrm applier's own work in process (no root, no
kernel: the netlink batch is stubbed): validate + prepare of one commit from an
empty running to N entries, and of a one-entry change, addition and removal in an
N-entry running, i.e. the part of the agent path this project's code controls.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsf_agent.xfrm import Dir, Policy, Selector, Template, Xfrm


def make_policies(n: int) -> list[Policy]:
    """n distinct outbound tunnel policies: /32 hosts of 10.0.0.0/8-style space are not
    allowed here, so vary the TCP destination port and source host of doc prefixes."""
    out = []
    for i in range(n):
        src = f"192.0.2.{i % 256}/32"
        dport = 1 + i // 256
        out.append(
            Policy(
                Selector(src, "198.51.100.0/24", proto=6, dport=dport),
                dir=Dir.OUT,
                priority=100,
                templates=[Template("203.0.113.1", "203.0.113.2", mode="tunnel", reqid=1)],
            )
        )
    return out


def ip_batch_lines(policies: list[Policy]) -> str:
    lines = []
    for p in policies:
        s = p.selector
        t = p.templates[0]
        lines.append(
            f"xfrm policy add src {s.src} dst {s.dst} proto tcp dport {s.dport} dir out "
            f"priority {p.priority} tmpl src {t.src} dst {t.dst} proto esp reqid {t.reqid} "
            f"mode tunnel"
        )
    return "\n".join(lines) + "\n"


def count_policies(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "xfrm", "policy", "count"], capture_output=True,
                         text=True, check=True).stdout
    # "SPD IN  0 OUT 10000 FWD 0 (Sock: IN 0 OUT 0 FWD 0)"
    words = out.split()
    return int(words[words.index("OUT") + 1])


@dataclass
class Measurement:
    name: str
    run: Callable[[str, list[Policy]], None]


def run_ip_batch(ns: str, policies: list[Policy]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".ip", delete=False) as f:
        f.write(ip_batch_lines(policies))
        path = f.name
    try:
        t0 = time.perf_counter()
        subprocess.run(["ip", "-n", ns, "-batch", path], check=True)
        run_ip_batch.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    finally:
        os.unlink(path)


def run_netlink_batch(ns: str, policies: list[Policy]) -> None:
    with Xfrm(ns) as x:
        t0 = time.perf_counter()
        results = x.add_policies(policies)
        run_netlink_batch.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
    bad = [r for r in results if r is not None]
    if bad:
        raise SystemExit(f"netlink batch: {len(bad)} failures, first {bad[0]}")


IKELESS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"


def ikeless_config(policies: list[Policy]) -> str:
    """The same policies as RFC 9061 SPD entries in one <config>."""
    parts = []
    for i, p in enumerate(policies):
        s, t = p.selector, p.templates[0]
        parts.append(
            f"<spd-entry><name>bulk-{i}</name><direction>outbound</direction>"
            f"<reqid>{t.reqid}</reqid><ipsec-policy-config><traffic-selector>"
            f"<local-prefix>{s.src}</local-prefix><remote-prefix>{s.dst}</remote-prefix>"
            f"<inner-protocol>6</inner-protocol><remote-ports><start>{s.dport}</start>"
            f"<end>{s.dport}</end></remote-ports></traffic-selector><processing-info>"
            f"<action>protect</action><ipsec-sa-cfg><mode>tunnel</mode><tunnel>"
            f"<local>{t.src}</local><remote>{t.dst}</remote></tunnel></ipsec-sa-cfg>"
            f"</processing-info></ipsec-policy-config></spd-entry>"
        )
    return (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><ipsec-ikeless '
            f'xmlns="{IKELESS}"><spd>{"".join(parts)}</spd></ipsec-ikeless></config>')


def run_netconf_agent(ns: str, policies: list[Policy]) -> None:
    """One edit-config through a real agent (SSH, NETCONF, libyang, xfrm applier)."""
    import asyncio
    import threading

    import ncclient.transport.session as nc_session
    from ncclient import manager
    from ncclient.xml_ import to_ele

    from netconf_core.auth import User, hash_password
    from nsf_agent.agent import Agent
    from nsf_agent.appliers.xfrm import XfrmApplier
    from nsf_agent.config import AgentConfig

    nc_session.TICK = 0.001
    xml = run_netconf_agent.__dict__.setdefault("xml", {}).get(len(policies))
    if xml is None:
        xml = run_netconf_agent.xml[len(policies)] = ikeless_config(policies)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as state:
        cfg = AgentConfig(host="127.0.0.1", port=0, state_dir=Path(state),
                          users=[User("bench", hash_password("bench-pw"))],
                          max_message_size=64 << 20)
        agent = Agent(cfg, appliers=[XfrmApplier(ns, state_dir=Path(state))])
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(agent.start())
            ready.set()
            loop.run_forever()

        th = threading.Thread(target=serve, daemon=True)
        th.start()
        if not ready.wait(30):
            raise SystemExit("agent did not start")
        try:
            with manager.connect(host="127.0.0.1", port=agent.port, username="bench",
                                 password="bench-pw", hostkey_verify=False,
                                 allow_agent=False, look_for_keys=False, timeout=120) as m:
                # the request is built before the clock starts, as a controller has it ready
                # (ncclient would otherwise parse the 3 MB string on the client side first)
                request = to_ele(xml)
                t0 = time.perf_counter()
                m.edit_config(target="running", config=request)
                run_netconf_agent.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        finally:
            asyncio.run_coroutine_threadsafe(agent.stop(), loop).result(30)
            loop.call_soon_threadsafe(loop.stop)
            th.join(30)


def canonical_data(config_xml: str) -> object:
    """`<config>` text -> the `<data>` root the datastore hands appliers (libyang's
    canonical print of the validated tree)."""
    from lxml import etree

    from netconf_core.errors import NC_NS
    from netconf_core.schema import YangSchema
    from netconf_core.yang_context import create_context

    schema = canonical_data.__dict__.get("schema")
    if schema is None:
        schema = canonical_data.schema = YangSchema(create_context())  # type: ignore[attr-defined]
    cfg = etree.fromstring(config_xml.encode())
    data = etree.Element(f"{{{NC_NS}}}data", nsmap={None: NC_NS})
    for child in cfg:
        data.append(child)
    tree = schema.parse_config(data)
    try:
        text = tree.print_mem("xml", with_siblings=True, pretty=False)
    finally:
        tree.free()
    return etree.fromstring(f'<data xmlns="{NC_NS}">{text}</data>'.encode())


def applier_bench(count: int, repeat: int) -> int:
    """In-process timings of XfrmApplier.validate + prepare (+ apply, kernel stubbed)."""
    import copy

    from netconf_core.applier import ConfigChange
    from netconf_core.datastore import empty_data
    from nsf_agent.appliers.xfrm import XfrmApplier

    q = f"{{{IKELESS}}}"
    policies = make_policies(count + 1)
    big = canonical_data(ikeless_config(policies[:count]))
    bigger = canonical_data(ikeless_config(policies))  # one more entry at the end
    changed = copy.deepcopy(big)
    ent = changed.find(f"{q}ipsec-ikeless/{q}spd")[count // 2]
    ports = ent.find(f"{q}ipsec-policy-config/{q}traffic-selector/{q}remote-ports")
    ports.find(q + "start").text = ports.find(q + "end").text = "65000"
    removed = copy.deepcopy(big)
    spd = removed.find(f"{q}ipsec-ikeless/{q}spd")
    spd.remove(spd[count // 2])

    packing = [0.0]

    def fresh() -> XfrmApplier:
        ap = XfrmApplier(None)
        ap._submit = lambda batch: [None] * len(batch)  # type: ignore[method-assign]
        pack = ap._pack

        def timed_pack(ops):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return pack(ops)
            finally:
                packing[0] += time.perf_counter() - t0

        ap._pack = timed_pack  # type: ignore[method-assign]
        return ap

    def timed(ap: XfrmApplier, old: object, new: object, apply: bool) -> tuple[float, int]:
        ch = ConfigChange(old=old, new=new)  # type: ignore[arg-type]
        packing[0] = 0.0
        t0 = time.perf_counter()
        ap.validate(ch)
        ap.prepare(ch)
        el = time.perf_counter() - t0 - packing[0]
        if apply:
            ap.apply(ch)
        return el, len(ch.scratch.get("xfrm.ops", []))  # type: ignore[arg-type]

    rows: dict[str, tuple[float, int]] = {}

    def keep(name: str, el: float, n: int) -> None:
        if name not in rows or el < rows[name][0]:
            rows[name] = (el, n)

    for _ in range(repeat):
        ap = fresh()
        empty = empty_data()
        el, n = timed(ap, empty, big, apply=False)
        keep(f"empty -> {count} (validate+prepare)", el, n)
        keep("  packing the netlink batch (in prepare)", packing[0], n)
        ch = ConfigChange(old=empty, new=big)
        ap.validate(ch)
        ap.prepare(ch)
        t0 = time.perf_counter()
        ap.apply(ch)
        keep("  apply, kernel stubbed", time.perf_counter() - t0, 0)
        for what, new in (("1 entry changed", changed), ("1 entry added", bigger),
                          ("1 entry removed", removed)):
            el, n = timed(ap, big, new, apply=False)  # not applied: running stays `big`
            keep(f"{count} -> {what}", el, n)
        ap.xfrm.close()
    print(f"xfrm applier in process, {count} SPD entries, best of {repeat} (validate+prepare "
          "without packing the netlink messages, which prepare also does):")
    for name, (el, n) in rows.items():
        print(f"  {name:42s} {el * 1e3:9.1f} ms  {n:6d} kernel ops")
    return 0


MEASUREMENTS: list[Measurement] = [
    Measurement("ip -batch (baseline)", run_ip_batch),
    Measurement("netlink batch (nsf_agent.xfrm)", run_netlink_batch),
    Measurement("agent: one NETCONF edit-config", run_netconf_agent),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of R runs")
    ap.add_argument("--applier", action="store_true",
                    help="time the xfrm applier in process instead (no root needed)")
    args = ap.parse_args()
    if args.applier:
        return applier_bench(args.count, args.repeat)
    if os.geteuid() != 0:
        print("xfrm_bulk: needs root (network namespaces); skipped")
        return 0
    ns = f"i2x-bench-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        t0 = time.perf_counter()
        policies = make_policies(args.count)
        build = time.perf_counter() - t0
        best: dict[str, float] = {}
        for _ in range(args.repeat):
            for m in MEASUREMENTS:
                subprocess.run(["ip", "-n", ns, "xfrm", "policy", "flush"], check=True)
                m.run(ns, policies)
                n = count_policies(ns)
                if n != args.count:
                    raise SystemExit(f"{m.name}: {n} policies installed, expected {args.count}")
                el = m.run.elapsed  # type: ignore[attr-defined]
                best[m.name] = min(best.get(m.name, el), el)
        base = best[MEASUREMENTS[0].name]
        print(f"{args.count} SPD entries, best of {args.repeat} (Policy objects built in "
              f"{build:.3f} s, not counted)")
        for m in MEASUREMENTS:
            t = best[m.name]
            print(f"  {m.name:34s} {t:8.3f} s  {args.count / t:9.0f}/s  ratio {t / base:5.2f}")
        ratio = best[MEASUREMENTS[1].name] / base
        agent_ratio = best[MEASUREMENTS[2].name] / base
        print(f"netlink/ip-batch ratio: {ratio:.2f}; agent (NETCONF edit-config)/ip-batch "
              f"ratio: {agent_ratio:.2f} (target <= 2.0)")
        return 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    sys.exit(main())
