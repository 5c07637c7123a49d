"""Output of the controller CLI: tables for people, JSON for scripts, one error wording."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from lxml import etree

FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"
# YANG lists and leaf-lists of i2nsf-flow-policy: always JSON arrays, even with one entry
LISTS = frozenset({"sa", "protected-prefix", "prefix", "member", "ports", "policy", "nsf",
                   "road-warrior", "crypto-profile", "policy-group"})


class CliError(Exception):
    """A user-facing failure: `i2nsf-controller: error: <message>`, exit status `code`
    (1 failed, 2 usage, 3 timed out)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def text(el: etree._Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    v = el.findtext("/".join(Q + p for p in path.split("/")))
    return v.strip() if v is not None else default


def as_dict(el: etree._Element | None, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YANG data element as a JSON object with the YANG node names as keys."""
    out: dict[str, Any] = {}
    if el is None:
        return out
    for c in el:
        if not isinstance(c.tag, str):
            continue
        name = c.tag.rpartition("}")[2]
        if name in drop:
            continue
        value: Any = as_dict(c) if len(c) else _scalar(c.text)
        if name in LISTS:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def _scalar(v: str | None) -> Any:
    s = (v or "").strip()
    if s.isdigit() and (len(s) == 1 or not s.startswith("0")):
        return int(s)
    if s in ("true", "false"):
        return s == "true"
    return s


def emit(args: argparse.Namespace, obj: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj, indent=2, sort_keys=True))
    else:
        print(human)


def table(rows: list[list[str]], header: list[str]) -> str:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parse(ts: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(ts: str) -> str:
    if not ts:
        return "-"
    t = _parse(ts)
    return ts if t is None else dur((dt.datetime.now(dt.UTC) - t).total_seconds())


def until(ts: str) -> str:
    if not ts:
        return "-"
    t = _parse(ts)
    if t is None:
        return ts
    secs = (t - dt.datetime.now(dt.UTC)).total_seconds()
    return "now" if secs <= 0 else "in " + dur(secs)


def dur(secs: float) -> str:
    secs = max(0, int(secs))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m{secs % 60:02d}s"
    return f"{secs // 3600}h{secs % 3600 // 60:02d}m"
