"""Namespace resolution for `:xpath` filters: unprefixed names and module-name prefixes.

XPath 1.0 matches an unprefixed name test only against elements in no namespace, so
`/ipsec-ikeless/spd` selects nothing in our data. yangcli's `xget` sends exactly that, and
netconfd and the libyang-based servers (Netopeer2) accept it: a name without a prefix means
the node of that name in the module of its parent step, or, at the top or wherever the
parent is unknown, the one module that defines such a node. Names that several modules
define there are ambiguous (an error, not a guess). Prefixes not declared in the filter's
XML namespaces but equal to a module name or a module's YANG prefix name that module
(libyang's JSON form, `/ietf-i2nsf-ikeless:ipsec-ikeless`).

The expression is tokenized per XPath 1.0 section 3.7 (which names are operators, functions,
node types or axes follows from the preceding token) and each element name test is rewritten
to a prefixed one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

import libyang
from _libyang import lib  # type: ignore[import-not-found]
from libyang.util import c2str

from netconf_core.errors import NC_NS, RpcError

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<literal>"[^"]*"|'[^']*')
      | (?P<number>\d+(?:\.\d*)?|\.\d+)
      | (?P<punct>\.\.|::|//|!=|<=|>=|[()\[\].@,/|+\-=<>*])
      | (?P<var>\$[^\W\d][\w.\-]*(?::[^\W\d][\w.\-]*)?)
      | (?P<name>[^\W\d][\w.\-]*(?::(?:\*|[^\W\d][\w.\-]*))?)
    """,
    re.VERBOSE | re.UNICODE,
)
ROOT_PREFIX = "_ncdata"
_OPERATOR_NAMES = frozenset(("and", "or", "mod", "div"))
# after these tokens a name is a name test (or a function / axis name), never an operator
_NOT_OPERAND_END = frozenset(("@", "::", "(", "[", ",", "/", "//", "|", "+", "-", "=", "!=",
                              "<", "<=", ">", ">=", "and", "or", "mod", "div", "*op"))
_NODE_TYPES = frozenset(("comment", "text", "processing-instruction", "node"))
_DATA_TYPES = (libyang.SNode.CONTAINER, libyang.SNode.LIST, libyang.SNode.LEAF,
               libyang.SNode.LEAFLIST, lib.LYS_ANYDATA, lib.LYS_ANYXML)


def _invalid(select: str, why: str) -> RpcError:
    return RpcError("application", "invalid-value", f"invalid XPath filter {select!r}: {why}",
                    info={"bad-attribute": "select", "bad-element": "filter"})


