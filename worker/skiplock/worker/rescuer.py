"""Returns jobs whose worker stopped renewing their lease (crashed, cut off) to the queue."""

from __future__ import annotations

import logging

from .. import metrics
from ..db import WorkerConnection
from .loops import every

log = logging.getLogger("skiplock.worker")


class Rescuer:
    name = "rescuer"

    def __init__(self, db: WorkerConnection, queues: list[str], lease_seconds: float) -> None:
        self.db = db
        self.queues = queues
        # Often enough that a crashed worker's jobs come back soon after their lease expires.
        self.interval = min(1.0, lease_seconds / 4)

    async def run(self) -> None:
        await every(self.interval, self.run_once, "rescue", "rescue retried later")

    async def run_once(self) -> int:
        """Rescue every expired lease of our queues once; returns how many."""
        rescued = await self.db.rescue_expired(self.queues)
        for job_id, state, attempt in rescued:
            metrics.RESCUED.inc()
            log.warning(
                "job %d: lease expired on attempt %d; now %s",
                job_id,
                attempt,
                state,
                extra={"job_id": job_id, "attempt": attempt},
            )
        return len(rescued)
