"""The app benchmarks/worker_startup.py starts: one no-op task whose first call in each worker
process appends, to $BENCH_STARTUP_FILE, the CPU (user + system, all threads) this process
has used since exec and the wall time since $BENCH_SPAWNED_AT (set just before the spawn):
what the process cost up to its first claimed job, read from inside it."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time

from skiplock import App, JobContext

app = App()
_reported = False


@app.task
async def noop(ctx: JobContext) -> None:
    global _reported
    if _reported:
        return
    _reported = True
    ru = resource.getrusage(resource.RUSAGE_SELF)
    line = {"pid": os.getpid(), "cpu_s": ru.ru_utime + ru.ru_stime,
            "wall_s": time.time() - float(os.environ["BENCH_SPAWNED_AT"]),
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "modules": len(sys.modules)}
    # once per process, a line: not worth a thread (which would add its own start-up)
    with open(os.environ["BENCH_STARTUP_FILE"], "a") as f:  # noqa: ASYNC230
        f.write(json.dumps(line) + "\n")
