"""Parse ``ip -s -s xfrm policy|state show`` text into dictionaries.

iproute2 6.1 has no JSON output for xfrm, and it is the independent implementation
the tests (and the benchmark) check kernel state against: what our netlink module
installs must read back identically through iproute2's own decoder.  The result is
a list of flat-ish dicts (one per entry) with numbers as ints, so tests can compare
field by field.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

INF = 0xFFFFFFFFFFFFFFFF

_LIMIT = re.compile(r"limit: soft (\S+)\((bytes|packets)\), hard (\S+)\((?:bytes|packets)\)")
_EXPIRE = re.compile(r"expire (add|use): soft (\d+)\(sec\), hard (\d+)\(sec\)")
_CUR = re.compile(r"^(\d+)\(bytes\), (\d+)\(packets\)")
_ALGO = re.compile(r"^(\S+) (\S+) (0x[0-9a-f]+) ?\((\d+) bits\)(?: (\d+))?")

# keys whose value is the next token, per line kind
_VALUE_KEYS = {
    "src", "dst", "proto", "sport", "dport", "type", "code", "uid", "dev", "dir", "action",
    "index", "priority", "ptype", "share", "spi", "reqid", "mode", "level", "enc-mask",
    "auth-mask", "comp-mask", "replay-window", "seq", "mark", "if_id", "output-mark",
    "replay", "failed", "tfcpad", "flag",
}


def _num(tok: str) -> int | str:
    """'0x10(16)' -> 16, '3(0x00000003)' -> 3, '0x7' -> 7, '(INF)' -> INF."""
    if tok == "(INF)":
        return INF
    base = tok.split("(", 1)[0]
    try:
        return int(base, 0)
    except ValueError:
        return tok


def _pairs(tokens: list[str], out: dict[str, Any]) -> None:
    i = 0
    while i < len(tokens):
        k = tokens[i]
        if k in _VALUE_KEYS and i + 1 < len(tokens):
            v = tokens[i + 1]
            if k.endswith("-mask"):
                out[k] = int(v, 16)
                i += 2
                continue
            out[k] = v if k in ("src", "dst", "proto", "dir", "action", "ptype", "share",
                                 "mode", "level", "dev", "flag") else _num(v)
            i += 2
        else:
            i += 1


def _parse_mark(v: str) -> tuple[int, int]:
    val, _, mask = v.partition("/")
    return int(val, 0), int(mask or "0xffffffff", 0)


def _entries(text: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            out.append([line])
        elif out:
            out[-1].append(line)
    return out


def _lifetime(line: str, lft: dict[str, int]) -> bool:
    m = _LIMIT.search(line)
    if m:
        lft[f"soft_{m.group(2)}"] = int(_num(m.group(1)))
        lft[f"hard_{m.group(2)}"] = int(_num(m.group(3)))
        return True
    m = _EXPIRE.search(line)
    if m:
        lft[f"soft_{m.group(1)}_seconds"] = int(m.group(2))
        lft[f"hard_{m.group(1)}_seconds"] = int(m.group(3))
        return True
    return False


def parse_policies(text: str) -> list[dict[str, Any]]:
    """Entries of ``ip -s -s xfrm policy show``."""
    result = []
    for lines in _entries(text):
        e: dict[str, Any] = {"tmpl": [], "lifetime": {}}
        sel: dict[str, Any] = {}
        _pairs(lines[0].split(), sel)
        e["sel"] = sel
        tmpl: dict[str, Any] | None = None
        section = None
        for raw in lines[1:]:
            line = raw.strip()
            depth = len(raw) - len(raw.lstrip("\t"))
            if line.startswith("lifetime config:"):
                section = "cfg"
                continue
            if line.startswith("lifetime current:"):
                section = "cur"
                continue
            if section == "cfg" and _lifetime(line, e["lifetime"]):
                continue
            if section == "cur":
                m = _CUR.match(line)
                if m:
                    e["cur"] = {"bytes": int(m.group(1)), "packets": int(m.group(2))}
                if line.startswith(("add ", "0(")) or m:
                    continue
            section = None
            toks = line.split()
            if toks[0] == "tmpl":
                tmpl = {}
                _pairs(toks[1:], tmpl)
                e["tmpl"].append(tmpl)
                continue
            if tmpl is not None and depth >= 2:
                _pairs(toks, tmpl)
                continue
            tmpl = None
            if toks[0] == "mark":
                e["mark"] = _parse_mark(toks[1])
            elif toks[0] == "if_id":
                e["if_id"] = int(toks[1], 0)
            else:
                _pairs(toks, e)
        result.append(e)
    return result


def parse_states(text: str) -> list[dict[str, Any]]:
    """Entries of ``ip -s -s xfrm state show`` (keys shown as bytes)."""
    result = []
    for lines in _entries(text):
        e: dict[str, Any] = {"lifetime": {}, "algos": {}}
        _pairs(lines[0].split(), e)
        section = None
        esn_lines: list[str] = []
        for raw in lines[1:]:
            line = raw.strip()
            toks = line.split()
            if line.startswith("lifetime config:"):
                section = "cfg"
                continue
            if line.startswith("lifetime current:"):
                section = "cur"
                continue
            if line.startswith("stats:"):
                section = "stats"
                continue
            if line.startswith("anti-replay esn context:"):
                section = "esn"
                continue
            if section == "cfg" and _lifetime(line, e["lifetime"]):
                continue
            if section == "cur" and (_CUR.match(line) or line.startswith("add ")):
                m = _CUR.match(line)
                if m:
                    e["cur"] = {"bytes": int(m.group(1)), "packets": int(m.group(2))}
                continue
            if section == "stats" and toks[0] == "replay-window":
                st: dict[str, Any] = {}
                _pairs(toks, st)
                e["stats"] = st
                continue
            if section == "esn" and (toks[0] in ("seq-hi", "replay_window") or
                                     all(re.fullmatch(r"[0-9a-f]{8}", t) for t in toks)):
                esn_lines.append(line)
                continue
            section = None
            head = toks[0]
            if head in ("aead", "auth-trunc", "auth", "enc", "comp"):
                # "aead rfc4106(gcm(aes)) 0x0102...14 (160 bits) 128"
                m = _ALGO.match(line)
                algo: dict[str, Any] = {"name": toks[1]}
                if m:
                    bits = int(m.group(4))
                    algo["key"] = bytes.fromhex(m.group(3)[2:].rjust(bits // 4, "0"))
                    algo["key_bits"] = bits
                    if m.group(5):
                        algo["len"] = int(m.group(5))
                e["algos"][head] = algo
            elif head == "encap":
                enc: dict[str, Any] = {}
                _pairs(toks[1:], enc)
                enc["type"] = toks[toks.index("type") + 1]
                if "addr" in toks:
                    enc["addr"] = toks[toks.index("addr") + 1]
                e["encap"] = enc
            elif head == "sel":
                sel: dict[str, Any] = {}
                _pairs(toks[1:], sel)
                e["sel"] = sel
            elif head == "anti-replay":
                m2 = re.search(r"seq (0x[0-9a-f]+), oseq (0x[0-9a-f]+), bitmap (0x[0-9a-f]+)",
                               line)
                if m2:
                    e["replay"] = {"seq": int(m2.group(1), 16), "oseq": int(m2.group(2), 16),
                                   "bitmap": int(m2.group(3), 16)}
            elif head == "mark":
                e["mark"] = _parse_mark(toks[1])
            elif head == "output-mark":
                e["output_mark"] = _parse_mark(toks[1])
            elif head == "if_id":
                e["if_id"] = int(toks[1], 0)
            elif head == "replay-window":
                _pairs(toks, e)
                if "flag" in toks:
                    fi = toks.index("flag")
                    e["flags"] = [t for t in toks[fi + 1:] if not t.startswith("(")]
            else:
                _pairs(toks, e)
        if esn_lines:
            text_esn = " ".join(esn_lines)
            esn: dict[str, int] = {}
            for k in ("seq-hi", "seq", "oseq-hi", "oseq"):
                m3 = re.search(rf"(?<![\w-]){k} (0x[0-9a-f]+)", text_esn)
                if m3:
                    esn[k] = int(m3.group(1), 16)
            m4 = re.search(r"replay_window (\d+), bitmap-length (\d+)", text_esn)
            if m4:
                esn["replay_window"] = int(m4.group(1))
                esn["bmp_len"] = int(m4.group(2))
            e["esn"] = esn
        result.append(e)
    return result


def ip_xfrm(netns: str, what: str) -> str:
    """Text of ``ip -s -s -n NETNS xfrm WHAT show``."""
    return subprocess.run(
        ["ip", "-s", "-s", "-n", netns, "xfrm", what, "show"],
        capture_output=True, text=True, check=True,
    ).stdout
