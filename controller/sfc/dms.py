"""The Catalog Manager's client of the Developer's Management Systems (`i2nsf-dms` RPCs).

A DMS is asked rarely (scale out, scale in), so the session is opened on first use and
kept; a lost session is re-opened on the next request. Host keys are pinned like the NSFs'.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from xml.sax.saxutils import escape

from lxml import etree

from controller.core.nc_client import NcClient, NcError
from controller.sfc.model import DmsServer

log = logging.getLogger(__name__)

DMS_NS = "urn:i2nsf-sdn:yang:i2nsf-dms"
Q = f"{{{DMS_NS}}}"


class DmsClient:
    def __init__(self, server: DmsServer, timeout: float = 30.0) -> None:
        self.server = server
        self.timeout = timeout
        self._client: NcClient | None = None
        self._lock = asyncio.Lock()

    async def _session(self) -> NcClient:
        c = self._client
        if c is not None and not c.closed.is_set():
            return c
        s = self.server
        password = None
        if s.password_file:
            try:
                password = Path(s.password_file).read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise NcError(f"cannot read password file {s.password_file}: {exc}") from exc
        c = NcClient(lambda _m: None, name=f"dms-{s.name}")
        await c.connect(s.address, s.port, s.username, host_key=s.host_key,
                        password=password,
                        client_keys=[s.private_key_file] if s.private_key_file else None,
                        timeout=min(self.timeout, 15.0))
        self._client = c
        return c

    async def _rpc(self, body: str) -> etree._Element:
        async with self._lock:
            c = await self._session()
            return await c.rpc(body, self.timeout)

    async def create_instance(self, name: str, sf_type: str, rules: str | None = None
                              ) -> dict[str, str]:
        """Ask for a new instance; the DMS registers it with the catalog once it forwards.
        `rules`: XML of the type's rule container (None: the DMS copies its newest
        instance's). Returns the reply's leaves (namespace, sf-mac, pid)."""
        sock = ""
        if self.server.report_socket_dir:
            path = f"{self.server.report_socket_dir.rstrip('/')}/{name}.sock"
            sock = f"<report-socket>{escape(path)}</report-socket>"
        body = ""
        if rules:
            try:
                for el in etree.fromstring(f"<r>{rules}</r>"):
                    body += etree.tostring(el).decode()
            except etree.XMLSyntaxError as exc:
                raise NcError(f"instance-rules of type {sf_type} are not XML: {exc}") from None
        reply = await self._rpc(
            f'<create-instance xmlns="{DMS_NS}"><name>{escape(name)}</name>'
            f"<type>{escape(sf_type)}</type>{sock}{body}</create-instance>")
        return {el.tag.rpartition("}")[2]: (el.text or "").strip()
                for el in reply if isinstance(el.tag, str) and el.tag.startswith(Q)}

    async def remove_instance(self, name: str) -> None:
        await self._rpc(f'<remove-instance xmlns="{DMS_NS}"><name>{escape(name)}</name>'
                        "</remove-instance>")

    async def instance_names(self) -> list[str]:
        reply = await self._rpc(
            '<get xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><filter type="subtree">'
            f'<dms xmlns="{DMS_NS}"><instance><name/></instance></dms></filter></get>')
        return [(e.text or "").strip() for e in reply.iter(Q + "name")
                if e.getparent() is not None and e.getparent().tag == Q + "instance"]

    def update(self, server: DmsServer) -> None:
        if server != self.server:
            self.server = server
            self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close("DMS client closed")
            self._client = None
