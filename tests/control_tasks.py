"""Handlers for the job-control tests (cancel, deadlines, snooze): each appends what it saw to a
marker file as ``event job_id attempt monotonic_time`` so a test knows what the handler did and
when (the same machine, so the clock is shared with the test process)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import skiplock
from skiplock import JobContext, Snooze

app = skiplock.App()
# Backoff kept short so retries after a timeout come quickly.
FAST = skiplock.Backoff(base=0.2, cap=0.5)


def note(marker: str, event: str, ctx: JobContext) -> None:
    with open(marker, "a") as f:
        f.write(f"{event} {ctx.job_id} {ctx.attempt} {time.monotonic():.6f}\n")


def events(marker: Path) -> list[tuple[str, int, int, float]]:
    try:
        text = marker.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        event, job, attempt, at = line.split()
        out.append((event, int(job), int(attempt), float(at)))
    return out


@app.task(max_attempts=3, backoff=FAST)
def sync_hold(ctx: JobContext, marker: str, hold: str, cooperative: bool = True,
              hold_timeout: float = 60) -> dict[str, int]:
    """Runs until the file ``hold`` exists. Cooperative: stops as soon as it is told to."""
    note(marker, "start", ctx)
    deadline = time.monotonic() + hold_timeout
    while not Path(hold).exists() and time.monotonic() < deadline:
        if cooperative and ctx.sleep(0.01):
            note(marker, "saw-stop", ctx)
            ctx.raise_if_cancelled()
        elif not cooperative:
            time.sleep(0.01)
    note(marker, "end", ctx)
    return {"attempt": ctx.attempt}


@app.task(max_attempts=3, backoff=FAST)
async def async_hold(ctx: JobContext, marker: str, hold: str, ignore_cancel: bool = False,
                     hold_timeout: float = 60) -> dict[str, int]:
    """Awaits the file ``hold``. ``ignore_cancel``: swallows CancelledError and goes on (a
    handler that will not stop)."""
    note(marker, "start", ctx)
    deadline = time.monotonic() + hold_timeout
    while not Path(hold).exists() and time.monotonic() < deadline:  # noqa: ASYNC240
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            note(marker, "saw-stop", ctx)
            if not ignore_cancel:
                raise
    note(marker, "end", ctx)
    return {"attempt": ctx.attempt}


@app.task(max_attempts=2, backoff=FAST, timeout=1.0)
def sync_slow(ctx: JobContext, marker: str, cooperative: bool = True,
              seconds: float = 30) -> str:
    """Runs ``seconds`` (past its 1 s deadline unless overridden per job)."""
    note(marker, "start", ctx)
    if cooperative:
        if ctx.sleep(seconds):
            note(marker, "saw-stop", ctx)
            ctx.raise_if_cancelled()
    else:
        time.sleep(seconds)
    note(marker, "end", ctx)
    return "finished"


@app.task(max_attempts=2, backoff=FAST, timeout=1.0)
async def async_slow(ctx: JobContext, marker: str, seconds: float = 30) -> str:
    note(marker, "start", ctx)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        note(marker, "saw-stop", ctx)
        raise
    note(marker, "end", ctx)
    return "finished"


@app.task(max_attempts=1, backoff=FAST)
async def quick(ctx: JobContext, marker: str, seconds: float) -> dict[str, int]:
    """Finishes after ``seconds``: the other side of a cancel racing completion."""
    note(marker, "start", ctx)
    await asyncio.sleep(seconds)
    note(marker, "end", ctx)
    return {"job": ctx.job_id}


@app.task(max_attempts=2, backoff=FAST, max_snoozes=3)
def snoozer(ctx: JobContext, marker: str, times: int, seconds: float) -> dict[str, int]:
    """Snoozes ``times`` times, then succeeds (or goes dead past max_snoozes=3)."""
    note(marker, "start", ctx)
    if ctx.snoozes < times:
        raise Snooze(seconds)
    return {"snoozes": ctx.snoozes, "attempt": ctx.attempt}
