"""The heartbeat: extends the lease of every run this worker holds, fenced. Its answer also
carries the cancel requests for those runs: the path that works without LISTEN."""

from __future__ import annotations

import logging
from collections.abc import Callable

from .. import metrics
from ..db import WorkerConnection
from ..leases import runs_that_lost_their_lease
from .loops import every
from .state import WorkerState

log = logging.getLogger("skiplock.worker")


class LeaseRenewer:
    name = "lease_renewer"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        interval: float,
        on_cancel: Callable[[int, str], object] = lambda job_id, reason: None,
    ) -> None:
        self.state = state
        self.db = db
        self.interval = interval
        self.on_cancel = on_cancel

    async def run(self) -> None:
        await every(self.interval, self.run_once, "heartbeat", "lease renewal will be retried")

    async def run_once(self) -> int:
        """Renew every held lease once; returns how many the database extended."""
        # in job id order, as bulk cancels lock rows: no deadlock between the two
        sent = {i: run for i, run in sorted(self.state.owned.items()) if not run.lost}
        if not sent:
            return 0
        renewed = await self.db.renew_leases(
            [(i, run.job.attempt) for i, run in sent.items()],
            self.state.worker_id,
            self.state.lease_seconds,
        )
        metrics.LEASE_RENEWALS.inc(len(renewed))
        for job_id, cancel_reason in renewed.items():
            if cancel_reason is not None:
                self.on_cancel(job_id, cancel_reason)
        for run in runs_that_lost_their_lease(sent, renewed, self.state.owned):
            run.lost = True
            metrics.LEASES_LOST.inc()
            log.warning(
                "job %d attempt %d: lease lost (expired, perhaps taken over); "
                "telling its handler to stop",
                run.job.id,
                run.job.attempt,
                extra={"job_id": run.job.id, "attempt": run.job.attempt},
            )
            # its slot counts as free since the lease expired: the handler must stop
            self.state.stop_lost(run)
        return len(renewed)
