"""Tasks with concurrency and rate limits, run by real worker processes in
tests/integration/test_limits.py."""

from __future__ import annotations

import time

import skiplock
from skiplock import JobContext
from skiplock.limits import Rate

app = skiplock.App()

# a global limit below what the workers could run (3 workers x concurrency 4)
GLOBAL_LIMIT = 3
KEY_LIMIT = 2
RATE = 5  # starts per RATE_PERIOD
RATE_PERIOD = 1.0


@app.task(queue="limited", concurrency_limit=GLOBAL_LIMIT, max_attempts=3)
def limited(ctx: JobContext, seconds: float) -> None:
    time.sleep(seconds)


@app.task(queue="keyed", concurrency_limit=KEY_LIMIT, concurrency_key="tenant",
          key_limit=KEY_LIMIT)
def keyed(ctx: JobContext, tenant: str, seconds: float) -> None:
    time.sleep(seconds)


@app.task(queue="per_tenant", concurrency_key=lambda tenant, **_: tenant.upper(),
          key_limit=1)
def per_tenant(ctx: JobContext, tenant: str, seconds: float) -> None:
    time.sleep(seconds)


@app.task(queue="rated", rate_limit=Rate(RATE, per=RATE_PERIOD))
def rated(ctx: JobContext) -> None:
    return None


@app.task(queue="limited")
def unlimited(ctx: JobContext) -> None:
    return None
