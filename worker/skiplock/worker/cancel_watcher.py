"""Reads the stored cancel requests for the runs this worker holds and hands them to the
executor. Looks when a NOTIFY says a request was made (so a forged NOTIFY, which anyone who can
connect may send, stops nothing by itself), when LISTEN (re)connects (requests made while it
was away sent no notification we heard), every poll interval while LISTEN is down (behind a
pooler, a cut link), and every ``slow_interval`` in any case (a link that died silently). The
lease heartbeat's answer carries the requests too; this makes them arrive sooner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from .. import metrics
from ..db import WorkerConnection
from ..errors import DatabaseUnavailable
from ..retry import reconnect_delay
from .loops import wait_event
from .state import WorkerState

log = logging.getLogger("skiplock.worker")


class CancelWatcher:
    name = "cancel_watcher"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        interval: float,
        on_cancel: Callable[[int, str], object],
        slow_interval: float = 5.0,
    ) -> None:
        self.state = state
        self.db = db
        self.interval = interval
        self.slow_interval = max(interval, slow_interval)
        self.on_cancel = on_cancel
        self.wake = asyncio.Event()

    def look_now(self, *_: object) -> bool:
        """Look at the stored requests at once (a NOTIFY came, LISTEN is back)."""
        self.wake.set()
        return True

    async def run(self) -> None:
        failures = 0
        while True:
            wait = self.interval if not self.state.listening else self.slow_interval
            if failures:
                wait = min(wait, reconnect_delay(failures))
            await wait_event(self.wake, wait)
            self.wake.clear()
            try:
                await self.run_once()
                failures = 0
            except DatabaseUnavailable as exc:
                failures += 1
                metrics.DB_ERRORS.labels("cancel poll").inc()
                log.warning("%s; cancel requests are looked for again", exc)

    async def run_once(self) -> int:
        """Look once at the runs whose handlers run; returns the requests acted on."""
        ids = sorted(i for i, run in self.state.owned.items()
                     if run.executing and run.stop is None)
        if not ids:
            return 0
        found = await self.db.cancel_requests(ids, self.state.worker_id)
        for job_id, reason in found.items():
            self.on_cancel(job_id, reason)
        return len(found)
