"""Waiting on a condition with a deadline: the only way tests wait (no fixed sleeps)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30,
    message: str = "condition",
    *,
    interval: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
) -> Any:
    """Poll until ``predicate()`` is truthy and return that value; on timeout fail with what
    was last seen.

    ``retry_on``: exceptions that mean "not yet" (a transient API or DB error while a cluster
    heals): the exception becomes the value last seen instead of failing the test at once.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except retry_on as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g}s waiting for {message}; last seen: {last!r}")


def first_times(checks: dict[str, Callable[[], Any]], timeout: float, since: float, *,
                interval: float = 0.5) -> dict[str, float]:
    """Poll every check in one loop until each has held once; the seconds after ``since``
    (a time.monotonic() value) at which each first held. Waiting for them one after another
    would time the later ones no earlier than the earlier ones. An exception is "not yet"
    (a cluster healing)."""
    seen: dict[str, float] = {}
    last: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(checks) and time.monotonic() < deadline:
        for name, check in checks.items():
            if name in seen:
                continue
            try:
                last[name] = check()
            except Exception as exc:
                last[name] = f"{type(exc).__name__}: {exc}"
            else:
                if last[name]:
                    seen[name] = time.monotonic() - since
        time.sleep(interval)
    missing = {name: last.get(name) for name in checks if name not in seen}
    if missing:
        pytest.fail(f"timed out after {timeout:g}s waiting for {sorted(missing)}; last seen: "
                    f"{missing!r}; held after: {seen!r}")
    return seen


def holds(predicate: Callable[[], Any], seconds: float, message: str, *,
          interval: float = 0.2) -> None:
    """Assert ``predicate()`` stays truthy for ``seconds`` (checked every ``interval``): that
    something does *not* happen, watched for a bounded time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        assert value, f"{message} stopped holding; saw {value!r}"
        time.sleep(interval)


async def until(predicate: Callable[[], Any], within: float, interval: float = 0.01) -> bool:
    """wait_until for code that runs a worker on its own event loop (which must keep turning
    while it waits): True once ``predicate()`` is truthy, False after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
