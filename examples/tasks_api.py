"""The tasks this service's producers may enqueue, as typed handles, without their handlers.

The service imports only this module (and skiplock): not examples/worker.py, whose handlers
may pull in heavy dependencies (an SMTP library, image processing...). ``skiplock.declare``
turns each stub into the same kind of handle ``@app.task`` returns, so mypy checks every
enqueue against these signatures. Keep them in step with the worker's handlers (the worker's
catalogue is checked at enqueue time too, when it has started once).
"""

from __future__ import annotations

from skiplock import JobContext, declare


@declare("send_welcome", queue="mail")
def send_welcome(ctx: JobContext, email: str, name: str = "there") -> dict[str, str]:
    raise NotImplementedError  # a stub: the worker runs the real one


@declare("render_report")
def render_report(ctx: JobContext, report_id: int, fail: bool = False) -> dict[str, int]:
    raise NotImplementedError
