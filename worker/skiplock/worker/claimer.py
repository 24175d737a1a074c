"""Claims runnable jobs into free slots and hands them to the executor.

Free slots count running handlers, less the outcomes waiting to be written beyond the worker's
concurrency (backpressure): when writes fail but claims still work, the runs a worker holds
(running + waiting) stay at most twice its concurrency instead of growing with every claim.
"""

from __future__ import annotations

import logging
import time

from .. import metrics
from ..db import ClaimedJob, WorkerConnection
from ..errors import DatabaseUnavailable
from ..retry import reconnect_delay
from .executor import Executor
from .loops import wait_event
from .state import WorkerState

log = logging.getLogger("skiplock.worker")


class Claimer:
    name = "claimer"

    def __init__(
        self,
        state: WorkerState,
        db: WorkerConnection,
        executor: Executor,
        queues: list[str],
        poll_interval: float,
    ) -> None:
        self.state = state
        self.db = db
        self.executor = executor
        self.queues = queues
        self.poll_interval = poll_interval
        self.paused_for_outcomes = False
        # the runs it starts are stopped through the same executor when their lease is lost
        state.stop_lost = lambda run: executor.stop_run(
            run, "lease", "lease lost (expired; its slot may be another worker's now)")

    async def run(self) -> None:
        state = self.state
        failures = 0
        while not state.stopping.is_set():
            state.wake.clear()
            free = state.free_slots()
            self._note_backpressure()
            if free > 0:
                try:
                    claimed = await self.run_once(free)
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    metrics.DB_ERRORS.labels("claim").inc()
                    delay = reconnect_delay(failures)
                    log.warning("%s; retrying in %.1fs", exc, delay)
                    await wait_event(state.stopping, delay)
                    continue
                state.more_waiting = claimed == free
                if state.more_waiting:
                    continue
            await wait_event(state.wake, self.poll_interval)

    async def run_once(self, limit: int | None = None) -> int:
        """Claim up to ``limit`` (default: the free slots) jobs and start them."""
        limit = self.state.free_slots() if limit is None else limit
        if limit <= 0 or self.state.stopping.is_set():
            return 0
        started = time.perf_counter()
        state = self.state
        jobs: list[ClaimedJob] = []
        # Limited tasks first, by their own claim (sql/limits.sql): they can take no more than
        # their free slots, so going first never crowds out the rest.
        if state.limited_here:
            # far from the caps no lock is needed; near them (or per key) the locked pass,
            # for the tasks the first pass names only
            got = await self.db.claim_limited(
                state.limited_here, self.queues, limit, state.worker_id,
                state.lease_seconds, state.skip_ids.ids(), locked=False)
            self.executor.start_all(got.jobs)
            jobs += got.jobs
            if len(jobs) < limit and got.lock_tasks:
                more = await self.db.claim_limited(
                    got.lock_tasks, self.queues, limit - len(jobs), state.worker_id,
                    state.lease_seconds, state.skip_ids.ids(), locked=True)
                self.executor.start_all(more.jobs)
                jobs += more.jobs
        if len(jobs) < limit:
            # the plain claim never touches limited tasks: they are in its skip list
            plain = await self.db.claim(
                self.queues,
                limit - len(jobs),
                state.worker_id,
                state.lease_seconds,
                state.skip_tasks | state.limited_everywhere,
                state.skip_ids.ids(),
            )
            self.executor.start_all(plain)
            jobs += plain
        metrics.CLAIM_SECONDS.observe(time.perf_counter() - started)
        return len(jobs)

    def _note_backpressure(self) -> None:
        paused = (self.state.free_slots() == 0
                  and len(self.state.outcomes) > self.state.outcome_limit)
        if paused != self.paused_for_outcomes:
            self.paused_for_outcomes = paused
            if paused:
                log.warning("claiming paused: %d outcome(s) wait to be written (limit %d)",
                            len(self.state.outcomes), self.state.outcome_limit)
            else:
                log.info("claiming resumed: outcomes are being written again")
