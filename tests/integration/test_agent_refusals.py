"""Issue #13.4: an agent refuses what none of its appliers enforces — IKE-less SAs on the
`null` applier, IKE configuration without the `ike` applier — with an rpc-error saying why,
and nothing changes. Real agent over SSH (appliers chosen by name, as the CLI does)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree
from ncclient.operations import RPCError
from ncharness import NC_NS, AgentThread

from nsf_agent.agent import Agent

DATA = Path(__file__).resolve().parents[1] / "data" / "rfc9061"


class ConfiguredAgent(AgentThread):
    """An agent whose appliers come from its configuration's names (not injected)."""

    def __init__(self, state_dir: Path, appliers: list[str], accept: bool = False) -> None:
        super().__init__(state_dir)
        cfg = self.agent.config
        cfg.appliers = appliers
        cfg.accept_unenforced = accept
        self.agent = Agent(cfg)


def wrapped(name: str) -> str:
    body = etree.tostring(etree.parse(str(DATA / name)).getroot()).decode()
    return f'<config xmlns="{NC_NS}">{body}</config>'


@pytest.fixture
def null_agent(tmp_path: Path):  # type: ignore[no-untyped-def]
    a = ConfiguredAgent(tmp_path / "s", ["null"]).start()
    try:
        yield a
    finally:
        a.stop()


@pytest.mark.parametrize("data, says", [
    ("ikeless-g2g-gw1.xml", "cannot enforce IKE-less SAD/SPD entries"),
    ("ike-g2g-gw1.xml", "cannot enforce IKE configuration"),
])
def test_unenforceable_configuration_is_refused(null_agent, data: str, says: str) -> None:
    with null_agent.connect() as m:
        before = m.get_config("running").data_xml
        for target in ("running", "candidate"):
            if target == "candidate":
                m.edit_config(target="candidate", config=wrapped(data))
                with pytest.raises(RPCError) as ei:
                    m.commit()
                m.discard_changes()
            else:
                with pytest.raises(RPCError) as ei:
                    m.edit_config(target="running", config=wrapped(data))
            assert ei.value.tag == "operation-not-supported"
            assert says in ei.value.message and "null" in ei.value.message
            assert "[dataplane] appliers" in ei.value.message
        assert m.get_config("running").data_xml == before


def test_store_only_agent_may_opt_in(tmp_path: Path) -> None:
    a = ConfiguredAgent(tmp_path / "s", ["null"], accept=True).start()
    try:
        with a.connect() as m:
            m.edit_config(target="running", config=wrapped("ikeless-g2g-gw1.xml"))
            got = etree.fromstring(m.get_config("running").data_xml.encode())
            assert got.find(".//{*}sad-entry") is not None
    finally:
        a.stop()
