"""A NETCONF client on libnetconf2 (the library of netopeer2-cli), driven through ctypes.

Run as a script in its own process (libnetconf2 brings its own libyang context and log
callbacks, which must not meet the agent's in one process):

    python lnc2_client.py PORT USER PASSWORD [XPATH [WD-MODE]]

prints one JSON object: whether the session came up, the modules libnetconf2 built its
context from (it reads our yang-library and fetches every schema with get-schema), and the
reply to `<get>` with the XPath filter, as libyang prints it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys

NC_MSG_REPLY = 6
NC_WD_UNKNOWN = 0
WD_MODES = {"report-all": 1, "report-all-tagged": 2, "trim": 3, "explicit": 4}
NC_PARAMTYPE_CONST = 0
NC_SSH_AUTH_PUBLICKEY, NC_SSH_AUTH_PASSWORD, NC_SSH_AUTH_INTERACTIVE = 1, 2, 4
LYD_XML = 1
LYD_PRINT_WITHSIBLINGS = 1
LYD_PRINT_WD_ALL_TAG = 0x40  # tag the nodes the client's libyang holds as defaults

LIBNETCONF2 = "libnetconf2.so.2"


def available() -> bool:
    try:
        ctypes.CDLL(LIBNETCONF2)
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    port, user, password = int(argv[0]), argv[1], argv[2]
    xpath = argv[3] if len(argv) > 3 else None
    wd_mode = WD_MODES[argv[4]] if len(argv) > 4 else NC_WD_UNKNOWN
    nc = ctypes.CDLL(LIBNETCONF2)
    ly = ctypes.CDLL("libyang.so.2")
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.strdup.restype = ctypes.c_void_p
    libc.strdup.argtypes = [ctypes.c_char_p]
    libc.free.argtypes = [ctypes.c_void_p]
    out: dict[str, object] = {"connected": False}
    logs: list[str] = []

    print_cb = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p)(
        lambda level, msg: logs.append(msg.decode(errors="replace")))
    nc.nc_set_print_clb(print_cb)
    nc.nc_verbosity(int(os.environ.get("LNC2_VERBOSITY", "1")))
    # test servers make a fresh host key each run; the client accepts it (loopback only)
    hostkey_cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                  ctypes.c_void_p)(lambda host, sess, priv: 0)
    password_cb = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                   ctypes.c_void_p)(
        lambda u, h, priv: libc.strdup(password.encode()))
    nc.nc_client_init()
    nc.nc_client_ssh_set_auth_hostkey_check_clb(hostkey_cb, None)
    nc.nc_client_ssh_set_auth_password_clb(password_cb, None)
    nc.nc_client_ssh_set_auth_pref(NC_SSH_AUTH_PUBLICKEY, -1)
    nc.nc_client_ssh_set_auth_pref(NC_SSH_AUTH_INTERACTIVE, -1)
    nc.nc_client_ssh_set_auth_pref(NC_SSH_AUTH_PASSWORD, 10)
    nc.nc_client_ssh_set_username(user.encode())
    nc.nc_connect_ssh.restype = ctypes.c_void_p
    nc.nc_connect_ssh.argtypes = [ctypes.c_char_p, ctypes.c_uint16, ctypes.c_void_p]
    sess = nc.nc_connect_ssh(b"127.0.0.1", port, None)
    if sess:
        out["connected"] = True
        nc.nc_session_get_ctx.restype = ctypes.c_void_p
        nc.nc_session_get_ctx.argtypes = [ctypes.c_void_p]
        ctx = nc.nc_session_get_ctx(sess)
        ly.ly_ctx_get_module_implemented.restype = ctypes.c_void_p
        ly.ly_ctx_get_module_implemented.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        out["modules"] = {name: bool(ly.ly_ctx_get_module_implemented(ctx, name.encode()))
                          for name in ("notifications", "nc-notifications",
                                       "ietf-i2nsf-ikeless", "ietf-netconf")}
        if xpath is not None:
            out["reply"] = _get(nc, ly, libc, sess, xpath, wd_mode)
        nc.nc_session_free.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        nc.nc_session_free(sess, None)
    out["log"] = logs
    print(json.dumps(out))
    nc.nc_client_destroy()
    return 0


def _get(nc: ctypes.CDLL, ly: ctypes.CDLL, libc: ctypes.CDLL, sess: int, xpath: str,
         wd_mode: int) -> object:
    xp = ctypes.c_char_p(xpath.encode())
    datastore = os.environ.get("LNC2_GET_DATA")  # e.g. ietf-datastores:operational
    if datastore:  # RFC 8526 <get-data> with with-origin
        nc.nc_rpc_getdata.restype = ctypes.c_void_p
        nc.nc_rpc_getdata.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_uint16, ctypes.c_int, ctypes.c_int,
                                      ctypes.c_int]
        ds = ctypes.c_char_p(datastore.encode())  # kept alive: NC_PARAMTYPE_CONST
        rpc = nc.nc_rpc_getdata(ds, xp, None, None, 0, 0, 0,
                                int(datastore.endswith(":operational")), wd_mode,
                                NC_PARAMTYPE_CONST)
    else:
        nc.nc_rpc_get.restype = ctypes.c_void_p
        nc.nc_rpc_get.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        rpc = nc.nc_rpc_get(xp, wd_mode, NC_PARAMTYPE_CONST)
    msgid = ctypes.c_uint64()
    nc.nc_send_rpc.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                               ctypes.POINTER(ctypes.c_uint64)]
    nc.nc_send_rpc(sess, rpc, 5000, ctypes.byref(msgid))
    envp, op = ctypes.c_void_p(), ctypes.c_void_p()
    nc.nc_recv_reply.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
                                 ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.POINTER(ctypes.c_void_p)]
    ret = nc.nc_recv_reply(sess, rpc, msgid.value, 10000, ctypes.byref(envp), ctypes.byref(op))
    result: dict[str, object] = {"msg_type": ret}
    for name, node in (("envelope", envp), ("data", op)):
        if node.value:
            buf = ctypes.c_void_p()
            ly.lyd_print_mem.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p,
                                         ctypes.c_int, ctypes.c_uint32]
            flags = LYD_PRINT_WITHSIBLINGS | (LYD_PRINT_WD_ALL_TAG if wd_mode else 0)
            ly.lyd_print_mem(ctypes.byref(buf), node, LYD_XML, flags)
            result[name] = ctypes.string_at(buf.value).decode() if buf.value else ""
            libc.free(buf)
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
