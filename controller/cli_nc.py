"""NETCONF plumbing of the controller CLI's client commands: edit and read helpers on an
ncclient session, and waiting (with progress on stderr) for changes to take effect."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from lxml import etree

from controller.cli_output import CliError, text

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
FP = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
Q = f"{{{FP}}}"
OP = f"{{{NC_NS}}}operation"

# IKEv2 transform ids (RFC 9061 / IANA) for readable --encryption/--integrity values.
ENCRYPTION = {"aes-gcm-16": 20, "aes-gcm-8": 18, "aes-gcm-12": 19, "aes-cbc": 12,
              "aes-ctr": 13, "chacha20-poly1305": 28, "null": 11}
INTEGRITY = {"none": 0, "hmac-sha1-96": 2, "hmac-sha2-256-128": 12,
             "hmac-sha2-384-192": 13, "hmac-sha2-512-256": 14}
POLL = 0.2


def _e(tag: str, value: object | None = None, *children: etree._Element) -> etree._Element:
    el = etree.Element(Q + tag, nsmap={None: FP})
    if value is not None:
        el.text = str(value)
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
    return etree.fromstring(m.get(filter=("subtree", subtree)).xml.encode())


def _running(m: Any, subtree: str) -> etree._Element:
    return etree.fromstring(m.get_config("running", filter=("subtree", subtree)).xml.encode())


def _state(m: Any) -> etree._Element:
    return _get(m, f'<flow-protection-state xmlns="{FP}"/>')


def _policies(st: etree._Element) -> dict[str, etree._Element]:
    return {text(p, "name"): p for p in st.iter(Q + "policy")}


def _rpc(m: Any, name: str, **args: str) -> etree._Element:
    el = _e(name, None, *(_e(k, v) for k, v in args.items()))
    return etree.fromstring(m.dispatch(el).xml.encode())


# ---- waiting ------------------------------------------------------------------------------


def wait(what: str, probe: Callable[[], tuple[bool, str | None, str]], timeout: float,
         quiet: bool = False) -> None:
    """Poll `probe` → (done, failure or None, label) until done; progress on stderr when
    the label changes. CliError(code 1) on failure, (code 3) on timeout."""
    start = time.monotonic()
    last = None
    while True:
        done, failure, label = probe()
        elapsed = time.monotonic() - start
        if label != last and not quiet:
            print(f"{what}: {label} ({elapsed:.1f}s)", file=sys.stderr)
            last = label
        if failure:
            raise CliError(f"{what} failed: {failure}")
        if done:
            return
        if elapsed > timeout:
            raise CliError(f"timed out after {timeout:g}s waiting for {what} (now: {label})",
                           code=3)
        time.sleep(POLL)


def _wait_policies(m: Any, names: list[str], timeout: float, quiet: bool,
                   want_generation: dict[str, int] | None = None) -> None:
    what = names[0] if len(names) == 1 else f"{len(names)} policies"

    def probe() -> tuple[bool, str | None, str]:
        pols = _policies(_state(m))
        counts: dict[str, int] = {}
        for n in names:
            p = pols.get(n)
            s = text(p, "status", "absent")
            if want_generation and p is not None and \
                    int(text(p, "generation", "-1") or -1) < want_generation.get(n, 0):
                s = "rekeying"
            if s == "failed":
                return False, f"policy {n}: {text(p, 'error-message') or 'failed'}", s
            counts[s] = counts.get(s, 0) + 1
        label = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) \
            if len(names) > 1 else next(iter(counts))
        # an on-demand policy is in place once it is "waiting" (for its first packet)
        done = counts.get("active", 0) + counts.get("waiting", 0) == len(names)
        return done, None, label

    wait(what, probe, timeout, quiet)


def _wait_gone(m: Any, names: list[str], timeout: float, quiet: bool) -> None:
    what = (f"removal of {names[0]}" if len(names) == 1
            else f"removal of {len(names)} policies")

    def probe() -> tuple[bool, str | None, str]:
        pols = _policies(_state(m))
        left = [n for n in names if n in pols]
        if not left:
            return True, None, "removed from the NSFs"
        errs = {text(pols[n], "error-message") for n in left} - {""}
        label = f"{len(left)} deleting" + (f" ({'; '.join(sorted(errs))})" if errs else "")
        return False, None, label

    wait(what, probe, timeout, quiet)


