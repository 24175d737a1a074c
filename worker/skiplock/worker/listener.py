"""LISTEN for new jobs on this worker's queues; polling covers whatever it misses."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import metrics
from ..db import WorkerConnection
from ..errors import DatabaseUnavailable
from ..retry import reconnect_delay
from .state import WorkerState

log = logging.getLogger("skiplock.worker")


class Listener:
    name = "listener"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        channel: str,
        queues: list[str],
        poll_interval: float,
    ) -> None:
        self.state = state
        self.db = db
        self.channel = channel
        self.queues = set(queues)
        self.poll_interval = poll_interval

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.run_once()
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                metrics.DB_ERRORS.labels("listen").inc()
                log.warning("%s; polling every %.1fs until LISTEN is back", exc,
                            self.poll_interval)
                await asyncio.sleep(reconnect_delay(failures))
                # Jobs inserted while we were deaf sent no notification we could hear.
                self.state.wake.set()

    async def run_once(self, max_seconds: float | None = None) -> int:
        """LISTEN and wake the claimer per notification for one of our queues, until the link
        dies (DatabaseUnavailable) or ``max_seconds`` pass; returns the wake-ups given."""
        woken = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_seconds):
                async for queue in self.db.listen(self.channel):
                    if queue in self.queues:
                        woken += 1
                        self.state.wake.set()
        return woken
