"""An async handler held on a file (tests/integration/failures/test_second_signal.py): the
async counterpart of tests.tasks.tracked, so a test decides when it may finish."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import skiplock
from skiplock import JobContext

app = skiplock.App()


@app.task(max_attempts=5)
async def async_tracked(ctx: JobContext, marker: str, hold: str,
                        hold_timeout: float = 60) -> dict[str, object]:
    """Appends ``job attempt worker pid`` to ``marker``, then awaits the file ``hold``."""
    # A tiny local file: blocking the loop for microseconds is what a test task may do.
    with open(marker, "a") as f:  # noqa: ASYNC230
        f.write(f"{ctx.job_id} {ctx.attempt} {ctx.worker_id} {os.getpid()}\n")
    deadline = time.monotonic() + hold_timeout
    while not Path(hold).exists():  # noqa: ASYNC240
        if time.monotonic() > deadline:
            raise TimeoutError(f"{hold} never appeared")
        await asyncio.sleep(0.02)
    return {"attempt": ctx.attempt, "worker": ctx.worker_id}
