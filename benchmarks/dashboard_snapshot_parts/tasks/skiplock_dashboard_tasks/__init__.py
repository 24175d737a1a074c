"""The snapshot's workers' tasks (mounted into the worker pods from a ConfigMap): the demo's
kinds of work plus a task that snoozes and one that runs until cancelled or timed out, so
every worker panel of the dashboard has something to show. The demo's own app (fast, slow,
flaky, poison) with the two added to it, not copies of its tasks: this module runs in the
worker pods only, where nothing else uses the demo's app."""

from __future__ import annotations

from skiplock.app import JobContext
from skiplock.demo_tasks import app
from skiplock.errors import Snooze


@app.task(max_attempts=3)
def snoozy(ctx: JobContext, times: int, seconds: float) -> dict[str, int]:
    if ctx.snoozes < times:
        raise Snooze(seconds)
    return {"snoozed": ctx.snoozes}


@app.task(max_attempts=1)
def sleeper(ctx: JobContext, seconds: float) -> str:
    # wakes at once on a cancel request or the job's deadline (runs stopped by reason)
    ctx.sleep(seconds)
    ctx.raise_if_cancelled()
    return "slept"
