"""Registration with the controller's SFC Catalog Manager (i2nsf-sfc-catalog RPCs) over
NETCONF with ncclient, on its own thread so that a slow or absent controller never holds up
the DMS. It keeps converging the catalog on what the DMS has: every instance registered
(again after a reconnection: register-instance replaces), removed ones unregistered, and
one report-load per interval. The controller's host key is always verified."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lxml import etree

from nsf_agent.dms.config import ControllerLink

log = logging.getLogger(__name__)
CAT_NS = "urn:i2nsf-sdn:yang:i2nsf-sfc-catalog"
Q = f"{{{CAT_NS}}}"


def _el(parent: etree._Element, name: str, text: object) -> etree._Element:
    e = etree.SubElement(parent, Q + name)
    e.text = str(text)
    return e


def register_rpc(info: dict[str, Any]) -> etree._Element:
    rpc = etree.Element(Q + "register-instance", nsmap={None: CAT_NS})
    _el(rpc, "name", info["name"])
    _el(rpc, "type", info["type"])
    _el(rpc, "dms", info["dms"])
    if info.get("host"):
        _el(rpc, "host", info["host"])
    loc = etree.SubElement(rpc, Q + "locator")
    _el(loc, "address", info["locator"])
    _el(loc, "transport", "gre")
    ifs = etree.SubElement(rpc, Q + "interfaces")
    _el(ifs, "to-sf", info["to_sf"])
    _el(ifs, "from-sf", info["from_sf"])
    if info.get("sf_mac"):
        _el(ifs, "sf-mac", info["sf_mac"])
    if info.get("report_socket"):
        _el(rpc, "report-socket", info["report_socket"])
    _el(rpc, "capacity", info["capacity"])
    for c in info["capabilities"]:
        _el(rpc, "capability", c)
    return rpc


def unregister_rpc(name: str, dms: str, reason: str) -> etree._Element:
    rpc = etree.Element(Q + "unregister-instance", nsmap={None: CAT_NS})
    _el(rpc, "name", name)
    _el(rpc, "dms", dms)
    _el(rpc, "reason", reason)
    return rpc


def report_load_rpc(dms: str, loads: dict[str, dict[str, Any]]) -> etree._Element:
    rpc = etree.Element(Q + "report-load", nsmap={None: CAT_NS})
    _el(rpc, "dms", dms)
    for name, ld in sorted(loads.items()):
        i = etree.SubElement(rpc, Q + "instance")
        _el(i, "name", name)
        _el(i, "packets-per-second", int(ld.get("pps", 0)))
        _el(i, "bytes-per-second", int(ld.get("bps", 0)))
        _el(i, "cpu-percent", f"{float(ld.get('cpu', 0.0)):.2f}")
        _el(i, "queue-depth", int(ld.get("queue_depth", 0)))
    return rpc


class Registrar:
    def __init__(self, link: ControllerLink, dms: str, interval: float,
                 on_registered: Callable[[str, bool], None]) -> None:
        self.link = link
        self.dms = dms
        self.interval = interval
        self.on_registered = on_registered  # (instance, registered) from this thread
        self.lock = threading.Lock()
        self.wanted: dict[str, dict[str, Any]] = {}  # name -> registration info
        self.done: dict[str, dict[str, Any]] = {}  # what the controller has (as far as known)
        self.gone: dict[str, str] = {}  # name -> reason, to unregister
        self.loads: dict[str, dict[str, Any]] = {}
        self.refused: set[str] = set()  # registrations the controller refused
        self.connected = False
        self.last_error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._mgr: Any = None
        self._thread = threading.Thread(target=self._run, name="dms-registrar", daemon=True)

    # -- called from the DMS's loop -----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def register(self, info: dict[str, Any]) -> None:
        with self.lock:
            self.wanted[info["name"]] = info
            self.gone.pop(info["name"], None)
        self._wake.set()

    def unregister(self, name: str, reason: str) -> None:
        with self.lock:
            self.wanted.pop(name, None)
            self.loads.pop(name, None)
            self.gone[name] = reason
        self._wake.set()

    def load(self, name: str, load: dict[str, Any]) -> None:
        with self.lock:
            if name in self.wanted:
                self.loads[name] = load

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    # -- the thread ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        import ncclient.transport.session as nc_session
        from ncclient import manager

        nc_session.TICK = 0.001  # ncclient otherwise waits up to 100 ms per rpc
        key = self.link.host_key.split()
        if len(key) < 2:
            raise ValueError("[controller] host_key must be '<type> <base64>'")
        return manager.connect(
            host=self.link.address, port=self.link.port, username=self.link.username,
            password=self.link.read_password(),
            key_filename=str(self.link.private_key_file) if self.link.private_key_file
            else None,
            hostkey_verify=True, hostkey_b64=key[1], allow_agent=False, look_for_keys=False,
            timeout=10)

    def _call(self, rpc: etree._Element) -> None:
        self._mgr.dispatch(rpc)

    def _sync(self) -> None:
        with self.lock:
            todo = [(n, i) for n, i in self.wanted.items() if self.done.get(n) != i]
            gone = dict(self.gone)
        for name, info in todo:
            ok = True
            try:
                self._call(register_rpc(info))
            except Exception as exc:
                if "RPCError" not in type(exc).__name__:
                    raise
                # refused (e.g. the name belongs to another DMS): not retried until the
                # instance changes; the reason is in the DMS's state
                ok, self.last_error = False, f"register-instance {name}: {exc}"
                log.warning("controller refused %s", self.last_error)
            with self.lock:
                self.done[name] = info
                if ok:
                    self.refused.discard(name)
                else:
                    self.refused.add(name)
            self.on_registered(name, ok)
            if ok:
                log.info("registered instance %s with the controller", name)
        for name, reason in gone.items():
            try:
                self._call(unregister_rpc(name, self.dms, reason))
            except Exception as exc:  # unknown to the controller: nothing to undo
                if "RPCError" not in type(exc).__name__:
                    raise
                log.info("controller: unregister %s: %s", name, exc)
            with self.lock:
                self.done.pop(name, None)
                self.refused.discard(name)
                if self.gone.get(name) == reason:
                    del self.gone[name]
            self.on_registered(name, False)

    def _run(self) -> None:
        backoff = 0.2
        next_load = time.monotonic() + self.interval
        while not self._stop.is_set():
            try:
                if self._mgr is None or not self._mgr.connected:
                    self._mgr = self._connect()
                    with self.lock:
                        self.done.clear()  # re-register everything on a new session
                    self.connected, self.last_error = True, ""
                self._sync()
                if time.monotonic() >= next_load:
                    next_load = time.monotonic() + self.interval
                    with self.lock:
                        loads = {n: ld for n, ld in self.loads.items()
                                 if n in self.done and n not in self.refused}
                    if loads:
                        try:
                            self._call(report_load_rpc(self.dms, loads))
                        except Exception as exc:  # refused: the session itself is fine
                            if "RPCError" not in type(exc).__name__:
                                raise
                            log.warning("controller refused report-load: %s", exc)
                backoff = 0.2
                self._wake.wait(max(0.0, next_load - time.monotonic()))
                self._wake.clear()
            except Exception as exc:
                self.connected, self.last_error = False, f"{type(exc).__name__}: {exc}"
                log.warning("controller %s: %s (retrying in %.1f s)", self.link.address,
                            self.last_error, backoff)
                if self._mgr is not None:
                    try:
                        self._mgr.close_session()
                    except Exception:
                        log.debug("closing the controller session failed", exc_info=True)
                    self._mgr = None
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, 10.0)
        if self._mgr is not None:
            try:
                self._mgr.close_session()
            except Exception:
                log.debug("closing the controller session failed", exc_info=True)
