"""The `ike` applier: RFC 9061 IKE case (ietf-i2nsf-ike) → strongSwan charon over vici.

A commit is translated (nsf_agent.ike.translate) into the vici messages it stands for and
the difference to what is loaded becomes an ordered list of steps: credentials first, then
connections, then removals. Every step carries its undo; when charon refuses a step, the
steps already done are undone in reverse and the commit fails with charon's message, so
charon's loaded connections and secrets are as before.

Ownership: our connections and shared secrets carry a name prefix (`i2nsf-` by default);
private keys are remembered in a ledger in the state directory. Reconciliation never
unloads anything else.

Charon reports IKE and Child SA events over vici; they become notifications of the
`i2nsf-ike-events` module. Authentication failures have no vici event of their own: they
are recognised in charon's log stream.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lxml import etree

from netconf_core.applier import ConfigChange, Notify
from netconf_core.datastore import write_atomic
from netconf_core.errors import RpcError
from nsf_agent.ike import translate
from nsf_agent.ike.charon import (
    CHARON,
    Charon,
    CharonError,
    CharonSettings,
    Vici,
    ViciError,
    events,
)
from nsf_agent.ike.translate import Conn, IkeConfig, Options, PrivateKey, Secret

log = logging.getLogger(__name__)

NS = translate.NS
Q = translate.Q
EV_NS = "urn:i2nsf-sdn:yang:i2nsf-ike-events"
EV = f"{{{EV_NS}}}"
MODULE = "i2nsf-ike-events"
VICI_EVENTS = ["ike-updown", "child-updown", "ike-rekey", "child-rekey"]

# charon log lines (strongSwan 5.9) that mean IKE authentication failed, and who failed it
AUTH_FAILURE_LOCAL = (
    "MAC mismatched", "no shared key found", "no trusted", "signature validation failed",
    "constraint check failed", "EAP method", "no private key found", "verification of",
)
AUTH_FAILURE_REMOTE = ("received AUTHENTICATION_FAILED notify",)
# charon log lines (strongSwan 5.9) that mean a Child SA did not come up: charon sends no
# vici event for it (child-updown only covers installed Child SAs)
CHILD_FAILURE = re.compile(
    r"no CHILD_SA built"  # received TS_UNACCEPTABLE / NO_PROPOSAL_CHOSEN / ... notify
    r"|traffic selectors .* unacceptable"  # the responder's side of TS_UNACCEPTABLE
    r"|unable to install"  # IPsec policies (SPD) / SAs (SAD): libipsec without a route
    r"|failed to establish CHILD_SA")
_CHILD_START = re.compile(r"establishing CHILD_SA (\S+?)\{\d+\}")


@dataclass
class Step:
    """One vici operation of a transaction and what undoes it."""

    kind: str  # load-shared unload-shared load-key unload-key load-cert load-conn ...
    label: str  # the configuration entry, for error messages
    path: str  # its data path
    message: dict[str, Any] = field(repr=False)
    undo: list[Step] = field(default_factory=list)


def _s(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _with(step: Step, undo: list[Step]) -> Step:
    step.undo = undo
    return step


def plan(old: IkeConfig, new: IkeConfig, terminate_ms: int = 2000) -> list[Step]:
    """The steps that turn charon's loaded `old` configuration into `new`."""
    steps: list[Step] = []

    def shared(sec: Secret) -> Step:
        return Step("load-shared", f"shared secret {sec.id!r}", translate.ROOT + "/pad",
                    sec.message())

    def unshared(sid: str) -> Step:
        return Step("unload-shared", f"shared secret {sid!r}", translate.ROOT + "/pad",
                    {"id": sid})

    def key(k: PrivateKey) -> Step:
        return Step("load-key", f"private key {k.ref}", translate.ROOT + "/pad",
                    {**k.message(), "ref": k.ref})

    def unkey(ref: str) -> Step:
        return Step("unload-key", f"private key {ref}", translate.ROOT + "/pad", {"ref": ref})

    def pool(name: str, p: dict[str, object]) -> Step:
        return Step("load-pool", f"virtual IP pool {name!r}", translate.ROOT,
                    {name: p})

    def unpool(name: str) -> Step:
        return Step("unload-pool", f"virtual IP pool {name!r}", translate.ROOT,
                    {"name": name})

    def authority(name: str, pem: bytes) -> Step:
        return Step("load-authority", f"CA certificate {name!r}", translate.ROOT + "/pad",
                    {name: {"cacert": pem}})

    def unauthority(name: str) -> Step:
        return Step("unload-authority", f"CA certificate {name!r}", translate.ROOT + "/pad",
                    {"name": name})

    def conn(c: Conn) -> Step:
        return Step("load-conn", f"connection {c.name!r}", translate.conn_path(c.name),
                    c.load_message())

    def unconn(c: Conn) -> list[Step]:
        return [
            Step("unload-conn", f"connection {c.name!r}", translate.conn_path(c.name),
                 {"name": c.vici_name}),
            Step("terminate", f"connection {c.name!r}", translate.conn_path(c.name),
                 {"ike": c.vici_name, "force": "yes", "timeout": str(terminate_ms)}),
        ]

    for sid, sec in new.secrets.items():
        if sid not in old.secrets:
            steps.append(_with(shared(sec), [unshared(sid)]))
        elif old.secrets[sid] != sec:
            steps.append(_with(shared(sec), [shared(old.secrets[sid])]))
    for ref, k in new.keys.items():
        if ref not in old.keys:
            steps.append(_with(key(k), [unkey(ref)]))
    for ref, pem in new.certs.items():
        if ref not in old.certs:  # vici has no unload-cert; without its key it is inert
            steps.append(Step("load-cert", "certificate", translate.ROOT + "/pad",
                              {"type": "X509", "flag": "NONE", "data": pem}))
    for name, pem in new.authorities.items():
        if name not in old.authorities:
            steps.append(_with(authority(name, pem), [unauthority(name)]))
    for ref, crl in new.crls.items():
        if ref not in old.crls:
            steps.append(Step("load-cert", "CRL", translate.ROOT + "/pad",
                              {"type": "X509_CRL", "flag": "NONE", "data": crl}))
    for name, p in new.pools.items():
        if name not in old.pools:
            steps.append(_with(pool(name, p), [unpool(name)]))
        elif old.pools[name] != p:
            steps.append(_with(pool(name, p), [pool(name, old.pools[name])]))
    for name, c in new.conns.items():
        if name not in old.conns:
            steps.append(_with(conn(c), unconn(c)))
        elif old.conns[name].message != c.message:
            # only a changed definition is loaded again: charon restarts the Child SAs
            # of a replaced `start` connection (new keys or certificates do not count)
            steps.append(_with(conn(c), [conn(old.conns[name])]))
    for name, c in old.conns.items():
        if name not in new.conns:
            first, term = unconn(c)
            first.undo = [conn(c)]
            steps += [first, term]
    for name, p in old.pools.items():
        if name not in new.pools:  # after its connection is gone: no online leases
            steps.append(_with(unpool(name), [pool(name, p)]))
    for name, pem in old.authorities.items():
        if name not in new.authorities:
            steps.append(_with(unauthority(name), [authority(name, pem)]))
    for sid, sec in old.secrets.items():
        if sid not in new.secrets:
            steps.append(_with(unshared(sid), [shared(sec)]))
    for ref, k in old.keys.items():
        if ref not in new.keys:
            steps.append(_with(unkey(ref), [key(k)]))
    return steps


