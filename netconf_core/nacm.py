"""RFC 8341 NETCONF Access Control Model: the rule lists of `/nacm:nacm` in running,
enforced on protocol operations (exec), data reads (get, get-config, get-data), writes
(create / update / delete, from libyang's diff of the change) and notifications.

When NACM applies: running holds a `/nacm` container with `enable-nacm` true (its default)
and the session's user is not a recovery user (RFC 8341 section 2.5: the recovery session
bypasses access control; `ServerConfig.nacm_recovery_users`). A server without NACM
configuration behaves as before (every authenticated user may do everything, except what
`read_secrets = false` hides: `secrets_access`), so that enabling NACM is one edit-config
by an administrator, whose own group the first rule list then permits.

Rule evaluation follows section 3.4.5: the rule lists of the user's groups in order, their
rules in order, the first rule that matches the module, the rule type (rpc-name,
notification-name, path or none) and the access operation decides; otherwise
`nacm:default-deny-all` / `default-deny-write` on the node (or an ancestor) deny, and
otherwise read-default / write-default / exec-default. `kill-session` and `delete-config`
are default-deny-all (section 3.2.?: RFC 6241's module predates the extension). Groups come
from `/nacm/groups` and, while `enable-external-groups` is true, from the user database
(`[[users]] groups`, `ServerConfig.user_groups`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from lxml import etree

from netconf_core.errors import _MODULES, NC_NS, RpcError
from netconf_core.schema import YANG_NS, SchemaNode, YangSchema

NACM_NS = "urn:ietf:params:xml:ns:yang:ietf-netconf-acm"
MODULE = "ietf-netconf-acm"
OPS = ("create", "read", "update", "delete", "exec")
DENY_ALL_RPCS = frozenset({(NC_NS, "kill-session"), (NC_NS, "delete-config")})
_Q = f"{{{NACM_NS}}}"
_DIFF_OP = f"{{{YANG_NS}}}operation"
_STEP = re.compile(r"""(?P<name>[^/\[\]]+)(?P<preds>(?:\[(?:[^\]'"]|'[^']*'|"[^"]*")*\])*)""")
_PRED = re.compile(r"""\[\s*([\w.:-]+)\s*=\s*(?:'([^']*)'|"([^"]*)")\s*\]""")

Step = tuple[str | None, str, dict[str, str]]  # namespace (None: any), name, key values


@dataclass
class Rule:
    name: str
    module: str
    ops: frozenset[str]
    permit: bool
    rpc: str | None = None
    notification: str | None = None
    path: list[Step] | None = None

    def applies_to_data(self) -> bool:
        return self.rpc is None and self.notification is None


@dataclass
class RuleList:
    groups: frozenset[str]
    rules: list[Rule]


@dataclass
class Config:
    enabled: bool = True
    read_default: bool = True
    write_default: bool = False
    exec_default: bool = True
    external_groups: bool = True
    groups: dict[str, frozenset[str]] = field(default_factory=dict)  # group -> users
    rule_lists: list[RuleList] = field(default_factory=list)


@dataclass
class Counters:
    denied_operations: int = 0
    denied_data_writes: int = 0
    denied_notifications: int = 0


class Nacm:
    """The access control of one server; rules are read from running when it changes."""

    def __init__(self, schema: YangSchema, recovery_users: frozenset[str] = frozenset(),
                 external_groups: dict[str, frozenset[str]] | None = None) -> None:
        self.schema = schema
        self.recovery_users = recovery_users
        self.external_groups = external_groups or {}
        self.counters = Counters()
        self._source: etree._Element | None = None
        self._config: Config | None = None

    # -- configuration -------------------------------------------------------------------

    def load(self, running: etree._Element) -> Config | None:
        """The NACM configuration of this running tree (cached by identity: running's tree
        is replaced, never changed in place)."""
        if running is not self._source:
            self._source = running
            el = running.find(_Q + "nacm")
            self._config = _parse(el) if el is not None else None
        return self._config

    def applies(self, running: etree._Element, user: str) -> Config | None:
        cfg = self.load(running)
        if cfg is None or not cfg.enabled or user in self.recovery_users:
            return None
        return cfg

    # -- decisions ------------------------------------------------------------------------

    def _rules_for(self, cfg: Config, user: str) -> list[Rule]:
        mine = {g for g, users in cfg.groups.items() if user in users}
        if cfg.external_groups:
            mine |= self.external_groups.get(user, frozenset())
        return [r for rl in cfg.rule_lists if "*" in rl.groups or rl.groups & mine
                for r in rl.rules]

    def may_exec(self, cfg: Config, user: str, namespace: str, name: str) -> bool:
        if (namespace, name) == (NC_NS, "close-session"):
            return True  # section 3.4.4: always permitted
        module = _module_name(self.schema, namespace)
        for r in self._rules_for(cfg, user):
            if r.module not in ("*", module) or ("exec" not in r.ops and "*" not in r.ops):
                continue
            if r.notification is not None or r.path is not None:
                continue
            if r.rpc is not None and r.rpc not in ("*", name):
                continue
            return r.permit
        if (namespace, name) in DENY_ALL_RPCS or self.schema.rpc_denies_all(namespace, name):
            return False
        return cfg.exec_default

    def may_notify(self, cfg: Config, user: str, content: etree._Element) -> bool:
        tag = content.tag if isinstance(content.tag, str) else ""
        ns, _, name = tag[1:].partition("}")
        module = _module_name(self.schema, ns)
        for r in self._rules_for(cfg, user):
            if r.module not in ("*", module) or ("read" not in r.ops and "*" not in r.ops):
                continue
            if r.rpc is not None or r.path is not None:
                continue
            if r.notification is not None and r.notification not in ("*", name):
                continue
            return r.permit
        return cfg.read_default

    def _may_data(self, rules: list[Rule], cfg: Config, op: str, sn: SchemaNode | None,
                  steps: list[tuple[str, str, etree._Element]], deny_all: bool,
                  deny_write: bool) -> bool:
        module = sn.module if sn is not None else None
        for r in rules:
            if not r.applies_to_data() or r.module not in ("*", module):
                continue
            if op not in r.ops and "*" not in r.ops:
                continue
            if r.path is not None and not _path_covers(r.path, steps):
                continue
            return r.permit
        if deny_all or (op != "read" and deny_write):
            return False
        return cfg.read_default if op == "read" else cfg.write_default

    # -- reads -------------------------------------------------------------------------------

    def filter_read(self, cfg: Config, user: str, data: etree._Element) -> None:
        """Remove from a `<data>` tree, in place, every node `user` may not read (a denied
        node stays as the path to permitted descendants; list entries keep their keys)."""
        rules = self._rules_for(cfg, user)
        for child in list(data):
            if isinstance(child.tag, str) and not self._read(
                    rules, cfg, child, None, [], False):
                data.remove(child)

    def _read(self, rules: list[Rule], cfg: Config, el: etree._Element,
              psn: SchemaNode | None, steps: list, deny_all: bool) -> bool:
        sn = self.schema.lookup(psn, el.tag)
        here = [*steps, (*_split(el.tag), el)]
        deny_all = deny_all or (sn is not None and sn.deny_all)
        ok = self._may_data(rules, cfg, "read", sn, here, deny_all, False)
        if sn is None or sn.kind not in ("container", "list"):
            return ok
        keys = set(sn.key_tags) if sn.kind == "list" else set()
        kept = False
        for child in list(el):
            if not isinstance(child.tag, str) or child.tag in keys:
                continue
            if self._read(rules, cfg, child, sn, here, deny_all):
                kept = True
            else:
                el.remove(child)
        return ok or kept

    # -- writes ------------------------------------------------------------------------------

    def check_write(self, cfg: Config, user: str, old: etree._Element,
                    new: etree._Element) -> None:
        """access-denied unless `user` may make every change from `old` to `new` (two
        `<data>` trees of one datastore), judged on libyang's diff."""
        try:
            diff = self.schema.diff(old, new)
        except RpcError:
            return  # not a valid tree: the edit itself reports why, nothing is written
        if diff is None:
            return
        rules = self._rules_for(cfg, user)
        for child in diff:
            if isinstance(child.tag, str):
                self._write(rules, cfg, user, child, None, [], None, False, False)

    def _write(self, rules: list[Rule], cfg: Config, user: str, el: etree._Element,
               psn: SchemaNode | None, steps: list, op: str | None, deny_all: bool,
               deny_write: bool) -> None:
        sn = self.schema.lookup(psn, el.tag)
        here = [*steps, (*_split(el.tag), el)]
        deny_all = deny_all or (sn is not None and sn.deny_all)
        deny_write = deny_write or (sn is not None and sn.deny_write)
        own = el.get(_DIFF_OP)
        if own is not None:
            op = {"create": "create", "delete": "delete", "replace": "update",
                  "merge": "update", "none": None}.get(own, "update")
        if op is not None and not self._may_data(rules, cfg, op, sn, here, deny_all,
                                                 deny_write):
            self.counters.denied_data_writes += 1
            raise RpcError(
                "application", "access-denied",
                f'Access to the data model "{sn.module if sn else "?"}" is denied because '
                f'"{user}" NACM authorization failed ({op} of {_show(here)}).',
                path=_show(here))
        if sn is not None and sn.kind in ("container", "list"):
            for child in el:
                if isinstance(child.tag, str):
                    self._write(rules, cfg, user, child, sn, here, op, deny_all, deny_write)

    # -- state -------------------------------------------------------------------------------

    def add_counters(self, data: etree._Element) -> None:
        """The config-false counters under /nacm for `<get>`."""
        nacm = data.find(_Q + "nacm")
        if nacm is None:
            nacm = etree.SubElement(data, _Q + "nacm", nsmap={None: NACM_NS})
        for name, value in (("denied-operations", self.counters.denied_operations),
                            ("denied-data-writes", self.counters.denied_data_writes),
                            ("denied-notifications", self.counters.denied_notifications)):
            etree.SubElement(nacm, _Q + name).text = str(value)


def _split(tag: str) -> tuple[str, str]:
    ns, _, name = tag[1:].partition("}")
    return ns, name


def _show(steps: list) -> str:
    """A JSON-style data path of the node (module names on module changes)."""
    out, cur = [], None
    for ns, name, _el in steps:
        mod = next((m for m, u in _MODULES.items() if u == ns), None)
        seg = f"{mod}:{name}" if mod and mod != cur else name
        cur = mod or cur
        out.append(seg)
    return "/" + "/".join(out)


def _module_name(schema: YangSchema, namespace: str) -> str | None:
    mod = schema._modules_by_ns.get(namespace)
    return mod.name() if mod is not None else None


def _path_covers(rule: list[Step], steps: list[tuple[str, str, etree._Element]]) -> bool:
    """Does the rule's node-instance-identifier select this node or an ancestor of it?"""
    if len(rule) > len(steps):
        return False
    for (rns, rname, preds), (ns, name, el) in zip(rule, steps, strict=False):
        if rname != "*" and (rname != name or (rns is not None and rns != ns)):
            return False
        for k, v in preds.items():
            kel = el.find(f"{{{ns}}}{k}")
            if kel is None or (kel.text or "").strip() != v:
                return False
    return True


def _parse_path(text: str, el: etree._Element) -> list[Step]:
    """A rule's `path` (XML prefixes from the leaf's namespace context, or module names)."""
    text = text.strip()
    if text in ("", "/"):
        return []
    steps: list[Step] = []
    cur: str | None = None
    for m in _STEP.finditer(text):
        pfx, _, name = m.group("name").strip().rpartition(":")
        if pfx:
            cur = el.nsmap.get(pfx) or _MODULES.get(pfx)
            if cur is None:
                raise ValueError(f"unknown prefix {pfx!r} in NACM path {text!r}")
        preds = {k.rpartition(":")[2]: (a if a is not None else b)
                 for k, a, b in _PRED.findall(m.group("preds") or "")}
        steps.append((cur, name, preds))
    return steps


def _bool(el: etree._Element, name: str, default: bool) -> bool:
    v = el.findtext(_Q + name)
    return default if v is None else v.strip() == "true"


def _action(el: etree._Element, name: str, default: bool) -> bool:
    v = el.findtext(_Q + name)
    return default if v is None else v.strip() == "permit"


def _parse(el: etree._Element) -> Config:
    cfg = Config(
        enabled=_bool(el, "enable-nacm", True),
        read_default=_action(el, "read-default", True),
        write_default=_action(el, "write-default", False),
        exec_default=_action(el, "exec-default", True),
        external_groups=_bool(el, "enable-external-groups", True),
    )
    for g in el.iterfind(f"{_Q}groups/{_Q}group"):
        cfg.groups[g.findtext(_Q + "name") or ""] = frozenset(
            (u.text or "").strip() for u in g.iterfind(_Q + "user-name"))
    for rl in el.iterfind(_Q + "rule-list"):
        rules = []
        for r in rl.iterfind(_Q + "rule"):
            ops_text = (r.findtext(_Q + "access-operations") or "*").split()
            path_el = r.find(_Q + "path")
            try:
                path = _parse_path(path_el.text or "", path_el) if path_el is not None else None
            except ValueError:
                path = [(None, "\0unmatched", {})]  # an unresolvable path matches nothing
            rules.append(Rule(
                name=r.findtext(_Q + "name") or "",
                module=(r.findtext(_Q + "module-name") or "*").strip(),
                ops=frozenset(ops_text),
                permit=(r.findtext(_Q + "action") or "").strip() == "permit",
                rpc=(r.findtext(_Q + "rpc-name") or None),
                notification=(r.findtext(_Q + "notification-name") or None),
                path=path,
            ))
        cfg.rule_lists.append(RuleList(
            groups=frozenset((g.text or "").strip() for g in rl.iterfind(_Q + "group")),
            rules=rules))
    return cfg
