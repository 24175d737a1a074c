"""The worker side of the example: the real handlers.

Run it with ``skiplock worker examples.worker:app --queue default --queue mail``.
"""

from __future__ import annotations

from skiplock import App, JobContext, PermanentError

app = App()


@app.task(queue="mail", max_attempts=3)
def send_welcome(ctx: JobContext, email: str, name: str = "there") -> dict[str, str]:
    # a real service would talk to its mail provider here
    return {"to": email, "subject": f"Welcome, {name}!"}


@app.task(max_attempts=2)
async def render_report(ctx: JobContext, report_id: int, fail: bool = False) -> dict[str, int]:
    if fail:
        raise PermanentError(f"report {report_id} has no data")
    return {"report_id": report_id, "pages": report_id % 7 + 1}
