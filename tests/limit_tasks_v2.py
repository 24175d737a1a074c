"""A later version of tests/limit_tasks.py whose ``limited`` task has a lower limit, for the
rolling-deploy rule (docs/limits.md): the worker that registered last sets it for all."""

from __future__ import annotations

import time

import skiplock
from skiplock import JobContext

app = skiplock.App()
V2_LIMIT = 1


@app.task(queue="limited", concurrency_limit=V2_LIMIT, max_attempts=3)
def limited(ctx: JobContext, seconds: float) -> None:
    time.sleep(seconds)
