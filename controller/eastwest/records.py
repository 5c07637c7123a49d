"""Agreements, proposals and replies to and from their stored and wire forms."""

from __future__ import annotations

import ipaddress
from typing import Any

from lxml import etree

from controller.core.records import SaKeys, SaSpec
from controller.eastwest.model import NS, Algorithms, Q
from controller.eastwest.negotiate import Proposal, parse_nets
from controller.eastwest.plan import Agreement
from controller.ipsec.model import FlowSpec, Nsf


def el(parent: etree._Element, name: str, text: object) -> etree._Element:
    e = etree.SubElement(parent, Q + name)
    e.text = str(text)
    return e

def texts(op: etree._Element, name: str) -> list[str]:
    return [(e.text or "").strip() for e in op.iterfind(Q + name)]


def proposal(op: etree._Element) -> Proposal:
    def one(name: str) -> str:
        v = (op.findtext(Q + name) or "").strip()
        if not v:
            raise ValueError(f"missing {name}")
        return v

    alg = Algorithms(int(op.findtext(Q + "encryption") or 20),
                     int(op.findtext(Q + "key-length") or 128),
                     int(op.findtext(Q + "integrity") or 0),
                     int(op.findtext(Q + "rekey-time") or 0))
    ipaddress.ip_address(one("data-plane-address"))
    return Proposal(one("controller-id"), one("policy"), int(one("generation")), one("nonce"),
                    one("public-key"), one("data-plane-address"),
                    parse_nets(texts(op, "initiator-prefix")),
                    parse_nets(texts(op, "responder-prefix")),
                    tuple(int(s) for s in texts(op, "inbound-spi")), alg)


def propose_reply(ag: Agreement, pub: str) -> list[etree._Element]:
    out = []
    e = etree.Element(Q + "public-key", nsmap={None: NS})
    e.text = pub
    out.append(e)
    for s in ag.spis(inbound=True):
        e = etree.Element(Q + "inbound-spi", nsmap={None: NS})
        e.text = str(s)
        out.append(e)
    e = etree.Element(Q + "policy", nsmap={None: NS})
    e.text = ag.policy
    out.append(e)
    return out


def agreement_to(ag: Agreement, confirmed: bool) -> dict[str, Any]:
    n = ag.local_nsf
    return {
        "policy": ag.policy, "policy_id": ag.policy_id, "peer": ag.peer, "role": ag.role,
        "generation": ag.generation, "nonce": ag.nonce, "confirmed": confirmed,
        "nsf": {"name": n.name, "address": n.address, "username": n.username,
                "host_key": n.host_key, "dp": str(n.data_plane_address),
                "prefixes": [str(p) for p in n.protected_prefixes], "dataplane": n.dataplane},
        "remote_address": ag.remote_address,
        "flows": [[f.index, str(f.a_prefix), str(f.b_prefix)] for f in ag.flows],
        "algorithms": [ag.algorithms.encryption, ag.algorithms.key_length,
                       ag.algorithms.integrity, ag.algorithms.rekey_time],
        "created": ag.created,
        "sas": [{"flow": s.flow, "a2b": s.a2b, "spi": s.spi, "keys": s.keys.to_dict()}
                for s in ag.sas],
    }


def agreement_from(d: dict[str, Any]) -> Agreement:
    n = d["nsf"]
    nsf = Nsf(name=n["name"], address=n["address"], username=n["username"],
              host_key=n["host_key"], data_plane_address=ipaddress.ip_address(n["dp"]),
              protected_prefixes=tuple(ipaddress.ip_network(p) for p in n["prefixes"]),
              dataplane=n["dataplane"])
    flows = tuple(FlowSpec(i, ipaddress.ip_network(a), ipaddress.ip_network(b))
                  for i, a, b in d["flows"])
    sas = tuple(SaSpec(d["policy"], s["flow"], s["a2b"], d["generation"], s["spi"],
                       SaKeys.from_dict(s["keys"])) for s in d["sas"])
    return Agreement(d["policy"], d["policy_id"], d["peer"], d["role"], d["generation"],
                     d["nonce"], nsf, d["remote_address"], flows, Algorithms(*d["algorithms"]),
                     sas, d.get("created", 0.0))
