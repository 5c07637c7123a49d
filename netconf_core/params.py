"""Parsing of RFC 6241 operation parameters into Python values, with the RFC's errors for
missing, unknown or malformed parameters."""

from __future__ import annotations

from lxml import etree

from netconf_core.errors import NC_NS, RpcError

NC = f"{{{NC_NS}}}"
DATASTORE_NAMES = ("running", "candidate", "startup")


def local(tag: str) -> str:
    return tag.rpartition("}")[2]


def ns_of(tag: str) -> str:
    return tag[1:].partition("}")[0] if tag.startswith("{") else ""


def children(
    op: etree._Element, allowed: tuple[str, ...], also_ns: tuple[str, ...] = (),
    repeatable: tuple[str, ...] = (),
) -> dict[str, etree._Element]:
    """The operation's parameters by local name; anything else is unknown-element.
    `also_ns` admits parameters in other namespaces too (clients put create-subscription's
    `<filter>` in the base namespace). A `repeatable` parameter (a leaf-list) maps to the
    list of its elements."""
    out: dict = {}
    namespaces = (ns_of(op.tag), *also_ns)
    for child in op:
        if not isinstance(child.tag, str):
            continue  # comments, processing instructions
        name = local(child.tag)
        if ns_of(child.tag) not in namespaces or name not in allowed:
            raise RpcError(
                "protocol", "unknown-element", f"unexpected parameter {name!r} in {local(op.tag)}",
                info={"bad-element": name},
            )
        if name in repeatable:
            out.setdefault(name, []).append(child)
            continue
        if name in out:
            raise RpcError(
                "protocol", "bad-element", f"parameter {name!r} given twice",
                info={"bad-element": name},
            )
        out[name] = child
    return out


def require(params: dict[str, etree._Element], name: str, op: str) -> etree._Element:
    el = params.get(name)
    if el is None:
        raise RpcError(
            "protocol", "missing-element", f"{op} needs a <{name}> parameter",
            info={"bad-element": name},
        )
    return el


def text(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return (el.text or "").strip()


def datastore(
    container: etree._Element, allowed: tuple[str, ...], what: str, allow_config: bool = False
) -> str | etree._Element:
    """`<target><running/></target>` → "running"; with `allow_config`, `<source><config>`
    returns the `<config>` element. `<url>` is refused: :url is not advertised."""
    items = [c for c in container if isinstance(c.tag, str)]
    if len(items) != 1:
        raise RpcError(
            "protocol", "missing-element" if not items else "bad-element",
            f"<{what}> must name exactly one datastore",
            info={"bad-element": what},
        )
    el = items[0]
    name = local(el.tag)
    if ns_of(el.tag) != NC_NS:
        raise RpcError(
            "protocol", "unknown-namespace",
            f"<{what}> child {name!r} is not in the base namespace",
            info={"bad-element": name, "bad-namespace": ns_of(el.tag)},
        )
    if name == "config" and allow_config:
        return el
    if name == "url":
        raise RpcError(
            "protocol", "operation-not-supported", "the :url capability is not supported",
            info={"bad-element": "url"},
        )
    if name not in allowed:
        raise RpcError(
            "protocol", "invalid-value", f"{name!r} is not a valid {what} here",
            info={"bad-element": what},
        )
    return name


def enum(el: etree._Element | None, values: tuple[str, ...], default: str, what: str) -> str:
    v = text(el)
    if v is None:
        return default
    if v not in values:
        raise RpcError(
            "protocol", "invalid-value", f"{what} must be one of {', '.join(values)}, not {v!r}",
            info={"bad-element": what},
        )
    return v


def uint(el: etree._Element | None, default: int, what: str, minimum: int = 1) -> int:
    v = text(el)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        n = -1
    if n < minimum or n > 4294967295:
        raise RpcError(
            "protocol", "invalid-value", f"{what} must be an unsigned integer, not {v!r}",
            info={"bad-element": what},
        )
    return n
