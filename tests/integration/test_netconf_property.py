"""Property test: ≥ 1,000 random edit-configs (valid and invalid) against the running server.

A small model of the ikeless SPD (name → direction, reqid) predicts each outcome; after every
operation the server must still answer, running must equal the model, and a rejected edit must
leave all three datastores byte-identical.
"""

from __future__ import annotations

import atexit
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from lxml import etree
from ncclient.operations import RPCError
from ncharness import IKELESS_NS, NC_NS, AgentThread

NAMES = [f"p{i}" for i in range(6)]
DIRECTIONS = ["inbound", "outbound", "sideways", ""]  # the last two are invalid
_agent: AgentThread | None = None
EDITS = [0]  # edit-configs sent, over all examples
_mgr = None
STEPS = 50
EXAMPLES = 30  # hypothesis may end a run before STEPS; test_enough_edits checks the total


def _server() -> tuple[AgentThread, object]:
    global _agent, _mgr
    if _agent is None:
        _agent = AgentThread(Path(tempfile.mkdtemp(prefix="ncprop-")) / "state").start()
        _mgr = _agent.connect()
        atexit.register(_agent.stop)
    return _agent, _mgr


def entry(name: str, direction: str | None, reqid: int | None, op: str | None) -> str:
    attr = f' nc:operation="{op}"' if op else ""
    body = f"<name>{name}</name>"
    if direction is not None:
        body += f"<direction>{direction}</direction>"
    if reqid is not None:
        body += f"<reqid>{reqid}</reqid>"
    if direction is not None:
        body += ("<ipsec-policy-config><traffic-selector><local-prefix>192.0.2.1/32</local-prefix>"
                 "<remote-prefix>192.0.2.2/32</remote-prefix><inner-protocol>any</inner-protocol>"
                 "</traffic-selector><processing-info><action>bypass</action></processing-info>"
                 "</ipsec-policy-config>")
    return (f'<config xmlns="{NC_NS}" xmlns:nc="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS_NS}">'
            f"<spd><spd-entry{attr}>{body}</spd-entry></spd></ipsec-ikeless></config>")


class EditMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.agent, self.m = _server()
        self.model: dict[str, tuple[str, int]] = {}

    @initialize()
    def reset(self) -> None:
        empty = f'<source xmlns="{NC_NS}"><config/></source>'
        self.m.copy_config(source=empty, target="running")  # type: ignore[attr-defined]
        self.model = {}

    def _edit(self, config: str, expect_ok: bool, target: str = "running") -> None:
        before = self.agent.snapshot()
        EDITS[0] += 1
        try:
            if target == "candidate":
                self.m.edit_config(target="candidate", config=config)  # type: ignore[attr-defined]
                self.m.commit()  # type: ignore[attr-defined]
            else:
                self.m.edit_config(target="running", config=config)  # type: ignore[attr-defined]
        except RPCError as err:
            assert not expect_ok, f"unexpected rpc-error {err.tag}: {err.message}"
            assert err.tag in ("invalid-value", "data-exists", "data-missing", "missing-element",
                               "unknown-element", "bad-element", "operation-failed"), err.tag
            if target == "candidate":
                self.m.discard_changes()  # type: ignore[attr-defined]
            assert self.agent.snapshot() == before, "a rejected edit changed a datastore"
            return
        assert expect_ok, "the server accepted an edit the model rejects"

    @rule(name=st.sampled_from(NAMES), direction=st.sampled_from(DIRECTIONS),
          reqid=st.integers(min_value=0, max_value=3),
          op=st.sampled_from([None, "merge", "replace", "create"]),
          where=st.sampled_from(["running", "running", "candidate"]))
    def write(self, name: str, direction: str, reqid: int, op: str | None, where: str) -> None:
        valid = direction in ("inbound", "outbound") and not (op == "create" and name in self.model)
        self._edit(entry(name, direction, reqid, op), valid, where)
        if valid:
            self.model[name] = (direction, reqid)

    @rule(name=st.sampled_from(NAMES), op=st.sampled_from(["delete", "remove"]))
    def delete(self, name: str, op: str) -> None:
        valid = op == "remove" or name in self.model
        self._edit(entry(name, None, None, op), valid)
        if valid:
            self.model.pop(name, None)

    @rule(name=st.sampled_from(NAMES), reqid=st.integers(min_value=0, max_value=3))
    def merge_leaf(self, name: str, reqid: int) -> None:
        """Change one leaf of an existing entry; on a missing entry the mandatory
        direction is missing and the edit fails."""
        valid = name in self.model
        self._edit(entry(name, None, reqid, None), valid)
        if valid:
            self.model[name] = (self.model[name][0], reqid)

    @rule(junk=st.sampled_from(["<bogus/>", "<name>x</name><direction>inbound</direction>"
                                "<reqid>not-a-number</reqid>"]))
    def garbage(self, junk: str) -> None:
        cfg = (f'<config xmlns="{NC_NS}"><ipsec-ikeless xmlns="{IKELESS_NS}"><spd>'
               f"<spd-entry>{junk}</spd-entry></spd></ipsec-ikeless></config>")
        self._edit(cfg, False)

    @invariant()
    def running_matches_model(self) -> None:
        reply = self.m.get_config("running")  # type: ignore[attr-defined]
        root = etree.fromstring(reply.xml.encode())
        got = {}
        for e in root.iter(f"{{{IKELESS_NS}}}spd-entry"):
            got[e.findtext(f"{{{IKELESS_NS}}}name")] = (
                e.findtext(f"{{{IKELESS_NS}}}direction"),
                int(e.findtext(f"{{{IKELESS_NS}}}reqid") or 0),
            )
        assert got == self.model
        # running as served equals the stored canonical datastore, and it validates
        ds = self.agent.agent.datastores
        stored = self.agent.call(lambda: ds.get_config("running"))  # type: ignore[union-attr]
        served = root.find(f"{{{NC_NS}}}data")
        assert _canon(stored) == _canon(served)
        self.agent.call(lambda: ds.schema.validate_config(stored))  # type: ignore[union-attr]


def _canon(el: etree._Element) -> str:
    return etree.canonicalize(etree.tostring(el).decode(), rewrite_prefixes=True, strip_text=True)


EditMachine.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=list(HealthCheck),
)
TestEdits = EditMachine.TestCase


def test_enough_edits() -> None:
    """Runs after TestEdits (pytest keeps file order): the property saw ≥ 1,000 edits."""
    assert EDITS[0] >= 1000, EDITS[0]
    print(f"{EDITS[0]} edit-configs")
