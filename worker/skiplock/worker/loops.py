"""The loop most services are: do one step every interval, ride out the database going away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .. import metrics
from ..errors import DatabaseUnavailable
from ..retry import reconnect_delay

log = logging.getLogger("skiplock.worker")


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set or ``seconds`` pass, whichever comes first.

    asyncio.timeout, not wait_for: on 3.11 wait_for returns the event's result and drops a
    cancellation that comes as the event is set, and a service looping on it never stops."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def every(
    interval: float, step: Callable[[], Awaitable[object]], operation: str, then: str
) -> None:
    """Run ``step`` every ``interval`` seconds for ever. ``DatabaseUnavailable`` is expected:
    logged with ``then`` (what happens next), counted under ``operation``, and retried sooner
    with capped backoff; anything else propagates to the supervisor."""
    failures = 0
    while True:
        await asyncio.sleep(
            interval if failures == 0 else min(interval, reconnect_delay(failures))
        )
        try:
            await step()
            failures = 0
        except DatabaseUnavailable as exc:
            failures += 1
            metrics.DB_ERRORS.labels(operation).inc()
            log.warning("%s; %s", exc, then)
