"""SSH transport, framing and bad input over a raw asyncssh client; authentication."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
from lxml import etree
from ncclient.transport.errors import AuthenticationError
from ncharness import (
    CLIENT_HELLO_10,
    CLIENT_HELLO_11,
    NC_NS,
    PASSWORD,
    PASSWORD_HASH,
    AgentThread,
    RawClient,
    chunk,
    connect,
    error_tags,
    ikeless_config,
    rpc,
    spd_entry,
)

from netconf_core.auth import User

MAX = 64 * 1024


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "client_key").write_bytes(key.export_private_key())
    users = [
        User("admin", PASSWORD_HASH),
        User("keyonly", None, [key.export_public_key().decode().strip()]),
    ]
    a = AgentThread(tmp_path / "state", users=users, max_message_size=MAX).start()
    a.client_key = tmp_path / "client_key"  # type: ignore[attr-defined]
    yield a
    a.stop()


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_base10_framing(agent: AgentThread) -> None:
    async def go() -> None:
        async with RawClient(agent.port) as c:
            hello = await c.read_eom()
            root = etree.fromstring(hello)
            assert root.findtext(f"{{{NC_NS}}}session-id")
            c.write(CLIENT_HELLO_10)
            c.write(rpc("<get-config><source><running/></source></get-config>", "7") + b"]]>]]>")
            reply = etree.fromstring(await c.read_eom())
            assert reply.get("message-id") == "7"
            assert reply.find(f"{{{NC_NS}}}data") is not None
            c.write(rpc("<close-session/>", "8") + b"]]>]]>")
            assert b"<ok/>" in await c.read_eom()
            assert await c.closed()

    run(go())


def test_hello_and_chunked_rpc_in_one_write(agent: AgentThread) -> None:
    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            msg = rpc("<get-config><source><running/></source></get-config>", "a1")
            # the rpc split in two chunks, both in the same write as the hello
            c.write(CLIENT_HELLO_11 + b"\n#10\n" + msg[:10]
                    + b"\n#%d\n" % (len(msg) - 10) + msg[10:] + b"\n##\n")
            reply = etree.fromstring(await c.read_chunked())
            assert reply.get("message-id") == "a1"
            # attributes of <rpc> are echoed (RFC 6241 4.2)
            c.write(chunk(
                f'<rpc xmlns="{NC_NS}" message-id="x" xmlns:ex="urn:ex" ex:user-id="fred">'
                "<get-config><source><running/></source></get-config></rpc>".encode()))
            reply = etree.fromstring(await c.read_chunked())
            assert reply.get("{urn:ex}user-id") == "fred"

    run(go())


def test_malformed_xml_and_missing_message_id(agent: AgentThread) -> None:
    before = agent.snapshot()

    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(CLIENT_HELLO_11)
            c.write(chunk(b"<rpc xmlns='" + NC_NS.encode() + b"' message-id='1'><edit-config>"))
            assert error_tags(await c.read_chunked()) == ["malformed-message"]
            c.write(chunk(f'<rpc xmlns="{NC_NS}"><get/></rpc>'.encode()))
            assert error_tags(await c.read_chunked()) == ["missing-attribute"]
            c.write(chunk(f'<rpc xmlns="{NC_NS}" message-id="2"/>'.encode()))
            assert error_tags(await c.read_chunked()) == ["missing-element"]
            c.write(chunk(rpc("<get><bogus/></get>", "3")))
            assert error_tags(await c.read_chunked()) == ["unknown-element"]
            c.write(chunk(rpc("<edit-config><config/></edit-config>", "4")))
            assert error_tags(await c.read_chunked()) == ["missing-element"]
            # the session is still usable
            c.write(chunk(rpc("<get-config><source><running/></source></get-config>", "5")))
            assert b"<data" in await c.read_chunked()

    run(go())
    assert agent.snapshot() == before


def test_oversized_message(agent: AgentThread) -> None:
    before = agent.snapshot()
    big = ikeless_config("".join(spd_entry(f"e{i}") for i in range(400)))
    assert len(big) > MAX

    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(CLIENT_HELLO_11)
            body = rpc(f"<edit-config><target><running/></target>{big}</edit-config>", "9")
            for i in range(0, len(body), 8000):  # many chunks
                c.write(b"\n#%d\n" % len(body[i:i + 8000]) + body[i:i + 8000])
            c.write(b"\n##\n")
            reply = await c.read_chunked()
            assert error_tags(reply) == ["too-big"]
            assert b"limit" in reply
            # the session survives the oversized message
            c.write(chunk(rpc("<get-config><source><running/></source></get-config>", "10")))
            assert b'message-id="10"' in await c.read_chunked()

        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(CLIENT_HELLO_10)
            c.write(b"<rpc>" + b"x" * (2 * MAX) + b"]]>]]>")
            assert error_tags(await c.read_eom()) == ["too-big"]
            c.write(rpc("<get-config><source><running/></source></get-config>", "11")
                    + b"]]>]]>")
            assert b'message-id="11"' in await c.read_eom()

    run(go())
    assert agent.snapshot() == before


def test_bad_framing_closes_session(agent: AgentThread) -> None:
    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(CLIENT_HELLO_11)
            c.write(b"\n#zz\n<rpc/>")
            assert error_tags(await c.read_chunked()) == ["malformed-message"]
            assert await c.closed()

    run(go())


def test_bad_hello_closes_session(agent: AgentThread) -> None:
    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(f'<hello xmlns="{NC_NS}"><capabilities><capability>urn:x</capability>'
                    "</capabilities></hello>]]>]]>".encode())
            assert await c.closed()
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(f'<hello xmlns="{NC_NS}"><capabilities><capability>'
                    "urn:ietf:params:netconf:base:1.0</capability></capabilities>"
                    "<session-id>4</session-id></hello>]]>]]>".encode())
            assert await c.closed()

    run(go())
    assert agent.call(lambda: agent.server.stats.in_bad_hellos) == 2


def test_wrong_password_and_unknown_user(agent: AgentThread) -> None:
    before = agent.snapshot()
    with pytest.raises(AuthenticationError):
        connect(agent.port, "admin", "wrong")
    with pytest.raises(AuthenticationError):
        connect(agent.port, "nobody", PASSWORD)
    with pytest.raises(AuthenticationError):
        connect(agent.port, "keyonly", PASSWORD)
    assert agent.snapshot() == before
    assert agent.call(lambda: len(agent.server.sessions)) == 0


def test_public_key_auth(agent: AgentThread) -> None:
    key = str(agent.client_key)  # type: ignore[attr-defined]
    with connect(agent.port, "keyonly", None, key_filename=key) as m:
        assert m.get_config("running").ok
    with pytest.raises(AuthenticationError):  # the key is not admin's
        connect(agent.port, "admin", None, key_filename=key)


def test_other_subsystems_refused(agent: AgentThread) -> None:
    async def go() -> None:
        async with asyncssh.connect("127.0.0.1", agent.port, username="admin",
                                    password=PASSWORD, known_hosts=None, client_keys=None,
                                    agent_path=None) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_session(subsystem="sftp")
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_session(command="id")

    run(go())


def test_host_key_persisted(tmp_path: Path) -> None:
    state = tmp_path / "state"
    a = AgentThread(state).start()
    fp1 = asyncssh.read_private_key(str(state / "ssh_host_ed25519_key")).get_fingerprint()
    a.stop()
    assert (state / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    b = AgentThread(state).start()
    fp2 = asyncssh.read_private_key(str(state / "ssh_host_ed25519_key")).get_fingerprint()
    b.stop()
    assert fp1 == fp2


def test_rpc_trickled_in_pieces_is_parsed_as_it_arrives(agent: AgentThread,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import netconf_core.session as session_mod
    from netconf_core.session import NetconfSession

    streamed: list[bool] = []
    real = NetconfSession._streamed_root

    def spy(self: NetconfSession) -> etree._Element | None:
        root = real(self)
        streamed.append(root is not None)
        return root

    monkeypatch.setattr(NetconfSession, "_streamed_root", spy)
    monkeypatch.setattr(session_mod, "STREAM_FROM", 100)  # this small rpc streams too

    async def go() -> None:
        async with RawClient(agent.port) as c:
            await c.read_eom()
            c.write(CLIENT_HELLO_11)
            body = ikeless_config(spd=spd_entry("trickle")).encode()
            msg = b"\n  " + rpc(f"<edit-config><target><running/></target>"
                                f"{body.decode()}</edit-config>", "t1")
            # one chunk whose content arrives in small writes, then a second chunk
            c.write(b"\n#%d\n" % (len(msg) - 5))
            for i in range(0, len(msg) - 5, 40):
                c.write(msg[i:min(i + 40, len(msg) - 5)])
                await asyncio.sleep(0)
            c.write(b"\n#5\n" + msg[-5:] + b"\n##\n")
            reply = etree.fromstring(await c.read_chunked())
            assert reply.get("message-id") == "t1"
            assert reply.find(f"{{{NC_NS}}}ok") is not None
            # broken XML split over chunks: the usual malformed-message error
            bad = rpc("<get-config><source><running/></source></get-config>", "t2")[:-3]
            c.write(b"\n#20\n" + bad[:20] + b"\n#%d\n" % (len(bad) - 20) + bad[20:] + b"\n##\n")
            assert error_tags(await c.read_chunked()) == ["malformed-message"]
            c.write(chunk(rpc("<get-config><source><running/></source></get-config>", "t3")))
            data = await c.read_chunked()
            assert b"trickle" in data

    run(go())
    assert streamed == [True, False, True]  # the broken one: parsed whole for its error


def test_ncclient_session_setup_waits_for_no_delayed_ack(agent: AgentThread) -> None:
    """paramiko keeps Nagle's algorithm on and writes twice before the server has anything
    to answer (key exchange, auth, hello + first rpc): without an immediate ACK each of
    these waits for Linux's 40 ms delayed ACK (>= 120 ms per connect and close)."""
    key = str(agent.client_key)  # type: ignore[attr-defined]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with connect(agent.port, "keyonly", None, key_filename=key) as m:
            assert m.connected
        times.append(time.perf_counter() - t0)
    assert sorted(times)[2] < 0.06, times
