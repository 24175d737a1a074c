"""Fires periodic jobs: every worker runs this service, with no leader.

Each pass reads the due schedules together with the database's now(), plans each one
(skiplock.schedules.plan: the missed policy and jitter, pure) and hands the plan to the
database, which takes it only from the worker that still sees the next_fire_at it planned
from (sql/schedules.sql, fire_schedule): one winner per firing, whatever the number of
workers and however wrong their clocks are. This process's clock only paces the passes.

App schedules (``@app.periodic``) are declared by each worker at start and kept alive while
it runs (seen_at). A schedule removed from the code is left to the workers that still have
it: during a rolling deploy old workers keep it firing; once no live worker has declared it
for STALE_SECONDS it stops firing, and after RETIRE_SECONDS it is deleted.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

from .. import metrics
from ..app import App
from ..cron import Cadence, CadenceError
from ..db import WorkerConnection
from ..errors import DatabaseUnavailable, SkiplockError
from ..limits import KeyProblem, key_for
from ..outcomes import storable_text
from ..schedules import cadence_of, first_fire_at, plan, put_off, schedule_params
from .loops import every

log = logging.getLogger("skiplock.worker")

# A live worker refreshes its app schedules this often...
TOUCH_SECONDS = 30.0
# ...so one not refreshed for this long is declared by no live worker: it does not fire.
STALE_SECONDS = 120.0
# and after this long it is deleted (its fire time and history go with it).
RETIRE_SECONDS = 3600.0
# Firing records are kept this long (only the newest per schedule is ever read).
KEEP_FIRINGS_SECONDS = 7 * 86400.0
HOUSEKEEPING_SECONDS = 60.0
# A schedule that cannot fire (a cron or time zone this worker cannot read, a concurrency key
# function no live worker has) is put off this long, so that it leaves the due list: the list
# is read oldest first, a hundred at a time, and rows that never move would hold it for ever.
BROKEN_RETRY_SECONDS = 60.0


class Scheduler:
    name = "scheduler"

    def __init__(self, db: WorkerConnection, app: App, interval: float) -> None:
        self.db = db
        self.app = app
        # A firing is enqueued within about one interval of its time.
        self.interval = min(1.0, interval)
        self.registered = not app.schedules
        self._touched = time.monotonic()
        self._housekept = float("-inf")
        self._broken: set[str] = set()

    async def run(self) -> None:
        await every(self.interval, self.run_once, "scheduler", "schedules fired later")

    async def register(self) -> None:
        """Declare this worker's app schedules (idempotent; the fire time is kept when the
        cadence is unchanged, so a restart neither skips nor repeats a firing)."""
        now = await self.db.schedule_now()
        params = [{**schedule_params(s), "next_fire_at": first_fire_at(s.cadence, now)}
                  for s in self.app.schedules.values()]
        taken = await self.db.register_app_schedules(params)
        for name in taken:
            log.error("schedule %r: the name belongs to a JobSchedule resource; this worker's "
                      "@app.periodic schedule of that name is ignored (rename one of them)",
                      name)
        self.registered = True
        self._touched = time.monotonic()

    async def run_once(self) -> int:
        """One pass: declare or refresh this worker's schedules, then fire what is due.
        Returns the number of jobs this worker enqueued."""
        if not self.registered:
            await self.register()
        elif self.app.schedules and time.monotonic() - self._touched > TOUCH_SECONDS:
            await self.db.touch_app_schedules(list(self.app.schedules))
            self._touched = time.monotonic()
        if time.monotonic() - self._housekept > HOUSEKEEPING_SECONDS:
            self._housekept = time.monotonic()
            for name in await self.db.retire_app_schedules(RETIRE_SECONDS):
                log.info("schedule %r retired: no live worker has declared it for %.0fs",
                         name, RETIRE_SECONDS)
            await self.db.prune_schedule_firings(KEEP_FIRINGS_SECONDS)
        enqueued = 0
        for row in await self.db.due_schedules(STALE_SECONDS):
            name = str(row["name"])
            # derived once a row a pass: the put-off of a schedule that cannot fire counts
            # its skipped firings from the same cadence the plan would have used
            cadence: Cadence | None = None
            try:
                cadence = cadence_of(row)
            except CadenceError as exc:  # written by hand in SQL, or a zone this tzdata lacks
                self._report_broken(name, exc)
            try:
                if cadence is None:
                    await self._put_off(name, row["next_fire_at"], row["now"], None)
                else:
                    enqueued += await self._fire(row, cadence)
            except DatabaseUnavailable:
                raise  # every schedule's problem: the loop backs off and retries
            except SkiplockError as exc:
                # the database refused this schedule's statement: its problem, not every
                # other schedule's, nor the worker's (the supervisor would stop it)
                self._report_broken(name, exc)
                await self._put_off(name, row["next_fire_at"], row["now"], cadence)
        return enqueued

    def _report_broken(self, name: str, exc: Exception) -> None:
        """Logged once a schedule (per worker), not once a pass."""
        if name not in self._broken:
            self._broken.add(name)
            log.error("schedule %r cannot fire: %s (retried every %.0fs)", name, exc,
                      BROKEN_RETRY_SECONDS)

    async def _fire(self, row: dict[str, Any], cadence: Cadence) -> int:
        name = str(row["name"])
        now: dt.datetime = row["now"]
        expected: dt.datetime | None = row["next_fire_at"]
        if expected is None:
            await self.db.start_schedule(name, first_fire_at(cadence, now))
            return 0
        # cron steps are CPU work: off the event loop, which renews this worker's leases
        decided = await asyncio.to_thread(
            plan, cadence, next_fire_at=expected, now=now, missed=row["missed"],
            backfill=int(row["backfill_limit"]), grace=float(row["grace_seconds"]),
            jitter=float(row["jitter_seconds"]), paused=bool(row["paused"]))
        if decided is None:
            return 0
        firings = [(f.fire_at, f.run_at, f.late) for f in decided.firings]
        dropped = decided.missed
        try:
            # as for any enqueue: the task's limits hold for scheduled jobs too
            key = key_for(str(row["task"]), row["task_limits"], row["args"] or {})
            if key is not None and storable_text(key, len(key)) != key:
                raise KeyProblem(f"task {row['task']!r}: the concurrency key holds a NUL or a "
                                 "lone surrogate, which PostgreSQL cannot store")
        except KeyProblem as exc:
            if str(row["task"]) not in self.app.tasks:
                # keyed by a function this worker's code lacks: left to a worker that has it,
                # which fires it within a pass; still due a while later, no live worker has
                # it: put off (the late metric says so), not left to block the due list
                if (now - expected).total_seconds() > STALE_SECONDS:
                    await self._put_off(name, expected, now, cadence)
                return 0
            # no job that could slip past a limit: the firings are dropped, loudly
            if name not in self._broken:
                self._broken.add(name)
                log.error("schedule %r: %s; its firings are dropped until this is fixed",
                          name, exc)
            firings, dropped, key = [], dropped + len(firings), None
        won, jobs = await self.db.fire_schedule(name, expected, decided.next_fire_at, firings,
                                                dropped, key)
        if not won:
            return 0  # another worker took this pass's plan
        if jobs:
            metrics.SCHEDULE_FIRINGS.labels(name).inc(len(jobs))
        if dropped:
            metrics.SCHEDULE_MISSED.labels(name).inc(dropped)
            log.warning("schedule %r: %d firing(s) missed (policy %s), next at %s", name,
                        dropped, row["missed"], decided.next_fire_at.isoformat())
        late = [f for f in firings if f[2]]
        if late:
            log.warning("schedule %r: %d late firing(s) enqueued by the missed policy", name,
                        len(late))
        return len(jobs)

    async def _put_off(self, name: str, expected: dt.datetime | None, now: dt.datetime,
                       cadence: Cadence | None) -> None:
        """Move a schedule that cannot fire out of the due list for BROKEN_RETRY_SECONDS,
        firing nothing (under the same race rule as a plan: only from the value read). The
        firings that skips count as missed (schedules.put_off), when the cadence can count
        them."""
        # cron steps (a count of up to COUNT_CAP): off the event loop, as for plan
        later, skipped = await asyncio.to_thread(put_off, cadence, expected, now,
                                                 BROKEN_RETRY_SECONDS)
        if expected is None:
            await self.db.start_schedule(name, later)
            return
        won, _ = await self.db.fire_schedule(name, expected, later, [], skipped, None)
        if won and skipped:
            metrics.SCHEDULE_MISSED.labels(name).inc(skipped)
