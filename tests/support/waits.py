"""Waiting on a condition with a deadline: the only way tests wait (no fixed sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30,
    interval: float = 0.05,
    message: str = "condition",
) -> object:
    """Poll until ``predicate()`` is truthy; on timeout fail with what was last seen."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")