class IkeApplier:
    """Applier for the ietf-i2nsf-ike tree on strongSwan charon.

    By default it runs its own charon (files under `state_dir/ike`), inside network
    namespace `netns` if given; with `vici_socket` it attaches to a charon someone else
    runs. `libipsec` None means: use kernel-libipsec when the kernel cannot hold ESP SAs.
    """

    name = "ike"

    def __init__(
        self,
        state_dir: Path,
        *,
        netns: str | None = None,
        vici_socket: Path | None = None,
        libipsec: bool | None = None,
        prefix: str = "i2nsf-",
        settings: CharonSettings | None = None,
        dpd_delay: int = 30,
        charon_binary: str = CHARON,
        terminate_timeout_ms: int = 2000,
        log_events: bool = True,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.netns = netns
        if libipsec is None:
            libipsec = _kernel_lacks_esp(netns)
        self.settings = settings or CharonSettings()
        self.settings.libipsec = libipsec
        self.options = Options(
            prefix=prefix, fragment_size=self.settings.fragment_size,
            nat_t_port=self.settings.port_nat_t, dpd_delay=dpd_delay, libipsec=libipsec,
        )
        self.terminate_timeout_ms = terminate_timeout_ms
        self.log_events = log_events
        self.charon: Charon | None = None
        if vici_socket is None:
            self.charon = Charon(self.state_dir / "ike", self.settings, netns=netns,
                                 binary=charon_binary, on_restart=self._on_charon_restart)
            vici_socket = self.charon.vici_socket
        self.vici_socket = Path(vici_socket)
        self.vici = Vici(self.vici_socket)
        self.ledger_path = self.state_dir / "ike-keys.json"
        self.notify: Notify | None = None
        self._cfg = IkeConfig()
        # The configuration being loaded into charon: charon may log events of a connection
        # (e.g. an authentication failure as responder) before load-conn has returned.
        self._loading: IkeConfig | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._events_thread: threading.Thread | None = None
        self._reasons: OrderedDict[str, str] = OrderedDict()  # IKE SA uniqueid → last words
        self._auth_reported: OrderedDict[str, bool] = OrderedDict()
        self._child_attempt: OrderedDict[str, str] = OrderedDict()  # IKE SA → Child SA name
        self._child_reported: OrderedDict[tuple[str, str], bool] = OrderedDict()

    # ---- lifecycle -------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self.charon is not None and not self.charon.running():
            try:
                self.charon.start()
            except CharonError as exc:
                raise RpcError("application", "operation-failed",
                               f"cannot start strongSwan charon: {exc}") from exc

    def bind(self, notify: Notify) -> None:
        self.notify = notify
        self._ensure_started()
        self._events_thread = threading.Thread(target=self._listen, name="ike-events",
                                               daemon=True)
        self._events_thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._events_thread is not None:
            self._events_thread.join(timeout=5)
        self.vici.close()
        if self.charon is not None:
            self.charon.stop()

    # ---- ledger of the private keys we loaded ------------------------------------------------

    def _ledger(self) -> dict[str, str]:
        if not self.ledger_path.exists():
            return {}
        return dict(json.loads(self.ledger_path.read_text()))

    def _save_ledger(self, ledger: dict[str, str]) -> None:
        write_atomic(self.ledger_path, json.dumps(ledger, sort_keys=True).encode())

    # ---- vici steps ------------------------------------------------------------------------

    def _run(self, step: Step, ledger: dict[str, str]) -> None:
        if step.kind == "load-key":
            msg = {k: v for k, v in step.message.items() if k != "ref"}
            reply = self.vici.request("load-key", msg)
            ledger[step.message["ref"]] = _s(reply.get("id", b""))
        elif step.kind == "unload-key":
            keyid = ledger.pop(step.message["ref"], None)
            if keyid:
                self.vici.request("unload-key", {"id": keyid})
        elif step.kind == "terminate":
            try:
                self.vici.stream("terminate", "control-log", step.message)
            except ViciError as exc:
                log.debug("ike: terminate %s: %s", step.label, exc)
        else:
            self.vici.request(step.kind, step.message)

    def _execute(self, steps: list[Step]) -> None:
        """Run `steps`; on a refusal undo the done ones and raise RpcError."""
        ledger = self._ledger()
        done: list[Step] = []
        try:
            for step in steps:
                self._run(step, ledger)
                done.append(step)
        except (ViciError, CharonError) as exc:
            self._undo(done, ledger)
            self._save_ledger(ledger)
            what = "charon refused" if isinstance(exc, ViciError) else "cannot reach charon for"
            raise RpcError(
                "application", "operation-failed",
                f"{step.label}: {what} {step.kind}: {exc}", path=step.path,
            ) from None
        self._save_ledger(ledger)

    def _undo(self, done: list[Step], ledger: dict[str, str]) -> None:
        for step in reversed(done):
            for u in step.undo:
                try:
                    self._run(u, ledger)
                except (ViciError, CharonError) as exc:
                    log.error("ike: cannot undo %s %s: %s", step.kind, step.label, exc)

    # ---- transaction -------------------------------------------------------------------------

    def parse(self, data: etree._Element) -> IkeConfig:
        return translate.parse(data, self.options)

    def validate(self, change: ConfigChange) -> None:
        self.parse(change.new)

    def prepare(self, change: ConfigChange) -> None:
        new = self.parse(change.new)
        with self._lock:
            change.scratch["ike.old"] = self._cfg
            change.scratch["ike.new"] = new
            change.scratch["ike.steps"] = plan(self._cfg, new, self.terminate_timeout_ms)

    def apply(self, change: ConfigChange) -> None:
        steps: list[Step] = change.scratch.get("ike.steps", [])  # type: ignore[assignment]
        new: IkeConfig = change.scratch["ike.new"]  # type: ignore[assignment]
        with self._lock:
            if steps:
                self._ensure_started()
                self._loading = new
                try:
                    self._execute(steps)
                finally:
                    self._loading = None
            self._cfg = new
        if steps:
            log.info("ike: applied %d vici operations", len(steps))

    def abort(self, change: ConfigChange) -> None:
        old: IkeConfig = change.scratch.get("ike.old", IkeConfig())  # type: ignore[assignment]
        with self._lock:
            steps = plan(self._cfg, old, self.terminate_timeout_ms)
            try:
                self._execute(steps)
            finally:
                self._cfg = old

    # ---- start-up and charon restarts ------------------------------------------------------

    def reconcile(self, running: etree._Element) -> None:
        try:
            cfg = self.parse(running)
        except RpcError as exc:
            log.error("ike: running configuration cannot be translated, nothing loaded: %s",
                      exc.message)
            cfg = IkeConfig()
        with self._lock:
            self._ensure_started()
            self._load_all(cfg)

    def _on_charon_restart(self) -> None:
        with self._lock:
            self._load_all(self._cfg)

    def _load_all(self, cfg: IkeConfig) -> None:
        """Make charon hold exactly `cfg` of what is ours; leave everything else alone."""
        prefix = self.options.prefix
        loaded = {_s(n) for n in self.vici.request("get-conns").get("conns", [])}
        shared = {_s(n) for n in self.vici.request("get-shared").get("keys", [])}
        pools = {_s(n) for n in self.vici.request("get-pools")}
        authorities = {_s(n) for n in
                       self.vici.request("get-authorities").get("authorities", [])}
        ledger = self._ledger()
        failures = 0
        steps: list[Step] = []
        # keys are loaded again even if the ledger has them: a restarted charon lost them
        # (loading a key charon holds is harmless, it keeps one copy)
        steps += plan(IkeConfig(), IkeConfig(secrets=cfg.secrets, keys=cfg.keys, crls=cfg.crls,
                                              pools=cfg.pools, certs=cfg.certs,
                                              authorities=cfg.authorities))
        for c in cfg.conns.values():
            steps.append(Step("load-conn", f"connection {c.name!r}",
                              translate.conn_path(c.name), c.load_message()))
        for name in sorted(loaded):
            if name.startswith(prefix) and name not in cfg.conns:
                steps.append(Step("unload-conn", f"connection {name!r}", "", {"name": name}))
        for name in sorted(pools):
            if name.startswith(prefix) and name not in cfg.pools:
                steps.append(Step("unload-pool", f"virtual IP pool {name!r}", "",
                                  {"name": name}))
        for name in sorted(authorities):
            if name.startswith(prefix) and name not in cfg.authorities:
                steps.append(Step("unload-authority", f"CA certificate {name!r}", "",
                                  {"name": name}))
        for sid in sorted(shared):
            if sid.startswith(prefix) and sid not in cfg.secrets:
                steps.append(Step("unload-shared", f"shared secret {sid!r}", "", {"id": sid}))
        for ref in sorted(set(ledger) - set(cfg.keys)):
            steps.append(Step("unload-key", f"private key {ref}", "", {"ref": ref}))
        for step in steps:
            try:
                self._run(step, ledger)
            except (ViciError, CharonError) as exc:
                failures += 1
                log.error("ike reconcile: %s %s: %s", step.kind, step.label, exc)
        self._save_ledger(ledger)
        self._cfg = cfg
        log.info("ike: reconciled (%d operations, %d failed)", len(steps), failures)

    # ---- operational state -----------------------------------------------------------------

    def list_sas(self) -> list[tuple[str, dict[str, Any]]]:
        """(vici connection name, IKE SA) for every IKE SA charon holds."""
        out = []
        for ev in self.vici.stream("list-sas", "list-sa", {"noblock": "yes"}):
            for name, sa in ev.items():
                out.append((name, dict(sa)))
        return out

    def state(self, running: etree._Element) -> list[etree._Element]:
        with self._lock:
            cfg = self._cfg
        if self.charon is not None and not self.charon.running():
            return []
        try:
            sas = self.list_sas()
            stats = self.vici.request("stats")
        except (ViciError, CharonError) as exc:
            log.warning("ike: no operational state from charon: %s", exc)
            return []
        root = etree.Element(Q + "ipsec-ike", nsmap={None: NS, "i2nsf-ikev": EV_NS})
        best: dict[str, dict[str, Any]] = {}
        for name, sa in sas:
            if name not in cfg.conns:
                continue
            cur = best.get(name)
            if cur is None or _rank(sa) > _rank(cur):
                best[name] = sa
        for name, sa in best.items():
            ent = etree.SubElement(root, Q + "conn-entry")
            etree.SubElement(ent, Q + "name").text = cfg.conns[name].name
            ent.append(ike_sa_state(sa))
        ikesas = stats.get("ikesas", {})
        num = etree.SubElement(root, Q + "number-ike-sas")
        etree.SubElement(num, Q + "total").text = _s(ikesas.get("total", b"0"))
        etree.SubElement(num, Q + "half-open").text = _s(ikesas.get("half-open", b"0"))
        return [root]

    # ---- events → notifications ------------------------------------------------------------

    def _listen(self) -> None:
        names = VICI_EVENTS + (["log"] if self.log_events else [])
        for name, msg in events(self.vici_socket, names, self._stop):
            try:
                for n in self.on_event(name, msg):
                    if self.notify is not None:
                        self.notify(n)
            except Exception:
                log.exception("ike: cannot turn a charon event into a notification")

    def _conn(self, vici_name: str) -> Conn | None:
        """The connection of a vici name, also while its definition is still being loaded."""
        c = self._cfg.conns.get(vici_name)
        if c is None and (loading := self._loading) is not None:
            c = loading.conns.get(vici_name)
        return c

    def _conn_name(self, vici_name: str) -> str | None:
        c = self._conn(vici_name)
        if c is not None:
            return c.name
        if vici_name.startswith(self.options.prefix):
            return vici_name[len(self.options.prefix):]
        return None

    def on_event(self, event: str, msg: dict[str, Any]) -> list[etree._Element]:
        """Notifications for one vici event (public for tests)."""
        if event == "log":
            return self._on_log(msg)
        up = _s(msg.get("up", b"no")) == "yes"
        out = []
        for vname, sa in msg.items():
            if vname == "up" or not isinstance(sa, dict):
                continue
            name = self._conn_name(vname)
            if name is None:
                continue
            sa = dict(sa)
            uid = _s(sa.get("uniqueid", b""))
            if event == "ike-updown":
                kind = "ike-sa-up" if up else "ike-sa-down"
                n = _notification(kind, name, sa)
                _ike_info(n, sa)
                if not up:
                    _leaf(n, "reason", self._reasons.pop(uid, None) or
                          f"IKE SA {_s(sa.get('state', b'')).lower() or 'deleted'}")
                out.append(n)
            elif event == "ike-rekey":
                new = dict(sa.get("new", {}))
                n = _notification("ike-sa-rekeyed", name, new)
                _ike_info(n, new)
                out.append(n)
            elif event in ("child-updown", "child-rekey"):
                for child in dict(sa.get("child-sas", {})).values():
                    child = dict(child)
                    if event == "child-rekey":
                        child = dict(child.get("new", {}))
                        n = _notification("child-sa-rekeyed", name, sa)
                    else:
                        n = _notification("child-sa-up" if up else "child-sa-down", name, sa)
                    _child_info(n, child)
                    if event == "child-updown" and not up:
                        _leaf(n, "reason", f"Child SA {_s(child.get('state', b'')).lower()}")
                    out.append(n)
        return out

    def _on_log(self, msg: dict[str, Any]) -> list[etree._Element]:
        text = _s(msg.get("msg", b""))
        uid = _s(msg.get("ikesa-uniqueid", b""))
        vname = _s(msg.get("ikesa-name", b""))
        if uid and int(_s(msg.get("level", b"1")) or 1) <= 1 and _s(msg.get("group")) in (
                "IKE", "CFG", "NET"):
            self._reasons[uid] = text
            while len(self._reasons) > 256:
                self._reasons.popitem(last=False)
        if uid and (m := _CHILD_START.search(text)):
            self._child_attempt[uid] = m.group(1)
            self._child_reported.pop((uid, m.group(1)), None)
            _trim(self._child_attempt)
        if CHILD_FAILURE.search(text):
            return self._child_failed(uid, vname, text)
        local = any(p in text for p in AUTH_FAILURE_LOCAL)
        remote = any(p in text for p in AUTH_FAILURE_REMOTE)
        if not (local or remote) or (uid and uid in self._auth_reported):
            return []
        name = self._conn_name(vname) if vname else None
        if name is None:
            log.info("ike: authentication failure without a connection: %s", text)
            return []
        if uid:
            self._auth_reported[uid] = True
            while len(self._auth_reported) > 256:
                self._auth_reported.popitem(last=False)
        n = etree.Element(EV + "auth-failure", nsmap={None: EV_NS})
        _leaf(n, "connection-name", name)
        conn = self._conn(vname)
        if conn is not None:
            peer = (conn.message.get("remote_addrs") or [None])[0]  # type: ignore[index]
            _leaf(n, "peer", _ip(peer))
            _leaf(n, "remote-id", _s(conn.message["remote"]["id"]))  # type: ignore[index]
        _leaf(n, "local-failure", "true" if local else "false")
        _leaf(n, "reason", text)
        log.warning("ike: authentication failed on connection %r: %s", name, text)
        return [n]


    def _child_failed(self, uid: str, vname: str, text: str) -> list[etree._Element]:
        """One `child-sa-failed` per Child SA attempt: charon logs a failure in several
        lines ("received TS_UNACCEPTABLE notify, no CHILD_SA built", then "failed to
        establish CHILD_SA, keeping IKE_SA"); the first one is the reason."""
        name = self._conn_name(vname) if vname else None
        if name is None:
            log.info("ike: Child SA failure without a connection: %s", text)
            return []
        child = self._child_attempt.get(uid, "") if uid else ""
        key = (uid, child)
        if uid and key in self._child_reported:
            return []
        if uid:
            self._child_reported[key] = True
            _trim(self._child_reported)
        n = etree.Element(EV + "child-sa-failed", nsmap={None: EV_NS})
        _leaf(n, "connection-name", name)
        conn = self._conn(vname)
        if conn is not None:
            peer = (conn.message.get("remote_addrs") or [None])[0]  # type: ignore[index]
            _leaf(n, "peer", _ip(peer))
            _leaf(n, "remote-id", _s(conn.message["remote"]["id"]))  # type: ignore[index]
            if child not in conn.children:
                child = ""
        _leaf(n, "spd-entry-name", child or None)
        _leaf(n, "reason", text)
        log.warning("ike: Child SA %s of connection %r failed: %s", child or "?", name, text)
        return [n]


# ---- helpers ---------------------------------------------------------------------------------


def _trim(d: OrderedDict[Any, Any], keep: int = 256) -> None:
    while len(d) > keep:
        d.popitem(last=False)


def _kernel_lacks_esp(netns: str | None) -> bool:
    try:
        from nsf_agent.xfrm.api import probe_esp

        return probe_esp(netns) is not None
    except Exception:  # no netlink at all: libipsec is the only way
        log.info("ike: cannot probe the kernel for ESP; using kernel-libipsec")
        return True


def _rank(sa: dict[str, Any]) -> tuple[int, int]:
    established = _s(sa.get("state", b"")) == "ESTABLISHED"
    return (1 if established else 0, -int(_s(sa.get("established", b"0")) or 0))


def _ip(v: Any) -> str | None:
    if v is None:
        return None
    try:
        return str(ipaddress.ip_address(_s(v)))
    except ValueError:
        return None


def _leaf(parent: etree._Element, name: str, value: str | None, ns: str = EV) -> None:
    if value is not None and value != "":
        etree.SubElement(parent, ns + name).text = value


def _hex(v: Any) -> str | None:
    s = _s(v) if v is not None else ""
    return str(int(s, 16)) if s else None


def _notification(kind: str, name: str, sa: dict[str, Any]) -> etree._Element:
    n = etree.Element(EV + kind, nsmap={None: EV_NS})
    _leaf(n, "connection-name", name)
    _leaf(n, "peer", _ip(sa.get("remote-host")))
    _leaf(n, "remote-id", _s(sa["remote-id"]) if "remote-id" in sa else None)
    return n


def _ike_info(n: etree._Element, sa: dict[str, Any]) -> None:
    _leaf(n, "initiator", "true" if _s(sa.get("initiator", b"no")) == "yes" else "false")
    _leaf(n, "initiator-ikesa-spi", _hex(sa.get("initiator-spi")))
    _leaf(n, "responder-ikesa-spi", _hex(sa.get("responder-spi")))


def _child_info(n: etree._Element, child: dict[str, Any]) -> None:
    _leaf(n, "spd-entry-name", _s(child["name"]) if "name" in child else None)
    _leaf(n, "spi-in", _hex(child.get("spi-in")))
    _leaf(n, "spi-out", _hex(child.get("spi-out")))


def ike_sa_state(sa: dict[str, Any]) -> etree._Element:
    """RFC 9061 conn-entry/state for one IKE SA from `list-sas`, with our augment."""
    st = etree.Element(Q + "state")
    yes = lambda k: "true" if _s(sa.get(k, b"no")) == "yes" else "false"  # noqa: E731
    _leaf(st, "initiator", yes("initiator"), Q)
    _leaf(st, "initiator-ikesa-spi", _hex(sa.get("initiator-spi")), Q)
    _leaf(st, "responder-ikesa-spi", _hex(sa.get("responder-spi")), Q)
    _leaf(st, "nat-local", yes("nat-local"), Q)
    _leaf(st, "nat-remote", yes("nat-remote"), Q)
    children = [dict(c) for c in dict(sa.get("child-sas", {})).values()]
    encap = etree.SubElement(st, Q + "encapsulation-type")
    udp = any(_s(c.get("encap", b"no")) == "yes" for c in children) or \
        _s(sa.get("remote-port", b"500")) != "500"
    _leaf(encap, "espencap", "espinudp" if udp else "none", Q)
    if udp:
        _leaf(encap, "sport", _s(sa.get("local-port", b"4500")), Q)
        _leaf(encap, "dport", _s(sa.get("remote-port", b"4500")), Q)
    for leaf, key in (("established", "established"), ("current-rekey-time", "rekey-time"),
                      ("current-reauth-time", "reauth-time")):
        if key in sa:
            _leaf(st, leaf, _s(sa[key]), Q)
    _leaf(st, "ike-sa-state", _s(sa.get("state", b"")))
    for c in children:
        ce = etree.SubElement(st, EV + "child-sa")
        _leaf(ce, "unique-id", _s(c.get("uniqueid", b"")))
        _child_info(ce, c)
        _leaf(ce, "sa-state", _s(c.get("state", b"")))
        _leaf(ce, "mode", _s(c.get("mode", b"")).lower())
        _leaf(ce, "udp-encapsulation", "true" if _s(c.get("encap", b"no")) == "yes" else "false")
        _leaf(ce, "encryption-algorithm", _s(c["encr-alg"]) + (
            f"-{_s(c['encr-keysize'])}" if "encr-keysize" in c else "")
            if "encr-alg" in c else None)
        _leaf(ce, "integrity-algorithm", _s(c["integ-alg"]) if "integ-alg" in c else None)
        _leaf(ce, "dh-group", _s(c["dh-group"]) if "dh-group" in c else None)
        for leaf in ("bytes-in", "packets-in", "bytes-out", "packets-out"):
            _leaf(ce, leaf, _s(c.get(leaf, b"0")))
        for leaf, key in (("installed", "install-time"), ("current-rekey-time", "rekey-time"),
                          ("current-life-time", "life-time")):
            if key in c:
                _leaf(ce, leaf, _s(c[key]))
        for ts in c.get("local-ts", []):
            _leaf(ce, "local-ts", _s(ts))
        for ts in c.get("remote-ts", []):
            _leaf(ce, "remote-ts", _s(ts))
    return st



def create(cfg: Any) -> IkeApplier:
    """Factory for the agent's dataplane registry (`nsf_agent.appliers.ike:create`): an
    agent runs inside its network namespace, so charon is started there too, with its
    files under `<state_dir>/ike`."""
    return IkeApplier(Path(cfg.state_dir))
