"""Version 1 of an app in a rolling deploy (tests/integration/failures/test_rolling_deploy.py):
``resize`` takes only the image id."""

from __future__ import annotations

import skiplock
from skiplock import JobContext

app = skiplock.App()


@app.task(max_attempts=3)
def resize(ctx: JobContext, image_id: int) -> dict[str, object]:
    return {"version": 1, "image_id": image_id, "worker": ctx.worker_id}
