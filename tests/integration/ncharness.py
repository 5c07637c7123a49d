"""Test harness: a real agent (SSH + NETCONF) on 127.0.0.1 in a background thread, plus
client helpers (ncclient with a short TICK, a raw asyncssh NETCONF client)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncssh
import ncclient.transport.session as nc_session
from lxml import etree
from ncclient import manager

from netconf_core.applier import NullApplier
from netconf_core.auth import User, hash_password
from netconf_core.polling import wait_until
from nsf_agent.agent import Agent
from nsf_agent.config import AgentConfig

nc_session.TICK = 0.001  # ncclient otherwise waits up to 100 ms before sending each rpc

NC_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
IKELESS_NS = "urn:ietf:params:xml:ns:yang:ietf-i2nsf-ikeless"
PASSWORD = "s3cret-pw"
PASSWORD_HASH = hash_password(PASSWORD)
T = TypeVar("T")


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy or the deadline passes."""
    return wait_until(cond, timeout, what, interval=0.005)


class AgentThread:
    """An Agent serving on its own event loop thread; `call` runs code on that loop."""

    def __init__(self, state_dir: Path, users: list[User] | None = None, **cfg: Any) -> None:
        self.applier = NullApplier()
        config = AgentConfig(
            host="127.0.0.1", port=0, state_dir=state_dir,
            users=users if users is not None else [User("admin", PASSWORD_HASH),
                                                  User("oper", PASSWORD_HASH)],
        )
        for k, v in cfg.items():
            setattr(config, k, v)
        self.agent = Agent(config, appliers=[self.applier])
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = concurrent.futures.Future[None]()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.agent.start())
        except BaseException as exc:
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        self.loop.run_forever()

    def start(self) -> AgentThread:
        self._thread.start()
        self._started.result(timeout=30)
        return self

    @property
    def port(self) -> int:
        return self.agent.port

    @property
    def server(self):  # type: ignore[no-untyped-def]
        return self.agent.server

    def call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=30)

    def snapshot(self) -> dict[str, bytes]:
        """Canonical bytes of all three datastores (taken on the server's loop)."""
        ds = self.agent.datastores
        assert ds is not None
        return self.call(lambda: {n: ds.serialize(n) for n in ("running", "candidate", "startup")})

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(timeout=30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=30)

    def connect(self, username: str = "admin", password: str | None = PASSWORD,
                **kw: Any) -> manager.Manager:
        return connect(self.port, username, password, **kw)


def connect(port: int, username: str = "admin", password: str | None = PASSWORD,
            **kw: Any) -> manager.Manager:
    args: dict[str, Any] = dict(
        host="127.0.0.1", port=port, username=username, password=password,
        hostkey_verify=False, allow_agent=False, look_for_keys=False, timeout=30,
    )
    args.update(kw)
    return manager.connect(**args)


def spd_entry(name: str, local: str = "198.51.100.1/32", remote: str = "198.51.100.2/32",
              direction: str = "outbound", reqid: int = 1, action: str = "protect") -> str:
    return f"""<spd-entry><name>{name}</name><direction>{direction}</direction>
<reqid>{reqid}</reqid><ipsec-policy-config><traffic-selector><local-prefix>{local}</local-prefix>
<remote-prefix>{remote}</remote-prefix><inner-protocol>any</inner-protocol></traffic-selector>
<processing-info><action>{action}</action></processing-info></ipsec-policy-config></spd-entry>"""


def sad_entry(name: str, spi: int, reqid: int = 1) -> str:
    return f"""<sad-entry><name>{name}</name><reqid>{reqid}</reqid><ipsec-sa-config>
<spi>{spi}</spi><ext-seq-num>true</ext-seq-num><seq-overflow>false</seq-overflow>
<anti-replay-window-size>64</anti-replay-window-size>
<traffic-selector><local-prefix>198.51.100.1/32</local-prefix>
<remote-prefix>198.51.100.2/32</remote-prefix><inner-protocol>any</inner-protocol></traffic-selector>
<protocol-parameters>esp</protocol-parameters><mode>transport</mode>
<esp-sa><encryption><encryption-algorithm>12</encryption-algorithm>
<key>01:23:45:67:89:ab:cd:ef:fe:dc:ba:98:76:54:32:10</key>
<iv>0f:1e:2d:3c:4b:5a:69:78:87:96:a5:b4:c3:d2:e1:f0</iv></encryption>
<integrity><integrity-algorithm>12</integrity-algorithm>
<key>10:32:54:76:98:ba:dc:fe:ef:cd:ab:89:67:45:23:01:10:32:54:76:98:ba:dc:fe:ef:cd:ab:89:67:45:23:01</key>
</integrity></esp-sa></ipsec-sa-config></sad-entry>"""


