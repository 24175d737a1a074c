"""Version 2 of the app in tests/rollout_v1.py: ``resize`` now requires a width (a changed
signature) and there is a new task, ``thumbnail``."""

from __future__ import annotations

import skiplock
from skiplock import JobContext

app = skiplock.App()


@app.task(max_attempts=3)
def resize(ctx: JobContext, image_id: int, width: int) -> dict[str, object]:
    return {"version": 2, "image_id": image_id, "width": width, "worker": ctx.worker_id}


@app.task(max_attempts=3)
def thumbnail(ctx: JobContext, image_id: int) -> dict[str, object]:
    return {"version": 2, "image_id": image_id, "worker": ctx.worker_id}
