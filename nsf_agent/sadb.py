"""The i2nsf-sadb module's RPCs (what RFC 9061 cannot express, e.g. SADB_GETSPI), shared by
the appliers that implement them: input parsed and checked against the YANG schema (types,
ranges, mandatory leaves, defaults) by libyang, then the checks YANG cannot state."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import libyang
from _libyang import ffi, lib  # type: ignore[import-not-found]
from lxml import etree

from netconf_core.errors import RpcError

if TYPE_CHECKING:
    from netconf_core.server import NetconfServer

NS = "urn:i2nsf-sdn:yang:i2nsf-sadb"
Q = f"{{{NS}}}"
MODULE = "i2nsf-sadb"
ALLOCATE_SPI = (NS, "allocate-spi")

IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class SpiRequest:
    """The input of allocate-spi, defaults filled in."""

    src: IpAddr
    dst: IpAddr
    protocol: str  # "esp" | "ah"
    spi_min: int
    spi_max: int
    reqid: int
    mode: str  # "transport" | "tunnel"


def parse_rpc_input(srv: NetconfServer, op: etree._Element) -> etree._Element:
    """The rpc's input as libyang sees it: validated, with default leaves added."""
    ctx = srv.schema.ctx
    xml = etree.tostring(op)
    in_p = ffi.new("struct ly_in **")
    buf = ffi.new("char[]", xml)
    if lib.ly_in_new_memory(buf, in_p) != lib.LY_SUCCESS:
        raise RpcError("application", "operation-failed", "cannot read the rpc input")
    tree = ffi.new("struct lyd_node **")
    opn = ffi.new("struct lyd_node **")
    lib.ly_err_clean(ctx.cdata, ffi.NULL)
    try:
        ret = lib.lyd_parse_op(ctx.cdata, ffi.NULL, in_p[0], lib.LYD_XML,
                               lib.LYD_TYPE_RPC_YANG, tree, opn)
        if ret == lib.LY_SUCCESS:
            ret = lib.lyd_validate_op(tree[0], ffi.NULL, lib.LYD_TYPE_RPC_YANG, ffi.NULL)
        if ret != lib.LY_SUCCESS:
            raise srv.schema._errors_to_rpc_error()
        text = libyang.DNode.new(ctx, tree[0]).print_mem(
            "xml", with_siblings=True, include_implicit_defaults=True)
    finally:
        lib.ly_in_free(in_p[0], 0)
        if tree[0] != ffi.NULL:
            lib.lyd_free_all(tree[0])
    return etree.fromstring(text.encode())


def parse_allocate_spi(srv: NetconfServer, op: etree._Element) -> SpiRequest:
    """Checked allocate-spi input; RpcError(invalid-value) for what YANG cannot rule out."""
    inp = parse_rpc_input(srv, op)

    def val(name: str) -> str:
        return inp.findtext(Q + name) or ""

    src = ipaddress.ip_address(val("source-address").split("%")[0])
    dst = ipaddress.ip_address(val("destination-address").split("%")[0])
    if src.version != dst.version:
        raise RpcError(
            "application", "invalid-value",
            f"source-address {src} and destination-address {dst} are of different "
            "address families", path="/i2nsf-sadb:allocate-spi/destination-address",
            info={"bad-element": "destination-address"})
    spi_min, spi_max = int(val("min-spi")), int(val("max-spi"))
    if spi_min > spi_max:
        raise RpcError(
            "application", "invalid-value",
            f"min-spi {spi_min} is greater than max-spi {spi_max}",
            path="/i2nsf-sadb:allocate-spi/min-spi", info={"bad-element": "min-spi"})
    return SpiRequest(src, dst, val("protocol"), spi_min, spi_max, int(val("reqid")),
                      val("mode"))


def spi_reply(spi: int) -> list[etree._Element]:
    """The allocate-spi output (the rpc-reply's content)."""
    out = etree.Element(Q + "spi", nsmap={None: NS})
    out.text = str(spi)
    return [out]
