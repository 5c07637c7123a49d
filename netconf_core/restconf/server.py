"""RFC 8040 RESTCONF beside NETCONF, on aiohttp, over the same `NetconfServer`.

There is no second data model and no second write path: every request becomes the NETCONF
operation it means (`get`/`get-config` with a subtree filter, `edit-config` with
`nc:operation` on the target, `copy-config`, or the rpc itself) and goes through
`NetconfServer.dispatch` with a session of the authenticated user. So RESTCONF gets the same
locks, libyang validation, appliers (the controller's checks), nacm:default-deny-all rules,
confirmed-commit interplay and rpc-errors as NETCONF; a rejected edit changes nothing.

Edits go to `running` (the server has :writable-running), honouring NETCONF locks: while a
NETCONF session holds the lock on running, a RESTCONF edit is refused with in-use (409), as
over NETCONF.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from lxml import etree

from netconf_core.auth import UserDb
from netconf_core.errors import NC_NS, RpcError
from netconf_core.monitoring import DS_NS
from netconf_core.nmda import DATASTORES as NMDA_DATASTORES
from netconf_core.nmda import NMDA_NS
from netconf_core.restconf import codec, streams, yangpatch
from netconf_core.restconf.auth import BasicAuth
from netconf_core.restconf.discovery import RESTCONF_NS, DiscoveryMixin
from netconf_core.restconf.errors import HttpError, not_found, render, status_of
from netconf_core.restconf.negotiate import MEDIA, input_format, output_format
from netconf_core.restconf.paths import (
    Segment,
    api_path,
    config_skeleton,
    find_targets,
    module_namespaces,
    parse_api_path,
    parse_fields,
    segment_text,
    select_fields,
    subtree_filter,
)
from netconf_core.restconf.shape import depth_of, keep_state, prune
from netconf_core.restconf.tls import cert_user, server_context
from netconf_core.server import NetconfServer
from netconf_core.with_defaults import WD_NS

log = logging.getLogger(__name__)

NC = f"{{{NC_NS}}}"
MAX_BODY = 64 << 20


@dataclass
class RestconfConfig:
    host: str = "127.0.0.1"
    port: int = 8443
    tls: bool = True
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    state_dir: Path = Path(".")
    public_url: str | None = None  # what stream locations name (default from host/port)
    client_ca_file: Path | None = None  # TLS client certificates chaining to it log in
    cert_names: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, table: dict[str, Any], base: Path, state_dir: Path) -> RestconfConfig:
        """`[restconf]` of a configuration file (paths relative to the file's folder):

            [restconf]
            host = "127.0.0.1"
            port = 8443
            # certificate_file = "/etc/i2nsf/restconf.crt"   # else a generated one
            # private_key_file = "/etc/i2nsf/restconf.key"
            # names = ["ctl.example.net"]   # subjectAltNames of a generated certificate
            # client_ca_file = "/etc/i2nsf/clients-ca.crt"  # client certificates: CN = user
            # public_url = "https://ctl.example.net:8443/restconf"
            # tls = false                   # only behind a TLS-terminating proxy
        """
        from netconf_core.configfile import ConfigError, check_table

        check_table(table, {"host": str, "port": int, "tls": bool, "certificate_file": str,
                            "private_key_file": str, "names": list, "public_url": str,
                            "client_ca_file": str}, "restconf")
        cfg = cls(host=table.get("host", "127.0.0.1"), port=table.get("port", 8443),
                  tls=table.get("tls", True), state_dir=state_dir,
                  public_url=table.get("public_url"),
                  cert_names=[str(n) for n in table.get("names", [])])
        if not 0 <= cfg.port <= 65535:
            raise ConfigError(f"[restconf] port {cfg.port} out of range")
        if "certificate_file" in table:
            cfg.certificate_file = base / table["certificate_file"]
            if "private_key_file" not in table:
                raise ConfigError("[restconf] certificate_file needs private_key_file")
            cfg.private_key_file = base / table["private_key_file"]
        elif "private_key_file" in table:
            raise ConfigError("[restconf] private_key_file needs certificate_file")
        if "client_ca_file" in table:
            cfg.client_ca_file = base / table["client_ca_file"]
        return cfg


class RestconfSession:
    """What the NETCONF handlers need of a session, for one HTTP request (or stream)."""

    state = "open"

    def __init__(self, session_id: int, username: str, source_host: str) -> None:
        self.id = session_id
        self.username = username
        self.source_host = source_host
        self.after_reply: list[Any] = []

    # set by an event stream: where the subscription's notifications go
    on_notification: Any = None

    def send_notification(self, msg: bytes) -> None:
        if self.on_notification is not None:
            self.on_notification(msg)


class RestconfServer(DiscoveryMixin):
    def __init__(self, nc: NetconfServer, users: UserDb, config: RestconfConfig) -> None:
        self.nc = nc
        self.config = config
        self.auth = BasicAuth(users)
        self.modules = module_namespaces(nc.schema)
        self.runner: web.AppRunner | None = None
        self.cert_path: Path | None = None
        self._port: int | None = None
        self._etag: tuple[str, float] | None = None
        self.requests = 0
        self.streams: set[Any] = set()  # how to end each open event stream

    # ---- lifecycle -------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/.well-known/host-meta", self._host_meta)
        r.add_get("/.well-known/host-meta.json", self._host_meta_json)
        r.add_get("/restconf", self._root)
        r.add_get("/restconf/", self._root)
        r.add_get("/restconf/yang-library-version", self._yanglib_version)
        r.add_get("/restconf/operations", self._operations)
        r.add_route("*", "/restconf/operations/{op}", self._operation)
        r.add_get("/restconf/streams/{stream}/{encoding}", self._stream)
        r.add_route("*", "/restconf/data", self._data)
        r.add_route("*", "/restconf/data/{tail:.*}", self._data)
        r.add_route("*", "/restconf/ds/{ds}", self._ds)
        r.add_route("*", "/restconf/ds/{ds}/{tail:.*}", self._ds)
        return app

    async def start(self) -> None:
        sslctx: ssl.SSLContext | None = None
        if self.config.tls:
            names = self.config.cert_names or _default_names(self.config.host)
            sslctx, self.cert_path = server_context(
                self.config.certificate_file, self.config.private_key_file,
                self.config.state_dir, names, self.config.client_ca_file)
        else:
            log.warning("RESTCONF without TLS on %s: only behind a TLS-terminating proxy "
                        "(RFC 8040 requires TLS)", self.config.host)
        # handler_cancellation: a stream whose client went away ends (and unsubscribes) at
        # once instead of at its next keep-alive write
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                    handler_cancellation=True, shutdown_timeout=5.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.host, self.config.port, ssl_context=sslctx)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("RESTCONF on %s://%s:%d/restconf", "https" if sslctx else "http",
                 self.config.host, self._port)

    @property
    def port(self) -> int:
        assert self._port is not None
        return self._port

    def base_url(self) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/")
        scheme = "https" if self.config.tls else "http"
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self._port or self.config.port}/restconf"

    async def stop(self) -> None:
        for end in list(self.streams):
            end()  # open event streams end now, not after the shutdown timeout
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    # ---- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests += 1
        fmt = "json"
        try:
            fmt = output_format(request)
            if request.path.startswith("/restconf"):
                request["user"] = await self._authenticate(request)
            return await handler(request)
        except HttpError as exc:
            return self._error(exc.status, exc.error, fmt, exc.headers)
        except RpcError as exc:
            return self._error(status_of(exc), exc, fmt)
        except web.HTTPException as exc:
            if exc.status == 413:
                return self._error(413, RpcError("rpc", "too-big",
                                                 f"the body exceeds {MAX_BODY} bytes"), fmt)
            if exc.status in (404, 405):
                tag = "invalid-value" if exc.status == 404 else "operation-not-supported"
                return self._error(exc.status, RpcError("protocol", tag, exc.reason), fmt,
                                   {"Allow": exc.headers.get("Allow", "")}
                                   if exc.status == 405 else None)
            raise
        except Exception as exc:
            log.exception("RESTCONF %s %s failed", request.method, request.path)
            return self._error(500, RpcError("application", "operation-failed",
                                             f"internal error: {exc}"), fmt)

    def _error(self, status: int, err: RpcError, fmt: str,
               headers: dict[str, str] | None = None) -> web.Response:
        body = render(err, fmt, self.modules)
        return web.Response(status=status, body=body, content_type=MEDIA[fmt],
                            headers=headers)

    async def _authenticate(self, request: web.Request) -> str:
        transport = request.transport
        peer = transport.get_extra_info("peercert") if transport is not None else None
        cn = cert_user(peer)
        if cn is not None:  # verified against client_ca_file by the TLS layer
            if cn in self.auth.users.users:
                return cn
            log.warning("RESTCONF: client certificate for unknown user %r from %s", cn,
                        request.remote)
            raise HttpError(401, RpcError("protocol", "access-denied",
                                          f"the client certificate names {cn!r}, who is not "
                                          "a user of the server"))
        creds = BasicAuth.parse(request.headers.get("Authorization"))
        if creds is None or not await self.auth.check(*creds):
            if creds is not None:
                log.warning("RESTCONF: failed login for %r from %s", creds[0], request.remote)
            raise HttpError(401, RpcError("protocol", "access-denied",
                                          "authentication failed (HTTP basic auth with a "
                                          "user of the server)"),
                            {"WWW-Authenticate": 'Basic realm="restconf", charset="UTF-8"'})
        return creds[0]

    def _session(self, request: web.Request) -> RestconfSession:
        return RestconfSession(next(self.nc._ids), request["user"], request.remote or "")

    def _call(self, request: web.Request, op: etree._Element,
              sess: RestconfSession | None = None) -> list[Any] | None:
        rpc = etree.Element(NC + "rpc", nsmap={None: NC_NS})
        rpc.set("message-id", "restconf")
        rpc.append(op)
        sess = sess or self._session(request)
        try:
            return self.nc.dispatch(sess, rpc)  # type: ignore[arg-type]
        finally:
            for cb in sess.after_reply:
                cb()

    def _reply(self, request: web.Request, status: int, body: bytes | None, fmt: str,
               headers: dict[str, str] | None = None) -> web.Response:
        hdrs = dict(headers or {})
        if request.path.startswith("/restconf/data"):
            hdrs.update(self._datastore_tags())
        if body is None:
            return web.Response(status=status, headers=hdrs)
        return web.Response(status=status, body=body, content_type=MEDIA[fmt], headers=hdrs)

    def _datastore_tags(self) -> dict[str, str]:
        """ETag and Last-Modified of the running datastore (RFC 8040 section 3.4.1)."""
        with self.nc.ds_lock:
            raw = self.nc.datastores.config_bytes("running")
            if raw is None:
                raw = etree.tostring(self.nc.datastores.get_config("running"))
        tag = hashlib.sha256(raw).hexdigest()[:32]
        if self._etag is None or self._etag[0] != tag:
            self._etag = (tag, time.time())
        return {"ETag": f'"{tag}"', "Last-Modified": formatdate(self._etag[1], usegmt=True)}

    # ---- streams ---------------------------------------------------------------------------

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        return await streams.serve(self, request)

    # ---- data resources --------------------------------------------------------------------

    async def _data(self, request: web.Request) -> web.StreamResponse:
        request["ds"] = None  # the unified datastore (RFC 8040): running + state
        return await self._resource(request, request.rel_url.raw_path[len("/restconf/data"):])

    async def _ds(self, request: web.Request) -> web.StreamResponse:
        """RFC 8527: /restconf/ds/ietf-datastores:<name>/... (NMDA datastores)."""
        raw = request.rel_url.raw_path[len("/restconf/ds/"):]
        ident, _, tail = raw.partition("/")
        mod, _, name = unquote(ident).partition(":")
        if mod != "ietf-datastores" or name not in NMDA_DATASTORES:
            raise not_found(f"no datastore {unquote(ident)!r} (ietf-datastores:"
                            f"{'|'.join(NMDA_DATASTORES)})")
        request["ds"] = name
        return await self._resource(request, "/" + tail)

    def _edit_ds(self, request: web.Request) -> str:
        ds = request.get("ds") or "running"
        if ds not in ("running", "candidate"):
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          f"the {ds} datastore is read-only here (edit "
                                          "running or candidate)"),
                            {"Allow": "GET, HEAD, OPTIONS"})
        return ds

    async def _resource(self, request: web.Request, tail: str) -> web.StreamResponse:
        segments = parse_api_path(self.nc.schema, tail, self.modules)
        segments = codec.canonical_keys(self.nc.schema, segments)
        method = request.method
        allow = "GET, HEAD, OPTIONS, POST, PUT, PATCH" + (", DELETE" if segments else "")
        if method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": allow,
                                                     "Accept-Patch": ", ".join(_PATCH_TYPES)})
        if method in ("GET", "HEAD"):
            return await self._get(request, segments)
        if segments and not segments[-1].node.config and method != "POST":
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          f"{segments[-1].node.name!r} is state data: "
                                          "read-only"), {"Allow": "GET, HEAD, OPTIONS"})
        for k in request.query:
            # insert/point apply to ordered-by-user lists, which these modules do not have
            raise RpcError("protocol", "invalid-value",
                           f"query parameter {k!r} is not supported on {method}",
                           info={"bad-element": k})
        self._edit_ds(request)
        self._check_if_match(request)
        if method == "DELETE":
            return self._delete(request, segments)
        if method == "PUT":
            return await self._put(request, segments)
        if method == "POST":
            return await self._post(request, segments)
        if method == "PATCH":
            return await self._patch(request, segments)
        raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                      f"method {method} is not supported"), {"Allow": allow})

    def _check_if_match(self, request: web.Request) -> None:
        want = request.headers.get("If-Match")
        if want and want.strip() != "*":
            tag = self._datastore_tags()["ETag"]
            if tag not in [t.strip() for t in want.split(",")]:
                raise HttpError(412, RpcError("protocol", "operation-failed",
                                              "the datastore changed (If-Match does not "
                                              f"match {tag})"))

    # GET ---------------------------------------------------------------------------------

    async def _get(self, request: web.Request, segments: list[Segment]) -> web.Response:
        fmt = output_format(request)
        q = request.query
        for k in q:
            if k not in ("content", "depth", "fields", "with-origin", "with-defaults"):
                raise RpcError("protocol", "invalid-value",
                               f"query parameter {k!r} is not supported here",
                               info={"bad-element": k})
        content = q.get("content", "all")
        if content not in ("all", "config", "nonconfig"):
            raise RpcError("protocol", "invalid-value",
                           "content must be all, config or nonconfig",
                           info={"bad-element": "content"})
        depth = depth_of(q.get("depth"))
        filt = subtree_filter(segments)
        ds = request.get("ds")
        if ds is not None:
            op = etree.Element(f"{{{NMDA_NS}}}get-data", nsmap={None: NMDA_NS, "ds": DS_NS})
            etree.SubElement(op, f"{{{NMDA_NS}}}datastore").text = f"ds:{ds}"
            if filt is not None:
                sf = etree.SubElement(op, f"{{{NMDA_NS}}}subtree-filter")
                sf.extend(list(filt))
            if content != "all":
                etree.SubElement(op, f"{{{NMDA_NS}}}config-filter").text = (
                    "true" if content == "config" else "false")
            if q.get("with-origin") is not None:
                if ds != "operational":
                    raise RpcError("protocol", "invalid-value", "with-origin applies to the "
                                   "operational datastore", info={"bad-element": "with-origin"})
                etree.SubElement(op, f"{{{NMDA_NS}}}with-origin")
        elif content == "config":
            op = etree.Element(NC + "get-config", nsmap={None: NC_NS})
            etree.SubElement(etree.SubElement(op, NC + "source"), NC + "running")
        else:
            op = etree.Element(NC + "get", nsmap={None: NC_NS})
        if filt is not None and ds is None:
            op.append(filt)
        if "with-defaults" in q:  # RFC 8040 4.8.9, RFC 6243 modes
            wd_el = etree.SubElement(op, f"{{{WD_NS}}}with-defaults", nsmap={None: WD_NS})
            wd_el.text = q["with-defaults"]
        result = self._call(request, op) or []
        data = result[0]
        if isinstance(data, bytes):
            data = etree.fromstring(data)
        if content == "nonconfig" and ds is None:
            keep_state(self.nc.schema, data)
        targets = find_targets(data, segments)
        if segments and not targets:
            raise not_found(f"no data at /{api_path(segments)}")
        if "fields" in q:
            fields = parse_fields(q["fields"])
            schema = self.nc.schema
            for t in (targets if segments else []):
                select_fields(schema, t, segments[-1].node, fields)
            if not segments:
                wrapper_sn = None
                select_fields(schema, data, wrapper_sn, fields)
        if depth is not None:
            schema = self.nc.schema
            if segments:
                for t in targets:
                    prune(schema, t, segments[-1].node, depth - 1)
            else:
                for t in data:
                    if isinstance(t.tag, str):
                        prune(schema, t, schema.lookup(None, t.tag), depth - 1)
        body = self._represent(data, targets, segments, fmt)
        if request.method == "HEAD":
            return self._reply(request, 200, None, fmt, {"Content-Type": MEDIA[fmt]})
        return self._reply(request, 200, body, fmt)

    def _represent(self, data: etree._Element, targets: list[etree._Element],
                   segments: list[Segment], fmt: str) -> bytes:
        schema = self.nc.schema
        if not segments:
            if fmt == "xml":
                root = etree.Element(f"{{{RESTCONF_NS}}}data", nsmap={None: RESTCONF_NS})
                for c in data:
                    root.append(c)
                return etree.tostring(root)
            doc = codec.data_to_json(schema, b"".join(codec.standalone(c) for c in data
                                                      if isinstance(c.tag, str)))
            return codec.json.dumps({"ietf-restconf:data": doc}, indent=1).encode()
        if fmt == "xml":
            if len(targets) > 1:  # an XML document has one root element
                raise RpcError("protocol", "invalid-value",
                               f"{len(targets)} entries of {segments[-1].node.name!r} match: "
                               "name one with its key values, or ask for JSON")
            return codec.standalone(targets[0])
        doc = codec.data_to_json(schema, codec.minimal_tree(targets, segments))
        last = segments[-1].node
        value = codec.walk_json(doc, segments)
        return codec.json.dumps({f"{last.module}:{last.name}": value}, indent=1).encode()

    # edits -------------------------------------------------------------------------------

    def _exists(self, request: web.Request, segments: list[Segment]) -> bool:
        op = etree.Element(NC + "get-config", nsmap={None: NC_NS})
        etree.SubElement(etree.SubElement(op, NC + "source"), NC + self._edit_ds(request))
        filt = subtree_filter(segments)
        if filt is not None:
            op.append(filt)
        result = self._call(request, op) or []
        data = result[0]
        if isinstance(data, bytes):
            data = etree.fromstring(data)
        return bool(find_targets(data, segments))

    def _edit(self, request: web.Request, config: etree._Element) -> None:
        op = etree.Element(NC + "edit-config", nsmap={None: NC_NS})
        etree.SubElement(etree.SubElement(op, NC + "target"), NC + self._edit_ds(request))
        etree.SubElement(op, NC + "error-option").text = "rollback-on-error"
        config.tag = NC + "config"
        op.append(config)
        self._call(request, op)

    async def _body(self, request: web.Request, parent: list[Segment]
                    ) -> tuple[etree._Element, list[etree._Element]]:
        """The request body parsed under `parent`: the `<data>` tree and the body's own
        top-level nodes in it."""
        fmt = input_format(request, required=True)
        assert fmt is not None
        raw = await request.read()
        data = codec.body_to_xml(self.nc.schema, raw, fmt, parent)
        anchor = find_targets(data, parent)
        if len(anchor) != 1:
            raise RpcError("protocol", "malformed-message", "the body does not fit here")
        own_keys = set(parent[-1].node.key_tags) if parent and parent[-1].node.kind == "list" \
            else set()
        nodes = [c for c in anchor[0] if isinstance(c.tag, str) and c.tag not in own_keys]
        if not nodes:
            raise RpcError("protocol", "malformed-message", "the body holds no data node")
        return data, nodes

    def _delete(self, request: web.Request, segments: list[Segment]) -> web.Response:
        if not segments:
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          "the datastore itself cannot be deleted"),
                            {"Allow": "GET, HEAD, OPTIONS, POST, PUT, PATCH"})
        _need_instance(segments[-1])
        cfg, target = config_skeleton(segments)
        target.set(NC + "operation", "delete")
        self._edit(request, cfg)
        return self._reply(request, 204, None, "json")

    async def _put(self, request: web.Request, segments: list[Segment]) -> web.Response:
        fmt = output_format(request)
        if not segments:  # replace the whole datastore
            data, _nodes = await self._body(request, [])
            op = etree.Element(NC + "copy-config", nsmap={None: NC_NS})
            etree.SubElement(etree.SubElement(op, NC + "target"), NC + self._edit_ds(request))
            src = etree.SubElement(op, NC + "source")
            data.tag = NC + "config"
            src.append(data)
            self._call(request, op)
            return self._reply(request, 204, None, fmt)
        _need_instance(segments[-1])
        data, nodes = await self._body(request, segments[:-1])
        self._one_target(nodes, segments)
        existed = self._exists(request, segments)
        nodes[0].set(NC + "operation", "replace")
        self._edit(request, data)
        return self._reply(request, 204 if existed else 201, None, fmt)

    async def _patch(self, request: web.Request, segments: list[Segment]) -> web.Response:
        ctype = (request.content_type or "").lower()
        if ctype in yangpatch.TYPES:
            if request.get("ds") not in (None, "running"):
                raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                              "a YANG Patch is committed: send it to "
                                              "/restconf/data or ds/ietf-datastores:running"),
                                {"Allow": "GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"})
            if segments:
                _need_instance(segments[-1])
            fmt_in = yangpatch.TYPES[ctype]
            return await yangpatch.apply(self, request, segments, fmt_in,
                                         output_format(request, prefer=fmt_in))
        fmt = output_format(request)
        if segments:
            _need_instance(segments[-1])
            data, nodes = await self._body(request, segments[:-1])
            self._one_target(nodes, segments)
            if not self._exists(request, segments):
                raise not_found(f"no data at /{api_path(segments)} to patch")
            nodes[0].set(NC + "operation", "merge")
        else:
            data, _nodes = await self._body(request, [])
        self._edit(request, data)
        return self._reply(request, 204, None, fmt)

    async def _post(self, request: web.Request, segments: list[Segment]) -> web.Response:
        fmt = output_format(request)
        parent = segments
        if segments and segments[-1].node.kind in ("list", "leaf-list") \
                and segments[-1].keys is None:
            parent = segments[:-1]  # POST to the list itself: a new entry of it
        if parent and parent[-1].node.kind in ("leaf", "leaf-list"):
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          "POST creates a child resource: a leaf has none"),
                            {"Allow": "GET, HEAD, OPTIONS, PUT, PATCH, DELETE"})
        if parent and not parent[-1].node.config:
            raise HttpError(405, RpcError("protocol", "operation-not-supported",
                                          f"{parent[-1].node.name!r} is state data"),
                            {"Allow": "GET, HEAD, OPTIONS"})
        data, nodes = await self._body(request, parent)
        if len(nodes) != 1:
            raise RpcError("protocol", "malformed-message",
                           "POST creates one child resource: the body holds "
                           f"{len(nodes)} nodes")
        new = nodes[0]
        if segments is not parent and new.tag != segments[-1].node.tag:
            raise RpcError("protocol", "malformed-message",
                           f"the body must be an entry of {segments[-1].node.name!r}")
        new.set(NC + "operation", "create")
        self._edit(request, data)
        child = _segment_of(self.nc.schema, parent, new)
        loc = api_path([*parent, child]) if parent else segment_text(child, None)
        ds = request.get("ds")
        where = "data" if ds is None else f"ds/ietf-datastores:{ds}"
        return self._reply(request, 201, None, fmt,
                           {"Location": f"{self.base_url()}/{where}/{loc}"})

    def _one_target(self, nodes: list[etree._Element], segments: list[Segment]) -> None:
        """PUT/PATCH: the body is the target resource itself, keys as in the URI."""
        last = segments[-1]
        if len(nodes) != 1 or nodes[0].tag != last.node.tag:
            raise RpcError("protocol", "malformed-message",
                           f"the body must hold exactly the target {last.node.name!r}")
        if last.keys is not None and not find_targets_one(nodes[0], last):
            raise RpcError("protocol", "invalid-value",
                           "the key values in the body differ from those in the URI",
                           info={"bad-element": last.node.name})


_PATCH_TYPES = ("application/yang-data+json", "application/yang-data+xml",
                "application/yang-patch+json", "application/yang-patch+xml")


def find_targets_one(el: etree._Element, seg: Segment) -> bool:
    assert seg.keys is not None
    if seg.node.kind == "list":
        return tuple((el.findtext(k) or "").strip() for k in seg.node.key_tags) == seg.keys
    return (el.text or "").strip() == seg.keys[0]


def _segment_of(schema: Any, parent: list[Segment], el: etree._Element) -> Segment:
    psn = parent[-1].node if parent else None
    sn = schema.lookup(psn, el.tag)
    keys = None
    if sn.kind == "list":
        keys = tuple((el.findtext(k) or "").strip() for k in sn.key_tags)
    elif sn.kind == "leaf-list":
        keys = ((el.text or "").strip(),)
    return Segment(sn, keys)


def _need_instance(seg: Segment) -> None:
    if seg.node.kind in ("list", "leaf-list") and seg.keys is None:
        what = "key values" if seg.node.kind == "list" else "a value"
        raise RpcError("protocol", "malformed-message",
                       f"{seg.node.name!r} is a {seg.node.kind}: name one instance with "
                       f"{what} ({seg.node.name}=...)")


def _default_names(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", "::1"]
    if host not in ("0.0.0.0", "::", "", *names):
        names.insert(0, host)
    return names
