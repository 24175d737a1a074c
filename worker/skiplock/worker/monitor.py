"""Keeps the health snapshot that /livez serves (from another thread, so it reads a snapshot
made on the event loop; a snapshot that stops being refreshed is itself reported)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from .. import metrics
from .health import Health, assess
from .state import WorkerState

INTERVAL = 1.0


class Monitor:
    name = "monitor"

    def __init__(self, state: WorkerState, problems: Callable[[], Sequence[str]]) -> None:
        self.state = state
        self.problems = problems
        self.snapshot = self.run_once()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(INTERVAL)
            self.run_once()

    def run_once(self) -> Health:
        now = time.monotonic()
        outcomes = self.state.outcomes
        self.snapshot = assess(
            self.problems(), len(outcomes), outcomes.oldest_age(now), self.state.lease_seconds,
            now, len(self.state.abandoned), self.state.concurrency,
        )
        metrics.OUTCOMES_WAITING.set(len(outcomes))
        return self.snapshot
