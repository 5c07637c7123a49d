"""Stopping a controller must never hang: a cancel that races with the event a loop waits
for must not be swallowed (Python 3.11's asyncio.wait_for does swallow it when the awaited
future completes in the same step; the controller's southbound loop then reconnected instead
of stopping, and ControllerServer.stop hung — seen in test teardowns)."""

from __future__ import annotations

import asyncio

import pytest

from controller.core.engine import wait_event
from controller.core.nc_client import NcClient, NcError


class _Chan:
    def write(self, data: bytes) -> None:
        pass


def test_rpc_cancel_racing_with_a_failed_reply_is_a_cancel() -> None:
    async def main() -> None:
        c = NcClient(name="t")
        c.chan = _Chan()  # type: ignore[assignment]
        task = asyncio.ensure_future(c.rpc("<get/>", timeout=30))
        await asyncio.sleep(0)  # the rpc waits for its reply now
        c.close("stopping")  # fails every pending reply ...
        task.cancel()  # ... and the stopping caller cancels, in the same step
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_rpc_timeout_and_failure_still_raise_ncerror() -> None:
    async def main() -> None:
        c = NcClient(name="t")
        c.chan = _Chan()  # type: ignore[assignment]
        with pytest.raises(NcError, match="no reply within"):
            await c.rpc("<get/>", timeout=0.01)
        assert c._pending == {}
        task = asyncio.ensure_future(c.rpc("<get/>", timeout=30))
        await asyncio.sleep(0)
        c.close("gone")
        with pytest.raises(NcError, match="session closed: gone"):
            await task

    asyncio.run(main())


def test_wait_event_cancel_racing_with_the_event_is_a_cancel() -> None:
    async def main() -> None:
        ev = asyncio.Event()
        task = asyncio.ensure_future(wait_event(ev, 30))
        await asyncio.sleep(0)
        ev.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        ev.clear()
        await wait_event(ev, 0.01)  # (a timeout just returns)

    asyncio.run(main())
