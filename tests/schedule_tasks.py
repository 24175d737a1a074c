"""An app with periodic jobs for the schedule tests (tests/integration/test_schedules*.py).

The schedules come from SKIPLOCK_TEST_SCHEDULES, a JSON list of ``app.periodic`` keyword
arguments (each with its ``name``), so each test declares the ones it needs."""

from __future__ import annotations

import json
import os

import skiplock
from skiplock import JobContext

app = skiplock.App()


@app.task(max_attempts=1)
def tick(ctx: JobContext, label: str = "") -> str:
    return label


for _spec in json.loads(os.environ.get("SKIPLOCK_TEST_SCHEDULES", "[]")):
    app.periodic(**_spec)(tick)
