"""kopf handlers for JobSchedules (imported by handlers.py): one loop reconciles them all
(schedules.py) every PASS_SECONDS, and at once after a JobSchedule changes (a JobQueue's
change, a new database URL say, is seen on the next timed pass: only JobSchedule events wake
the loop).

A pass lists the resources itself instead of trusting the watch events it has seen: a delete
the operator missed (it was down, the watch lagged) still removes the row on the next pass,
and a restart does not remove rows of resources whose events have not come in yet. Only the
Lease holder runs passes (leader.py); the pass asks again before every write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import kopf

from .resources import GROUP, VERSION
from .schedules import PLURAL, ScheduleReconciler

log = logging.getLogger("skiplock.operator")
PASS_SECONDS = 10.0
# After an event, wait this long for more (a `kubectl apply` of many) before the pass.
SETTLE_SECONDS = 0.5
ERROR_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass
class ScheduleLoop:
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    passes: int = 0


@kopf.on.startup()
async def start_schedules(memo: kopf.Memo, **_: Any) -> None:
    memo.schedule_loop = loop = ScheduleLoop()
    loop.task = asyncio.create_task(_run(memo, loop), name="jobschedules")


@kopf.on.cleanup()
async def stop_schedules(memo: kopf.Memo, **_: Any) -> None:
    loop: ScheduleLoop | None = getattr(memo, "schedule_loop", None)
    if loop is not None and loop.task is not None:
        loop.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop.task


@kopf.on.event(GROUP, VERSION, PLURAL)
async def jobschedule_event(memo: kopf.Memo, **_: Any) -> None:
    loop: ScheduleLoop | None = getattr(memo, "schedule_loop", None)
    if loop is not None:
        loop.wake.set()


async def _run(memo: kopf.Memo, loop: ScheduleLoop) -> None:
    # handlers.configure (another startup handler, in whatever order kopf runs them) sets
    # up the Kubernetes client, the settings, the poll pool and the elector
    while not all(hasattr(memo, a) for a in ("kube", "settings", "pool", "elector")):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop.wake.wait(), 0.1)
    reconciler = ScheduleReconciler(memo.kube, memo.settings.namespaces)
    reconciler.still_leading = lambda: bool(memo.elector.is_leader)
    running = asyncio.get_running_loop()
    failures = 0
    try:
        while True:
            delay = PASS_SECONDS
            if memo.elector.is_leader:
                try:
                    await running.run_in_executor(memo.pool, reconciler.run)
                    failures = 0
                except Exception as exc:  # an API error, a timeout: the next pass retries
                    delay = ERROR_BACKOFF[min(failures, len(ERROR_BACKOFF) - 1)]
                    failures += 1
                    log.warning("JobSchedule pass failed (%s: %s); retrying in %.0fs",
                                type(exc).__name__, exc, delay)
                loop.passes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(loop.wake.wait(), delay)
                await asyncio.sleep(SETTLE_SECONDS)
            loop.wake.clear()
    finally:
        try:
            await running.run_in_executor(memo.pool, reconciler.close)
        except RuntimeError:  # the pool is shut down already (the operator is stopping)
            reconciler.close()