def tokens(expr: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"unexpected character {expr[pos]!r} at {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        yield kind, m.group()


class NameIndex:
    """Which modules define a data node of a given name: at the top level, anywhere, and per
    module namespace (children of augments count for the augmenting module)."""

    def __init__(self, ctx: libyang.Context) -> None:
        self.top: dict[str, set[str]] = {}
        self.anywhere: dict[str, set[str]] = {}
        self.modules: dict[str, str] = {}  # module name and YANG prefix -> namespace
        self.top_nodes: dict[tuple[str, str], libyang.SNode] = {}
        for mod in ctx:
            ns = c2str(mod.cdata.ns)
            self.modules.setdefault(mod.name(), ns)
            self.modules.setdefault(mod.prefix(), ns)
            if not mod.implemented():
                continue
            # top-level notifications too: create-subscription filters select them
            for sn in mod.children(types=(*_DATA_TYPES, libyang.SNode.NOTIF)):
                self.top.setdefault(sn.name(), set()).add(ns)
                self.top_nodes[(ns, sn.name())] = sn
                self._walk(sn)

    def path_exists(self, ns: str, names: list[str]) -> bool:
        """Does the top-level node `names[0]` of module `ns` have the descendants
        `names[1:]` (children of any module: augments)?"""
        sn = self.top_nodes.get((ns, names[0]))
        for name in names[1:]:
            if sn is None:
                return False
            sn = next((c for c in sn.children(types=_DATA_TYPES) if c.name() == name), None)
        return sn is not None

    def _walk(self, sn: libyang.SNode) -> None:
        self.anywhere.setdefault(sn.name(), set()).add(c2str(sn.module().cdata.ns))
        if sn.nodetype() in (libyang.SNode.CONTAINER, libyang.SNode.LIST,
                             libyang.SNode.NOTIF):
            for child in sn.children(types=_DATA_TYPES):
                self._walk(child)


@functools.lru_cache(maxsize=8)
def _index(ctx: libyang.Context) -> NameIndex:
    return NameIndex(ctx)


def resolve(select: str, nsmap: dict[str, str], ctx: libyang.Context
            ) -> tuple[str, dict[str, str]]:
    """The expression with every element name test prefixed, and the namespaces to
    evaluate it with; RpcError invalid-value for a malformed or ambiguous expression."""
    idx = _index(ctx)
    ns = dict(nsmap)
    prefix_of: dict[str, str] = {}
    out: list[str] = []
    prev = ""  # the previous non-blank token (operators are marked "*op")
    cur: str | None = None  # namespace of the previous step of the current location path
    at_top = True  # the current location path starts at the <data> root
    stack: list[tuple[str | None, bool]] = []  # (cur, at_top) outside each [ or (
    try:
        toks = list(tokens(select))
    except ValueError as exc:
        raise _invalid(select, str(exc)) from None
    i = 0

    def next_token(j: int) -> str:
        while j < len(toks) and toks[j][0] == "ws":
            j += 1
        return toks[j][1] if j < len(toks) else ""

    def prefix_for(uri: str) -> str:
        for p, u in ns.items():
            if u == uri:
                return p
        p = prefix_of.setdefault(uri, f"_nc{len(prefix_of)}")
        ns[p] = uri
        return p

    while i < len(toks):
        kind, text = toks[i]
        i += 1
        if kind == "ws":
            out.append(text)
            continue
        operand_end = prev not in _NOT_OPERAND_END and prev != ""
        if kind == "punct":
            if text == "*" and operand_end:
                prev = "*op"
                cur, at_top = None, not stack
                out.append(text)
                continue
            if text in ("[", "("):
                stack.append((cur, at_top))
                # a predicate's paths start at the step it follows; a bracket's anywhere
                at_top = text == "(" and not stack[:-1]
                cur = cur if text == "[" else None
            elif text in ("]", ")"):
                if not stack:
                    raise _invalid(select, f"unbalanced {text!r}")
                cur, at_top = stack.pop()
            elif text in (",", "|", "+", "-", "=", "!=", "<", "<=", ">", ">="):
                cur = stack[-1][0] if stack and text != "|" else None
                at_top = not stack
            elif text in (".", ".."):
                if text == "..":
                    cur, at_top = None, False
            elif text == "/" and not operand_end:
                # an absolute path: the document's root element is the <data> wrapper
                cur, at_top = None, True
                ns.setdefault(ROOT_PREFIX, NC_NS)
                nxt = next_token(i)
                text = f"/{ROOT_PREFIX}:data" + ("/" if nxt and (
                    nxt[0].isalpha() or nxt[0] in "_*.@") and nxt not in _OPERATOR_NAMES
                    else "")
            elif text == "//":
                at_top = False
            out.append(text)
            prev = text
            continue
        if kind == "name" and operand_end and text in _OPERATOR_NAMES:
            prev = text
            cur, at_top = (stack[-1][0] if stack else None), not stack
            out.append(text)
            continue
        if kind != "name":
            out.append(text)
            prev = text
            continue
        nxt = next_token(i)
        if nxt == "(" or nxt == "::" or prev == "@" or (
                prev == "::" and len(out) >= 2 and _axis_before(out) == "attribute"):
            if nxt == "(" and text not in _NODE_TYPES:
                cur, at_top = None, False  # a function call: its result's namespace is open
            out.append(text)
            prev = text
            continue
        # an element name test
        pfx, _, local = text.rpartition(":")
        if pfx:
            uri = ns.get(pfx) or idx.modules.get(pfx)
            if uri is None:
                raise _invalid(select, f"prefix {pfx!r} is not declared and names no module")
            if pfx not in ns:
                ns[pfx] = uri
            cur = uri
        elif local == "*":
            pass
        else:
            uri = _lookup(idx, local, cur, at_top, select, _following_names(toks, i))
            if uri is not None:
                text = f"{prefix_for(uri)}:{local}"
                cur = uri
        at_top = False
        out.append(text)
        prev = text
    if stack:
        raise _invalid(select, "unbalanced brackets")
    return "".join(out), ns


def _axis_before(out: list[str]) -> str:
    for t in reversed(out[:-1]):
        if not t.isspace():
            return t
    return ""


def _following_names(toks: list[tuple[str, str]], i: int) -> list[str]:
    """The names of the plain child steps that follow (`/b/c` of `/a/b/c[...]`)."""
    out: list[str] = []
    while i + 1 < len(toks) and toks[i][1] == "/" and toks[i + 1][0] == "name" \
            and ":" not in toks[i + 1][1]:
        out.append(toks[i + 1][1])
        i += 2
    return out


def _lookup(idx: NameIndex, name: str, cur: str | None, at_top: bool, select: str,
            following: list[str]) -> str | None:
    if at_top:
        cands = idx.top.get(name, set())
        if len(cands) > 1 and following:
            # several modules have a top-level node of this name: the path decides (as
            # sysrepo/Netopeer2 do: /top/protocols/... is the module whose top has those)
            cands = {ns for ns in cands if idx.path_exists(ns, [name, *following])} or cands
    elif cur is not None and cur in idx.anywhere.get(name, ()):
        return cur  # YANG: an unprefixed child is in its parent's module
    else:
        cands = idx.anywhere.get(name, set())
    if len(cands) > 1:
        raise RpcError(
            "application", "invalid-value",
            f"invalid XPath filter {select!r}: {name!r} is ambiguous (defined in "
            f"{', '.join(sorted(cands))}); give it a prefix",
            info={"bad-attribute": "select", "bad-element": "filter"})
    return next(iter(cands)) if cands else None
