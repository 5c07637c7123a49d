"""Waiting for a condition with a deadline, for labs, tests and benchmarks (never a bare
sleep-to-wait)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(pred: Callable[[], Any], timeout: float, what: str = "condition",
               interval: float = 0.02) -> Any:
    """Poll `pred` until it returns something truthy (and return that) or raise
    TimeoutError naming `what` once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
