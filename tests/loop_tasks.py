"""A task that reports, from inside a real `skiplock worker`, which event loop runs it and
which of the modules a worker should not need were loaded by the time it ran."""

from __future__ import annotations

import asyncio
import sys

import skiplock
from skiplock import JobContext

app = skiplock.App()

# tests/unit/test_import_weight.py's list, the parts a job can reach too.
KEPT_OFF = ("opentelemetry", "skiplock.async_client", "skiplock.adb", "skiplock.client",
            "skiplock.waiting", "skiplock.worker.probes", "fastapi", "uvicorn")


@app.task
async def facts(ctx: JobContext) -> dict[str, object]:
    loaded = sorted(m for m in sys.modules
                    if any(m == k or m.startswith(k + ".") for k in KEPT_OFF))
    return {"loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "loaded": loaded}
