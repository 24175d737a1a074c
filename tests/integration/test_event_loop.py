"""The worker's event loop (skiplock/eventloop.py): uvloop by default when installed, the
standard loop with SKIPLOCK_EVENT_LOOP=asyncio or --event-loop asyncio; the start-up log line
names it, jobs run on it, and SIGTERM drains and exits 0 on either. The second-signal and
cancel suites (tests/integration/failures) run on the default loop, uvloop where installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from skiplock import Client
from tests.conftest import WorkerProcess
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]

uvloop = pytest.importorskip("uvloop")  # a default dependency on Linux


@pytest.mark.parametrize(("args", "env", "loop"), [
    ((), {}, "uvloop"),  # auto, the default
    (("--event-loop", "asyncio"), {}, "asyncio"),
    ((), {"SKIPLOCK_EVENT_LOOP": "asyncio"}, "asyncio"),
    (("--event-loop", "uvloop"), {"SKIPLOCK_EVENT_LOOP": "asyncio"}, "uvloop"),  # flag wins
])
def test_the_chosen_loop_runs_the_jobs(database_url: str, sql: Sql,
                                       spawn_worker: Callable[..., WorkerProcess],
                                       args: tuple[str, ...], env: dict[str, str],
                                       loop: str) -> None:
    w = spawn_worker("tests.loop_tasks:app", "--poll-interval", "0.2", *args, env=env)
    with Client(database_url) as c:
        job = c.enqueue("facts", {})
        result = c.wait(job, timeout=60)
    # The job's loop, and a job's path pulled in none of the parts a worker does not use.
    assert result == {"loop": loop, "loaded": []}
    assert f"loop={loop}" in w.output()
    assert w.terminate() == 0, w.output()[-3000:]
    assert "stopping: no new claims" in w.output()


def test_an_unknown_loop_is_refused(database_url: str,
                                    spawn_worker: Callable[..., WorkerProcess]) -> None:
    w = spawn_worker("tests.loop_tasks:app", env={"SKIPLOCK_EVENT_LOOP": "trio"})
    assert w.proc.wait(timeout=30) == 2
    wait_until(lambda: "SKIPLOCK_EVENT_LOOP" in w.output(), 5, "the error naming the setting")
