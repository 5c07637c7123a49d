"""An SSH packet (with the ignore packet asyncssh puts before it) is one socket write."""

from __future__ import annotations

import asyncio.selector_events as sel
import threading
from pathlib import Path

import pytest

from tests.integration.ncharness import AgentThread


def test_one_socket_write_per_reply(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = AgentThread(tmp_path).start()
    try:
        with agent.connect() as m:
            m.get_config(source="running")  # warm up: hello, auth and window traffic done
            writes: list[int] = []
            real = sel._SelectorSocketTransport.write
            loop_thread = agent._thread.ident

            def write(self, data):  # type: ignore[no-untyped-def]
                if threading.get_ident() == loop_thread:
                    writes.append(len(data))
                return real(self, data)

            monkeypatch.setattr(sel._SelectorSocketTransport, "write", write)
            for _ in range(20):
                m.get_config(source="running")
            monkeypatch.undo()
        assert len(writes) == 20, writes
    finally:
        agent.stop()
