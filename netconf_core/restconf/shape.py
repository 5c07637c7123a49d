"""What a GET returns of its target: `depth` levels, content=nonconfig (RFC 8040 4.8)."""

from __future__ import annotations

from typing import Any

from lxml import etree

from netconf_core.errors import RpcError


def depth_of(text: str | None) -> int | None:
    if text is None or text == "unbounded":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise RpcError("protocol", "invalid-value",
                       "depth must be 1..65535 or 'unbounded'", info={"bad-element": "depth"})
    return int(text)


def prune(schema: Any, el: etree._Element, sn: Any, levels: int) -> None:
    """Keep `levels` levels of descendants below `el` (list keys always stay)."""
    for child in list(el):
        if not isinstance(child.tag, str):
            continue
        csn = schema.lookup(sn, child.tag)
        if levels <= 0:
            if not (sn is not None and sn.kind == "list" and child.tag in sn.key_tags):
                el.remove(child)
        elif csn is not None:
            prune(schema, child, csn, levels - 1)


def keep_state(schema: Any, data: etree._Element) -> None:
    """content=nonconfig: drop configuration nodes that hold no state below them (list
    keys of entries with state stay, to name the entry)."""
    def walk(el: etree._Element, psn: Any) -> bool:
        keep_any = False
        for child in list(el):
            if not isinstance(child.tag, str):
                continue
            sn = schema.lookup(psn, child.tag)
            if sn is None or not sn.config:
                keep_any = True
                continue
            if sn.kind in ("container", "list") and walk(child, sn):
                keep_any = True
                continue
            if psn is not None and psn.kind == "list" and sn.name in psn.keys:
                continue  # decided below
            el.remove(child)
        if psn is not None and psn.kind == "list" and not keep_any:
            for k in psn.key_tags:
                for kel in el.findall(k):
                    el.remove(kel)
        return keep_any
    walk(data, None)
    for child in list(data):
        if isinstance(child.tag, str) and len(child) == 0:
            data.remove(child)


