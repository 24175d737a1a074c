"""The snapshot's workers' tasks (mounted into the worker pods from a ConfigMap): the demo's
kinds of work plus a task that snoozes and one that runs until cancelled or timed out, so
every worker panel of the dashboard has something to show."""

from __future__ import annotations

import time

from skiplock.app import App, JobContext
from skiplock.errors import Snooze
from skiplock.retry import Backoff

app = App()


@app.task(max_attempts=3)
def slow(ctx: JobContext, seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return {"slept": seconds}


@app.task(max_attempts=5, backoff=Backoff(base=0.3, factor=2, cap=5))
def flaky(ctx: JobContext, fail_times: int) -> dict[str, int]:
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"succeeded_on_attempt": ctx.attempt}


@app.task(max_attempts=3, backoff=Backoff(base=0.3, factor=2, cap=5))
def poison(ctx: JobContext, reason: str) -> None:
    raise ValueError(f"poison pill: {reason}")


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
