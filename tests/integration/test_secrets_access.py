"""Key material (RFC 9061's nacm:default-deny-all leaves) is hidden from, and not writable by,
users configured with `read_secrets = false`; other users see it (RFC 8341, the part we do)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ncclient.operations.rpc import RPCError
from ncharness import PASSWORD, PASSWORD_HASH, AgentThread, connect

from netconf_core.auth import User
from netconf_core.configfile import parse_users

DATA = Path(__file__).resolve().parent.parent / "data" / "rfc9061"
KEY_HEX = "4c:80:cd:ef:bb:5d:10:da:90:6a:c7:3c:36:13:a6:34:2e:44:3b:68"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[AgentThread]:
    a = AgentThread(tmp_path, users=[User("admin", PASSWORD_HASH),
                                     User("auditor", PASSWORD_HASH, read_secrets=False)])
    a.start()
    yield a
    a.stop()


def example() -> str:
    body = (DATA / "ikeless-g2g-gw1.xml").read_text()
    body = body[body.index("<ipsec-ikeless"):]
    return f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">{body}</config>'


def test_auditor_sees_sas_but_no_keys(agent: AgentThread) -> None:
    with agent.connect("admin") as m:
        m.edit_config(target="running", config=example())
        assert KEY_HEX in m.get_config("running").data_xml
    with connect(agent.port, "auditor", PASSWORD) as m:
        xml = m.get_config("running").data_xml
        assert "out/tunnel/198.51.100.1/198.51.100.2" in xml  # the SA is visible
        assert "<spi>4096</spi>" in xml
        assert KEY_HEX not in xml and "<key>" not in xml
        assert KEY_HEX not in m.get().data_xml


def test_auditor_cannot_write_keys_and_nothing_changes(agent: AgentThread) -> None:
    with agent.connect("admin") as m:
        m.edit_config(target="running", config=example())
    before = agent.snapshot()
    with connect(agent.port, "auditor", PASSWORD) as m, pytest.raises(RPCError) as ei:
        m.edit_config(target="running", config=example())
    assert ei.value.tag == "access-denied"
    assert agent.snapshot() == before


def test_read_secrets_in_config_file(tmp_path: Path) -> None:
    users = parse_users([{"name": "a", "password_hash": "x"},
                         {"name": "b", "password_hash": "x", "read_secrets": False}], tmp_path)
    assert [u.read_secrets for u in users] == [True, False]


def test_rpc_handing_out_secrets_is_refused_to_such_users() -> None:
    from types import SimpleNamespace

    from lxml import etree

    from netconf_core.errors import RpcError
    from netconf_core.schema import YangSchema
    from netconf_core.server import NetconfServer, ServerConfig
    from netconf_core.yang_context import create_context

    fp = "urn:i2nsf-sdn:yang:i2nsf-flow-policy"
    srv = NetconfServer(YangSchema(create_context(["i2nsf-flow-policy"])),
                        ServerConfig(no_secrets_users=frozenset({"auditor"})))
    calls = []
    for name in ("export-road-warrior", "rekey-policy"):
        srv.register_rpc(fp, name, lambda s, sess, op: calls.append(op) or None)
    rpc = etree.fromstring(f'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                           f'<export-road-warrior xmlns="{fp}"/></rpc>')
    with pytest.raises(RpcError) as ei:
        srv.dispatch(SimpleNamespace(username="auditor"), rpc)  # type: ignore[arg-type]
    assert ei.value.error_tag == "access-denied"
    assert calls == []
    srv.dispatch(SimpleNamespace(username="admin"), rpc)  # type: ignore[arg-type]
    other = etree.fromstring(f'<rpc xmlns="urn:ietf:params:xml:ns:netconf:base:1.0">'
                             f'<rekey-policy xmlns="{fp}"/></rpc>')
    srv.dispatch(SimpleNamespace(username="auditor"), other)  # type: ignore[arg-type]
    assert len(calls) == 2
