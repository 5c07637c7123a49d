"""`i2nsf-controller sfc ...`: the SFC state over the northbound (i2nsf-sfc-policy), for
people and scripts (--json). Configuration goes through any NETCONF client (edit-config on
/sfc), as for the IPsec policies' XML; these commands read and resync."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lxml import etree

from controller.cli_output import table

SFCP = "urn:i2nsf-sdn:yang:i2nsf-sfc-policy"
Q = f"{{{SFCP}}}"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser("sfc", help="service function chaining: paths, instances, SF "
                       "forwarding table, events").add_subparsers(dest="sub", required=True)
    for name, what in (("paths", "service function paths: SPI, chain, status, instances per "
                                 "hop"),
                       ("instances", "SF instances in the catalog with their load"),
                       ("table", "the SF forwarding table (SFF, SPI, SI, next hops)"),
                       ("events", "recent SFC events")):
        p = s.add_parser(name, help=what)
        p.add_argument("--json", action="store_true", help="print JSON")
    s.add_parser("resync", help="push the whole SFC state to every classifier and SFF again")


def _t(el: etree._Element, path: str, default: str = "") -> str:
    v = el.findtext("/".join(Q + p for p in path.split("/")))
    return v.strip() if v is not None else default


def _state(m: Any) -> etree._Element:
    reply = etree.fromstring(m.get(filter=("subtree", f'<sfc-state xmlns="{SFCP}"/>')).xml
                             .encode())
    st = reply.find(f".//{Q}sfc-state")
    return st if st is not None else etree.Element(Q + "sfc-state")


def run(m: Any, a: argparse.Namespace) -> int:
    if a.sub == "resync":
        m.dispatch(etree.fromstring(f'<resync-sfc xmlns="{SFCP}"/>'))
        print("SFC resync started")
        return 0
    st = _state(m)
    rows: list[list[str]] = []
    data: list[dict[str, Any]] = []
    if a.sub == "paths":
        for p in st.findall(Q + "path"):
            hops = [f"{_t(h, 'sf-type')}[" + ",".join(
                f"{_t(i, 'name')}:{_t(i, 'weight')}" for i in h.findall(Q + "instance")) + "]"
                for h in p.findall(Q + "hop")]
            rows.append([_t(p, "spi"), _t(p, "chain"), _t(p, "kind"), _t(p, "status"),
                         " -> ".join(hops), _t(p, "error-message")])
            data.append({"spi": int(_t(p, "spi", "0")), "chain": _t(p, "chain"),
                         "kind": _t(p, "kind"), "status": _t(p, "status"), "hops": hops,
                         "error": _t(p, "error-message") or None})
        header = ["SPI", "CHAIN", "KIND", "STATUS", "HOPS (instance:weight)", "ERROR"]
    elif a.sub == "instances":
        for i in st.findall(Q + "instance"):
            rows.append([_t(i, "name"), _t(i, "sf-type"), _t(i, "state"), _t(i, "forwarder"),
                         _t(i, "locator"), _t(i, "capacity-pps"), _t(i, "load-pps"),
                         _t(i, "load-percent") + " %", _t(i, "dms")])
            data.append({k: _t(i, k) for k in ("name", "sf-type", "state", "forwarder",
                                               "locator", "capacity-pps", "load-pps",
                                               "load-percent", "dms")})
        header = ["NAME", "TYPE", "STATE", "SFF", "LOCATOR", "CAPACITY", "PPS", "LOAD", "DMS"]
    elif a.sub == "table":
        for e in st.findall(Q + "forwarding-entry"):
            nh = ", ".join(f"{_t(h, 'kind')} {_t(h, 'locator')}".strip()
                           + (f" w{_t(h, 'weight')}" if _t(h, "weight") else "")
                           + (f" ({_t(h, 'instance')})" if _t(h, "instance") else "")
                           for h in e.findall(Q + "next-hop"))
            rows.append([_t(e, "forwarder"), _t(e, "sff-id"), _t(e, "spi"), _t(e, "si"), nh])
            data.append({"forwarder": _t(e, "forwarder"), "sff-id": _t(e, "sff-id"),
                         "spi": _t(e, "spi"), "si": _t(e, "si"), "next-hops": nh})
        header = ["SFF", "ID", "SPI", "SI", "NEXT HOPS"]
    else:
        for e in st.findall(Q + "event"):
            rows.append([_t(e, "time"), _t(e, "kind"), _t(e, "detail")])
            data.append({"time": _t(e, "time"), "kind": _t(e, "kind"),
                         "detail": _t(e, "detail")})
        header = ["TIME", "KIND", "DETAIL"]
    if getattr(a, "json", False):
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(table(rows, header) if rows else "  none")
    return 0
