"""Looks for cancel requests while LISTEN is unavailable (a pooler, a cut link), so a cancel
still reaches the handler within a poll interval instead of waiting for the lease heartbeat."""

from __future__ import annotations

from collections.abc import Callable

from ..db import WorkerConnection
from .loops import every
from .state import WorkerState


class CancelWatcher:
    name = "cancel_watcher"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        interval: float,
        on_cancel: Callable[[int, str], object],
    ) -> None:
        self.state = state
        self.db = db
        self.interval = interval
        self.on_cancel = on_cancel

    async def run(self) -> None:
        await every(self.interval, self.run_once, "cancel poll",
                    "cancel requests are looked for again")

    async def run_once(self) -> int:
        """Look once (only when LISTEN is down and handlers run); returns requests acted on."""
        if self.state.listening:
            return 0
        ids = [i for i, run in self.state.owned.items() if run.executing and run.stop is None]
        if not ids:
            return 0
        found = await self.db.cancel_requests(ids, self.state.worker_id)
        for job_id, reason in found.items():
            self.on_cancel(job_id, reason)
        return len(found)
