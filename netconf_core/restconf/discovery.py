"""Discovery and operations resources of RESTCONF: `/.well-known/host-meta`, the API root,
`yang-library-version`, `/restconf/operations` and the invocation of an rpc (RFC 8040
sections 3.1-3.3 and 3.6), as a part of `RestconfServer`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from lxml import etree

from netconf_core.errors import NC_NS, RpcError
from netconf_core.restconf import codec
from netconf_core.restconf.errors import HttpError, not_found
from netconf_core.restconf.negotiate import MEDIA, input_format, output_format

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer

NC = f"{{{NC_NS}}}"
RESTCONF_NS = "urn:ietf:params:xml:ns:yang:ietf-restconf"
YANG_LIBRARY_VERSION = "2019-01-04"
# operations of these modules are NETCONF protocol operations, not RESTCONF operations
_PROTOCOL_NS = (NC_NS, "urn:ietf:params:xml:ns:netconf:notification:1.0",
                "urn:ietf:params:xml:ns:yang:ietf-netconf-monitoring")


class DiscoveryMixin:
    nc: NetconfServer
    modules: dict[str, str]

    def _call(self, request: web.Request, op: etree._Element,
              sess: Any = None) -> list[Any] | None:
        raise NotImplementedError

    # ---- discovery -------------------------------------------------------------------------

    async def _host_meta(self, request: web.Request) -> web.Response:
        body = ("<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>"
                "<Link rel='restconf' href='/restconf'/></XRD>")
        return web.Response(text=body, content_type="application/xrd+xml")

    async def _host_meta_json(self, request: web.Request) -> web.Response:
        return web.json_response({"links": [{"rel": "restconf", "href": "/restconf"}]})

    async def _root(self, request: web.Request) -> web.Response:
        fmt = output_format(request)
        if fmt == "json":
            body = json.dumps({"ietf-restconf:restconf": {
                "data": {}, "operations": {}, "yang-library-version": YANG_LIBRARY_VERSION,
            }}).encode()
        else:
            body = (f'<restconf xmlns="{RESTCONF_NS}"><data/><operations/>'
                    f"<yang-library-version>{YANG_LIBRARY_VERSION}</yang-library-version>"
                    "</restconf>").encode()
        return web.Response(body=body, content_type=MEDIA[fmt])

    async def _yanglib_version(self, request: web.Request) -> web.Response:
        fmt = output_format(request)
        body = (json.dumps({"ietf-restconf:yang-library-version": YANG_LIBRARY_VERSION})
                .encode() if fmt == "json" else
                f'<yang-library-version xmlns="{RESTCONF_NS}">{YANG_LIBRARY_VERSION}'
                "</yang-library-version>".encode())
        return web.Response(body=body, content_type=MEDIA[fmt])

    # ---- operations ------------------------------------------------------------------------

    def _rpcs(self) -> list[tuple[str, str, str]]:
        """(module, namespace, name) of every operation served over RESTCONF."""
        out = []
        for ns, name in self.nc.handlers:
            if ns in _PROTOCOL_NS:
                continue
            mod = next((m for m, n in self.modules.items() if n == ns), None)
            if mod is not None:
                out.append((mod, ns, name))
        return sorted(out)

    async def _operations(self, request: web.Request) -> web.Response:
        fmt = output_format(request)
        rpcs = self._rpcs()
        if fmt == "json":
            body = json.dumps({"ietf-restconf:operations": {
                f"{m}:{n}": [None] for m, _ns, n in rpcs}}).encode()
        else:
            root = etree.Element(f"{{{RESTCONF_NS}}}operations", nsmap={None: RESTCONF_NS})
            for _m, ns, n in rpcs:
                etree.SubElement(root, f"{{{ns}}}{n}", nsmap={None: ns})
            body = etree.tostring(root)
        return web.Response(body=body, content_type=MEDIA[fmt])

    async def _operation(self, request: web.Request) -> web.Response:
        raw = request.match_info["op"]
        mod, _, name = raw.partition(":")
        ns = self.modules.get(mod)
        if not name or ns is None or ns in _PROTOCOL_NS or (ns, name) not in self.nc.handlers:
            raise not_found(f"no operation {raw!r} (see /restconf/operations)")
        if request.method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": "OPTIONS, POST"})
        if request.method != "POST":
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          "operations are invoked with POST"),
                            {"Allow": "OPTIONS, POST"})
        fmt_in = input_format(request, required=False)
        fmt = output_format(request, prefer=fmt_in)
        body = await request.read()
        op = codec.rpc_input_to_xml(self.nc.schema, ns, mod, name, body, fmt_in or fmt)
        result = self._call(request, op)
        elems = [e for e in (result or []) if not (isinstance(e, etree._Element)
                                                    and e.tag == NC + "ok")]
        if not elems:
            return web.Response(status=204)
        out = codec.rpc_output(self.nc.schema, ns, mod, name, elems, fmt)
        return web.Response(status=200, body=out, content_type=MEDIA[fmt])

