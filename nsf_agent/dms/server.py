"""Wiring of the DMS: the same NETCONF server as the agent's (netconf_core: SSH, sessions,
datastores, notifications, rpc-error) serving i2nsf-dms, with the instance manager behind its
RPCs and its state, and the registrar towards the controller's Catalog Manager."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from lxml import etree

from netconf_core.applier import StateOnlyApplier
from netconf_core.auth import UserDb
from netconf_core.datastore import Datastores
from netconf_core.features import set_features
from netconf_core.schema import YangSchema
from netconf_core.server import NetconfServer, ServerConfig
from netconf_core.session import NetconfSession
from netconf_core.ssh import SshConfig, SshTransport
from netconf_core.yang_context import create_context
from nsf_agent.agent import NETCONF_FEATURES, PROTOCOL_MODULES
from nsf_agent.dms import xmlio
from nsf_agent.dms.config import DmsConfig
from nsf_agent.dms.manager import Instance, Manager
from nsf_agent.dms.registrar import Registrar
from nsf_agent.sadb import parse_rpc_input

log = logging.getLogger(__name__)
Q = xmlio.Q


class StateApplier(StateOnlyApplier):
    """The DMS has no configuration of its own in the datastores (instances are made by
    RPCs): this applier only contributes the `dms` state tree to <get>."""

    name = "dms"

    def __init__(self, dms: Dms) -> None:
        self.dms = dms

    def state(self, running: etree._Element) -> list[etree._Element]:
        return [self.dms.state()]

    def close(self) -> None:
        return None


class Dms:
    def __init__(self, config: DmsConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(config.state_dir, 0o700)
        self.server: NetconfServer | None = None
        self.ssh: SshTransport | None = None
        self.datastores: Datastores | None = None
        self.registrar: Registrar | None = None
        self.manager: Manager | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        cfg = self.config
        self.loop = asyncio.get_running_loop()
        ctx = create_context([*PROTOCOL_MODULES, *xmlio.MODULES])
        set_features(ctx, "ietf-netconf", list(NETCONF_FEATURES))
        schema = YangSchema(ctx)
        nc_dir = cfg.state_dir / "netconf"
        nc_dir.mkdir(exist_ok=True)
        server = NetconfServer(schema, ServerConfig(state_dir=nc_dir))
        server.bind_loop(self.loop)
        for op, handler in (("create-instance", self._create), ("remove-instance", self._remove),
                            ("restart-instance", self._restart), ("set-rules", self._set_rules),
                            ("get-load", self._get_load)):
            server.register_rpc(xmlio.NS, op, handler)
        self.server = server
        if cfg.controller is not None:
            self.registrar = Registrar(cfg.controller, cfg.name, cfg.load_interval,
                                       self._registered)
        self.manager = Manager(cfg, server.notify, self._on_change)
        self.datastores = Datastores(schema, [StateApplier(self)], nc_dir)
        server.attach(self.datastores)
        self.datastores.reconcile()
        self.manager.start(self.loop)
        if self.registrar is not None:
            self.registrar.start()
        self.ssh = SshTransport(server, UserDb(cfg.users), SshConfig(
            host=cfg.host, port=cfg.port, host_key_path=cfg.state_dir / "ssh_host_ed25519_key"))
        await self.ssh.start()
        log.info("DMS %s ready: NETCONF port %d, %d instances, state in %s", cfg.name,
                 self.port, len(self.manager.instances), cfg.state_dir)

    @property
    def port(self) -> int:
        assert self.ssh is not None
        return self.ssh.port

    async def stop(self) -> None:
        if self.ssh is not None:
            await self.ssh.stop()
        if self.manager is not None:
            self.manager.close()
        if self.registrar is not None:
            await asyncio.to_thread(self.registrar.stop)
        if self.datastores is not None:
            self.datastores.close()

    # -- registration -------------------------------------------------------------------------

    def _info(self, inst: Instance) -> dict[str, Any]:
        return {"name": inst.name, "type": inst.type, "dms": self.config.name,
                "host": self.config.agent_host, "locator": self.config.locator,
                "to_sf": inst.to_sf, "from_sf": inst.from_sf, "sf_mac": inst.sf_mac,
                "report_socket": inst.report_sockets[0] if inst.report_sockets else None,
                "capacity": self.config.capacity[inst.type],
                "capabilities": xmlio.CAPABILITIES[inst.type]}

    def _on_change(self, inst: Instance, what: str) -> None:
        r = self.registrar
        if r is None:
            return
        if what == "register":
            r.register(self._info(inst))
        elif what == "unregister":
            r.unregister(inst.name, "removed")
        elif what == "failed":
            r.unregister(inst.name, "failed")
        elif what == "load":
            r.load(inst.name, inst.load)

    def _registered(self, name: str, registered: bool) -> None:
        """From the registrar's thread."""
        def mark() -> None:
            if self.manager is not None and name in self.manager.instances:
                self.manager.instances[name].registered = registered

        if self.loop is not None:
            self.loop.call_soon_threadsafe(mark)

    def state(self) -> etree._Element:
        assert self.manager is not None
        ctl = None
        if self.registrar is not None:
            ctl = {"address": self.config.controller.address if self.config.controller else None,
                   "connected": self.registrar.connected,
                   "last-error": self.registrar.last_error}
        return xmlio.state(self.config.name, (self.config.max_instances,
                                              len(self.manager.instances)),
                           self.config.capacity, ctl, self.manager.instances.values())

    # -- RPCs ---------------------------------------------------------------------------------

    def _create(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element
                ) -> list[etree._Element]:
        assert self.manager is not None
        inp = parse_rpc_input(srv, op)
        sf_type = inp.findtext(Q + "type") or ""
        spec = xmlio.spec_from_input(sf_type, op, inp)
        given = any(op.find(Q + c) is not None for c in xmlio.RULE_CONTAINERS)
        source = inp.findtext(Q + "copy-rules-from")
        if source is not None or not given:
            spec = self.manager.rules_for_new(sf_type, source, spec, given)
        inst = self.manager.create(
            inp.findtext(Q + "name") or "", sf_type, spec, inp.findtext(Q + "to-sf"),
            inp.findtext(Q + "from-sf"), [e.text or "" for e in inp.findall(Q + "report-socket")])
        out = []
        for leaf, value in (("namespace", inst.netns), ("sf-mac", inst.sf_mac),
                            ("pid", inst.pid)):
            e = etree.Element(Q + leaf, nsmap={None: xmlio.NS})
            e.text = str(value)
            out.append(e)
        return out

    def _name(self, srv: NetconfServer, op: etree._Element) -> tuple[etree._Element, str]:
        inp = parse_rpc_input(srv, op)
        return inp, inp.findtext(Q + "name") or ""

    def _remove(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> None:
        assert self.manager is not None
        self.manager.remove(self._name(srv, op)[1])

    def _restart(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> None:
        assert self.manager is not None
        self.manager.restart(self._name(srv, op)[1])

    def _set_rules(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element) -> None:
        assert self.manager is not None
        inp, name = self._name(srv, op)
        inst = self.manager.get(name, "set-rules")
        self.manager.set_rules(name, xmlio.spec_from_input(inst.type, op, inp))

    def _get_load(self, srv: NetconfServer, sess: NetconfSession, op: etree._Element
                  ) -> list[etree._Element]:
        assert self.manager is not None
        inp = parse_rpc_input(srv, op)
        name = inp.findtext(Q + "name")
        out = []
        for n, ld in self.manager.current_load(name).items():
            e = etree.Element(Q + "instance", nsmap={None: xmlio.NS})
            etree.SubElement(e, Q + "name").text = n
            xmlio.load_leaves(e, ld)
            out.append(e)
        return out
