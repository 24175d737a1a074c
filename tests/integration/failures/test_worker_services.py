"""Kill a service: each of the worker's services made to raise, in a real worker on a real Postgres.

A service that fails once is restarted and the worker carries on; one that keeps failing takes
the worker down (WorkerFailed; the CLI exits non-zero) after releasing what it holds. Never a
worker that keeps claiming jobs it cannot finish.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from skiplock import Client
from skiplock.worker import Worker, WorkerFailed
from tests import tasks
from tests.support.invariants import assert_invariants

Sql = Callable[..., list[tuple[Any, ...]]]
ROOT = Path(__file__).resolve().parents[3]
SERVICES = ["claimer", "completer", "lease_renewer", "listener", "rescuer", "registry",
            "scheduler", "monitor", "executor"]


def _inject(worker: Worker, name: str, fail: Callable[[int], bool]) -> dict[str, int]:
    """Make service ``name`` raise on the calls ``fail(n)`` picks (n counts from 1)."""
    calls = {"n": 0}
    if name == "executor":
        target, attr = worker.executor, "_execute"
    else:
        target, attr = worker.services[name], "run_once"
    original = getattr(target, attr)

    def should_fail() -> None:
        calls["n"] += 1
        if fail(calls["n"]):
            raise RuntimeError(f"injected failure #{calls['n']} in {name}")

    if inspect.iscoroutinefunction(original):
        async def patched(*a: Any, **kw: Any) -> Any:
            should_fail()
            return await original(*a, **kw)
    else:
        def patched(*a: Any, **kw: Any) -> Any:  # type: ignore[misc]
            should_fail()
            return original(*a, **kw)
    setattr(target, attr, patched)
    return calls


def _worker(database_url: str) -> Worker:
    return Worker(tasks.app, database_url, concurrency=4, lease_seconds=2, poll_interval=0.1,
                  shutdown_grace=2)


def _first_call_from_the_service(name: str) -> int:
    # The worker's start-up makes one registry heartbeat and one rescue itself, outside the
    # supervisor.
    return 2 if name in ("registry", "rescuer") else 1


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_that_fails_once_is_restarted(database_url: str, audited: Sql,
                                                name: str) -> None:
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(20)]

    async def main() -> Worker:
        w = _worker(database_url)
        first = _first_call_from_the_service(name)
        calls = _inject(w, name, lambda n: n == first)
        run = asyncio.create_task(w.run())
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            done = audited("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0]
            if done == len(ids) and calls["n"] > first:
                break
            await asyncio.sleep(0.1)
        w.request_stop()
        await run  # raises WorkerFailed if the single failure took the worker down
        assert calls["n"] > first, f"{name} was never called again after its failure"
        return w

    w = asyncio.run(main())
    assert w.failure is None
    if name != "executor":  # the executor is not a loop: a job task's failure is counted
        assert w.supervisor.restarts[name] == 1
    assert_invariants(audited, ids, expected_states=dict.fromkeys(ids, "succeeded"))


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_that_keeps_failing_stops_the_worker(database_url: str, audited: Sql,
                                                       name: str) -> None:
    with Client(database_url) as c:
        for i in range(20):
            c.enqueue("add", {"a": i, "b": 1})

    async def main() -> tuple[Worker, float]:
        w = _worker(database_url)
        w.supervisor.max_restarts = 2  # the default (5 in 60 s) only makes this test slower
        first = _first_call_from_the_service(name)
        _inject(w, name, lambda n: n >= first)
        started = time.monotonic()
        with pytest.raises(WorkerFailed, match=f"service {name} failed 3 times"):
            await asyncio.wait_for(w.run(), 60)
        return w, time.monotonic() - started

    w, took = asyncio.run(main())
    assert took < 30, f"the worker took {took:.1f}s to give up"
    # It released what it held: nothing is left running under its id, nothing waits for a lease.
    held = audited("SELECT id FROM jobs WHERE locked_by = %s", w.worker_id)
    assert held == [], f"jobs still held by the failed worker: {held}"
    assert audited("SELECT count(*) FROM workers WHERE id = %s", w.worker_id) == [(0,)]
    # Every job is either done or back in the queue for another worker.
    states = {s for (s,) in audited("SELECT DISTINCT state::text FROM jobs")}
    assert states <= {"succeeded", "queued"}, states
    if name == "executor":  # those attempts failed, counted, with the reason
        errors = audited("SELECT last_error FROM jobs WHERE attempts = 1 AND state = 'queued'")
        assert errors and all(e.startswith("the worker failed around the handler: RuntimeError")
                              for (e,) in errors), errors


def test_the_cli_exits_non_zero_when_a_service_keeps_failing(database_url: str,
                                                            audited: Sql) -> None:
    """A real `skiplock worker` process whose completer always raises: exit 1, with the reason
    on stderr, its jobs released, within the restart budget (5 failures in 60 s)."""
    with Client(database_url) as c:
        for i in range(5):
            c.enqueue("add", {"a": i, "b": 1})
    script = (
        "import sys\n"
        "from skiplock.worker.completer import Completer\n"
        "async def boom(self): raise RuntimeError('injected completer failure')\n"
        "Completer.run_once = boom\n"
        "from skiplock.cli import main\n"
        f"sys.exit(main(['--database-url', {database_url!r}, 'worker', 'tests.tasks:app',"
        " '--lease-seconds', '2', '--poll-interval', '0.1', '--shutdown-grace', '1']))\n"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=90, cwd=ROOT,
                          env={"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", "PATH": "/usr/bin:/bin"})
    took = time.monotonic() - started
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert "service completer failed 6 times" in proc.stderr, proc.stderr[-3000:]
    assert took < 60, took
    assert audited("SELECT count(*) FROM jobs WHERE state = 'running'") == [(0,)]
    assert audited("SELECT count(*) FROM jobs WHERE state = 'queued'") == [(5,)]


def test_the_cli_leaves_when_a_service_ignores_its_cancellation(database_url: str,
                                                               audited: Sql) -> None:
    """A service that swallows its cancellation (the 3.11 wait_for bug, or a handler-like
    loop): SIGTERM still ends a real `skiplock worker` promptly, its jobs written and
    released, the stuck service named in the log. asyncio.run's own shutdown would wait for
    that task again, for ever."""
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(3)]
    script = (
        "import asyncio, sys\n"
        "from skiplock.worker.cancel_watcher import CancelWatcher\n"
        "async def stubborn(self):\n"
        "    while True:\n"
        "        try:\n"
        "            await asyncio.sleep(3600)\n"
        "        except asyncio.CancelledError:\n"
        "            pass\n"
        "CancelWatcher.run = stubborn\n"
        "from skiplock.cli import main\n"
        f"sys.exit(main(['--database-url', {database_url!r}, 'worker', 'tests.tasks:app',"
        " '--poll-interval', '0.1', '--shutdown-grace', '1']))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env={"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}",
                                           "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = audited("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0]
            if done == len(ids):
                break
            time.sleep(0.1)
        assert done == len(ids), done
        started = time.monotonic()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, err[-3000:])
    assert "service cancel_watcher did not stop within 2s" in err, err[-3000:]
    assert "in stubborn" in err, err[-3000:]  # where it waits
    assert took < 10, took  # the drain (nothing running) + the 2 s wait + the last writes
    assert audited("SELECT count(*) FROM workers") == [(0,)]