def ikeless_config(spd: str = "", sad: str = "") -> str:
    body = ""
    if spd:
        body += f"<spd>{spd}</spd>"
    if sad:
        body += f"<sad>{sad}</sad>"
    return (f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS_NS}">{body}'
            "</ipsec-ikeless></config>")


def names(reply_xml: str | bytes, list_name: str = "spd-entry") -> list[str]:
    root = etree.fromstring(reply_xml.encode() if isinstance(reply_xml, str) else reply_xml)
    return [e.text or "" for e in root.iter(f"{{{IKELESS_NS}}}name")
            if e.getparent() is not None
            and e.getparent().tag == f"{{{IKELESS_NS}}}{list_name}"]


# -- a raw NETCONF client on asyncssh (exact control over bytes and framing) ----------------

CLIENT_HELLO_10 = (
    f'<?xml version="1.0" encoding="UTF-8"?><hello xmlns="{NC_NS}"><capabilities>'
    "<capability>urn:ietf:params:netconf:base:1.0</capability></capabilities></hello>]]>]]>"
).encode()
CLIENT_HELLO_11 = (
    f'<hello xmlns="{NC_NS}"><capabilities>'
    "<capability>urn:ietf:params:netconf:base:1.0</capability>"
    "<capability>urn:ietf:params:netconf:base:1.1</capability></capabilities></hello>]]>]]>"
).encode()


class RawClient:
    """A NETCONF subsystem channel where the test writes and reads raw bytes."""

    def __init__(self, port: int, username: str = "admin", password: str = PASSWORD) -> None:
        self.port = port
        self.username = username
        self.password = password
        self.conn: asyncssh.SSHClientConnection | None = None
        self.reader: asyncssh.SSHReader[bytes] | None = None
        self.writer: asyncssh.SSHWriter[bytes] | None = None
        self.buf = b""

    async def __aenter__(self) -> RawClient:
        self.conn = await asyncssh.connect(
            "127.0.0.1", self.port, username=self.username, password=self.password,
            known_hosts=None, client_keys=None, agent_path=None,
        )
        self.writer, self.reader, _ = await self.conn.open_session(
            subsystem="netconf", encoding=None
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()
            await self.conn.wait_closed()

    def write(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)

    async def read_eom(self, timeout: float = 10) -> bytes:
        """One 1.0-framed message."""
        assert self.reader is not None
        while b"]]>]]>" not in self.buf:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        msg, _, self.buf = self.buf.partition(b"]]>]]>")
        return msg

    async def read_chunked(self, timeout: float = 10) -> bytes:
        """One 1.1-framed message."""
        assert self.reader is not None
        while b"\n##\n" not in self.buf:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        out = b""
        while True:
            assert self.buf.startswith(b"\n#"), self.buf[:20]
            if self.buf.startswith(b"\n##\n"):
                self.buf = self.buf[4:]
                return out
            nl = self.buf.index(b"\n", 2)
            size = int(self.buf[2:nl])
            out += self.buf[nl + 1 : nl + 1 + size]
            self.buf = self.buf[nl + 1 + size :]

    async def closed(self, timeout: float = 10) -> bool:
        """True once the server closed the channel."""
        assert self.reader is not None
        while True:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                return True
            self.buf += chunk


def rpc(body: str, message_id: str = "1") -> bytes:
    return f'<rpc xmlns="{NC_NS}" message-id="{message_id}">{body}</rpc>'.encode()


def chunk(msg: bytes) -> bytes:
    return b"\n#%d\n%s\n##\n" % (len(msg), msg)


def error_tags(reply: bytes | str) -> list[str]:
    root = etree.fromstring(reply.encode() if isinstance(reply, str) else reply)
    return [e.text or "" for e in root.iter(f"{{{NC_NS}}}error-tag")]
