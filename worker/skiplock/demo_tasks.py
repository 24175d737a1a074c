"""Tasks for ``skiplock demo``: fast, slow, flaky-then-succeeds and a poison pill."""

from __future__ import annotations

import time

from .app import App, JobContext
from .retry import Backoff

app = App()


@app.task(max_attempts=3)
def fast(ctx: JobContext, n: int) -> dict[str, int]:
    return {"n": n, "square": n * n}


@app.task(max_attempts=3)
def slow(ctx: JobContext, seconds: float) -> dict[str, float]:
    time.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt}


@app.task(max_attempts=5, backoff=Backoff(base=0.3, factor=2, cap=5))
def flaky(ctx: JobContext, fail_times: int) -> dict[str, int]:
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"succeeded_on_attempt": ctx.attempt}


@app.task(max_attempts=3, backoff=Backoff(base=0.3, factor=2, cap=5))
def poison(ctx: JobContext, reason: str) -> None:
    raise ValueError(f"poison pill: {reason}")
