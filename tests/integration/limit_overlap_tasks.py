"""A limited task whose handler records when it ran (test_limits_overlap.py): what a limit is
about is handlers running at once, so that is what the test measures, from the handlers' own
clock readings (CLOCK_MONOTONIC is one clock for every process on the machine)."""

from __future__ import annotations

import os
import time

import skiplock
from skiplock import JobContext

app = skiplock.App()

# above the unlocked pass's margin for a worker of concurrency 10 beside one of 2
# (2 x 2 = 4: free >= batch + 4), below what both can run (12): both passes are taken
OVERLAP_LIMIT = 10


@app.task(queue="overlap", concurrency_limit=OVERLAP_LIMIT, max_attempts=3)
def overlap(ctx: JobContext, path: str, seconds: float) -> None:
    started = time.monotonic()
    time.sleep(seconds)
    line = f"{ctx.job_id} {started!r} {time.monotonic()!r}\n"
    # one write of one short line to a file opened for append: lines never interleave
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
