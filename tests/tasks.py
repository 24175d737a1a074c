"""Tasks the tests run in real worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import skiplock
from skiplock import Backoff, JobContext

app = skiplock.App()
FAST_BACKOFF = Backoff(base=0.2, factor=2, cap=2, jitter=0)


@app.task(max_attempts=3)
def noop(ctx: JobContext) -> None:
    return None


@app.task(max_attempts=5)
def add(ctx: JobContext, a: int, b: int) -> dict[str, int]:
    return {"sum": a + b}


@app.task(max_attempts=5)
def sleep(ctx: JobContext, seconds: float, marker: str | None = None) -> dict[str, object]:
    """Sleeps; appends a line to ``marker`` at start so tests can count executions."""
    if marker:
        with open(marker, "a") as f:
            f.write(f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {os.getpid()}\n")
    time.sleep(seconds)
    return {"slept": seconds, "attempt": ctx.attempt}


@app.task(max_attempts=5)
async def async_sleep(ctx: JobContext, seconds: float) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@app.task(max_attempts=4, backoff=FAST_BACKOFF)
def poison(ctx: JobContext) -> None:
    raise RuntimeError(f"always fails (attempt {ctx.attempt})")


@app.task(max_attempts=5, backoff=FAST_BACKOFF)
def flaky(ctx: JobContext, fail_times: int) -> dict[str, int]:
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"transient failure {ctx.attempt}")
    return {"attempt": ctx.attempt}


@app.task(max_attempts=5)
def permanent(ctx: JobContext) -> None:
    raise skiplock.PermanentError("input can never work")


@app.task(max_attempts=5)
def wait_for_file(ctx: JobContext, path: str, timeout: float = 60) -> dict[str, int]:
    """Runs until ``path`` exists: lets a test decide exactly when a job finishes."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return {"attempt": ctx.attempt}


# -- tasks for the failure-mode suite (tests/integration/failures) ------------------------------


@app.task(max_attempts=5, backoff=FAST_BACKOFF)
def tracked(
    ctx: JobContext,
    marker: str,
    hold: str | None = None,
    seconds: float = 0.0,
    hold_timeout: float = 60,
) -> dict[str, object]:
    """Appends ``job attempt worker pid`` to ``marker`` when it starts (one line per execution),
    then waits for the file ``hold`` to exist (if given; ``{attempt}`` in it is replaced by the
    attempt number) and sleeps ``seconds``."""
    with open(marker, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {os.getpid()}\n")
    if hold:
        hold = hold.replace("{attempt}", str(ctx.attempt))  # a separate gate per attempt
        deadline = time.monotonic() + hold_timeout
        while not Path(hold).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{hold} never appeared")
            time.sleep(0.02)
    if seconds:
        time.sleep(seconds)
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}


@app.task(max_attempts=1)
def wall_clock(ctx: JobContext) -> dict[str, float]:
    """What this worker process believes the time is (to prove a clock-skew fault is real)."""
    return {"time": time.time(), "monotonic": time.monotonic()}


@app.task(max_attempts=3)
def crash_on_first_attempt(ctx: JobContext, marker: str) -> dict[str, int]:
    """SIGKILLs its own worker process on attempt 1, right after the claim: a real crash
    between claiming a job and recording any outcome."""
    import signal

    with open(marker, "a") as f:
        f.write(f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {os.getpid()}\n")
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"attempt": ctx.attempt}


@app.task(max_attempts=5, backoff=Backoff(base=0.05, factor=40, cap=600, jitter=0))
def slow_retry(ctx: JobContext) -> None:
    """Fails every time; retries after 0.05 s, 2 s, then 80 s: a job that sits at a high
    retry count (3) for a while, as a struggling job would."""
    raise RuntimeError(f"still failing (attempt {ctx.attempt})")


@app.task(max_attempts=1)
def chatty(ctx: JobContext, message: str) -> None:
    """Logs from inside the handler (a thread): the line must carry the job's fields."""
    import logging

    logging.getLogger("tests.chatty").warning("handler says %s", message)


# -- outcomes Postgres cannot store (tests/integration/failures/test_unstorable_outcomes.py) -----


class Unserialisable:
    """A result value no JSON encoder knows."""


@app.task(max_attempts=2, backoff=FAST_BACKOFF)
def outcome_from(ctx: JobContext, blob: str) -> object:
    """Returns, or raises, what ``blob`` (a base64 pickle of ("return" | "raise", value))
    says: job arguments are JSON, so a NaN, a NUL or a lone surrogate has to travel pickled."""
    import base64
    import pickle

    kind, value = pickle.loads(base64.b64decode(blob))  # the test's own data
    if kind == "raise":
        raise RuntimeError(value)
    if kind == "huge":  # built here: a failing example's repr stays short
        return "z" * value
    if kind == "deep":  # built here: pickle itself cannot hold a list nested 100,000 deep
        deep: list[object] = []
        for _ in range(value):
            deep = [deep]
        return deep
    return value
