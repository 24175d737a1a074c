"""Writes outcomes in fenced batches; one outcome the database refuses never blocks the others.

Each batch is one statement per kind (succeeded, failed, handed back, deferred). When the
database refuses a batch's data (``DataRefused``: a value, a size or a nesting limit), the batch
is split in halves until the one outcome that caused it is alone: a refused result then fails
its job permanently with the database's reason, a refused error text is replaced by a plain one,
and every other outcome is written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .. import metrics
from ..db import Failure, WorkerConnection
from ..errors import DatabaseUnavailable, DataRefused
from ..retry import reconnect_delay
from .state import Kind, Outcome, WorkerState

log = logging.getLogger("skiplock.worker")

Write = Callable[[list[Outcome]], Awaitable[dict[int, str]]]


class Completer:
    name = "completer"

    def __init__(self, state: WorkerState, db: WorkerConnection) -> None:
        self.state = state
        self.db = db

    async def run(self) -> None:
        failures = 0
        while True:
            # Not when outcomes wait already: after a restart they were added before this loop
            # began waiting, and backpressure may mean no new one ever comes to wake it.
            if not self.state.outcomes:
                await self.state.outcomes.ready.wait()
            self.state.outcomes.ready.clear()
            while self.state.outcomes:
                try:
                    await self.run_once()
                    failures = 0
                except DatabaseUnavailable as exc:
                    failures += 1
                    metrics.DB_ERRORS.labels("complete").inc()
                    delay = reconnect_delay(failures)
                    log.warning("%s; %d outcome(s) kept, retrying in %.1fs", exc,
                                len(self.state.outcomes), delay)
                    await asyncio.sleep(delay)

    async def run_once(self) -> int:
        """Write every outcome waiting now; returns how many were settled. On a failure to
        reach the database the unwritten ones go back to the buffer, in order."""
        taken = self.state.outcomes.take()
        batch: list[Outcome] = []
        dropped: list[Outcome] = []
        for outcome in taken:
            (batch if self.state.still_ours(outcome.run.job) else dropped).append(outcome)
        if dropped:
            self.state.outcomes.settled(dropped)
        try:
            for kind, write in (
                (Kind.SUCCEEDED, self._write_succeeded),
                # after SUCCEEDED: a refused result joins the failures as a permanent one
                (Kind.FAILED, self._write_failed),
                (Kind.HANDED_BACK, self._write_handed_back),
                (Kind.DEFERRED, self._write_deferred),
                (Kind.SNOOZED, self._write_snoozed),
            ):
                # in job id order, as bulk cancels lock rows: no deadlock between the two
                group = sorted((o for o in batch if o.kind is kind and not o.done),
                               key=_job_id)
                if group:
                    await self._write_split(group, write)
        except BaseException:
            self.state.outcomes.put_back(batch)
            raise
        else:
            self.state.outcomes.settled(batch)
        finally:
            metrics.OUTCOMES_WAITING.set(len(self.state.outcomes))
            if self.state.free_slots() > 0:
                self.state.wake.set()  # backpressure: claiming may resume
        return sum(1 for o in batch if o.done)

    async def flush_all(self, deadline: float) -> None:
        """At shutdown: keep writing until nothing waits or the deadline passes."""
        failures = 0
        while self.state.outcomes and time.monotonic() < deadline:
            try:
                await self.run_once()
            except DatabaseUnavailable as exc:
                failures += 1
                log.warning("%s; %d outcome(s) not yet recorded", exc, len(self.state.outcomes))
                await asyncio.sleep(
                    min(reconnect_delay(failures), max(0.0, deadline - time.monotonic()))
                )
        if self.state.outcomes:
            log.error(
                "%d outcome(s) could not be recorded before exit; their leases will expire "
                "and the jobs will run again",
                len(self.state.outcomes),
            )

    async def _write_split(self, group: list[Outcome], write: Write) -> None:
        pending = [group]
        while pending:
            part = pending.pop()
            try:
                states = await write(part)
            except DataRefused as exc:
                metrics.OUTCOMES_REFUSED.inc()
                if len(part) > 1:
                    mid = len(part) // 2
                    pending += [part[mid:], part[:mid]]  # first half first
                    continue
                if self._refused(part[0], exc):
                    pending.append(part)
                continue
            succeeded = [outcome.run.job for outcome in part if self._settle(outcome, states)]
            metrics.count_jobs(metrics.JOBS_SUCCEEDED, succeeded)

    def _refused(self, outcome: Outcome, exc: DataRefused) -> bool:
        """The database refused this one outcome; True to try writing it again as it is now."""
        job = outcome.run.job
        log.error("job %d attempt %d: the database refused its outcome: %s", job.id,
                  job.attempt, exc)
        if outcome.kind is Kind.SUCCEEDED:
            outcome.kind = Kind.FAILED
            outcome.failure = Failure(job.id, job.attempt, _plain(
                f"result is not storable: the database refused it ({exc})"), 0.0, True)
            return False  # written with the failures that follow
        if outcome.kind is Kind.FAILED and outcome.failure and not outcome.text_replaced:
            outcome.text_replaced = True
            f = outcome.failure
            outcome.failure = Failure(f.id, f.attempt, _plain(
                f"the error text was not storable: the database refused it ({exc})"),
                f.delay, f.permanent)
            return True
        # Nothing left to simplify: give the run up, so its lease expires and the rescuer
        # applies the retry policy, rather than renew a lease for an outcome that never lands.
        outcome.done = True
        self.state.forget(job)
        return False

    def _settle(self, outcome: Outcome, states: dict[int, str]) -> bool:
        """The written outcome's bookkeeping; True when its job succeeded (the caller counts
        those once per write)."""
        outcome.done = True
        job = outcome.run.job
        self.state.forget(job)
        state = states.get(job.id)
        if state is None:
            metrics.STALE_WRITES.inc()
            log.warning(
                "job %d attempt %d: outcome discarded, the job is no longer ours "
                "(lease expired and it was re-claimed or finished)",
                job.id, job.attempt,
                extra={"job_id": job.id, "attempt": job.attempt},
            )
            return False
        if state == "cancelled":
            # a cancel request stored before this write: whatever the run did, it ended so
            self.state.processed += 1
            metrics.child(metrics.JOBS_CANCELLED, job.queue, job.task).inc()
            log.info("job %d attempt %d: cancelled", job.id, job.attempt)
            return False
        if outcome.kind is Kind.SNOOZED:
            metrics.child(metrics.JOBS_SNOOZED, job.queue, job.task).inc()
            return False
        if outcome.kind in (Kind.HANDED_BACK, Kind.DEFERRED):
            return False
        self.state.processed += 1
        if state == "succeeded":
            return True
        if state == "dead":
            metrics.child(metrics.JOBS_DEAD, job.queue, job.task).inc()
            log.warning("job %d is dead after attempt %d", job.id, job.attempt,
                        extra={"job_id": job.id, "task": job.task, "attempt": job.attempt})
        else:
            metrics.child(metrics.JOBS_RETRIED, job.queue, job.task).inc()
        return False

    # -- one statement per kind ----------------------------------------------------------------

    async def _write_succeeded(self, part: list[Outcome]) -> dict[int, str]:
        return await self.db.complete_succeeded(
            [(o.run.job.id, o.run.job.attempt, o.result_json) for o in part],
            self.state.worker_id,
        )

    async def _write_failed(self, part: list[Outcome]) -> dict[int, str]:
        return await self.db.complete_failed(
            [o.failure for o in part if o.failure is not None], self.state.worker_id
        )

    async def _write_handed_back(self, part: list[Outcome]) -> dict[int, str]:
        return await self.db.release(
            [(o.run.job.id, o.run.job.attempt) for o in part], self.state.worker_id
        )

    async def _write_deferred(self, part: list[Outcome]) -> dict[int, str]:
        return await self.db.defer_unrunnable(
            [(o.run.job.id, o.run.job.attempt, o.reason, o.delay) for o in part],
            self.state.worker_id,
        )

    async def _write_snoozed(self, part: list[Outcome]) -> dict[int, str]:
        return await self.db.snooze(
            [(o.run.job.id, o.run.job.attempt, o.delay) for o in part], self.state.worker_id
        )


def _job_id(outcome: Outcome) -> int:
    return outcome.run.job.id


def _plain(text: str, limit: int = 1000) -> str:
    """Text made of printable ASCII only: what is left when the database refused the rest."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:limit]
