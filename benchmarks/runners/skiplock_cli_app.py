"""The app `skiplock worker benchmarks.runners.skiplock_cli_app:app` runs in the from-spawn
end-to-end measurement (benchmarks/e2e_cli.py): one no-op task, nothing recorded in the process,
so the worker does what a user's worker does and no more (the harness's runner also counts
every call and writes a progress file)."""

from __future__ import annotations

from skiplock import App, JobContext

app = App()


@app.task
async def noop(ctx: JobContext) -> None:
    return None
