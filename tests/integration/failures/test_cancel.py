"""Cancelling a running job: the request is stored; the worker running it learns it (NOTIFY, a
poll while LISTEN is down, its heartbeat's answer) and stops the handler; after the grace the
job ends cancelled whatever the handler does. A cancelled job stores no result, and a worker
that dies after the request does not get the job re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from skiplock import Client, Worker
from skiplock.db import WorkerConnection
from skiplock.worker.lease_renewer import LeaseRenewer
from tests import control_tasks
from tests.control_tasks import events
from tests.integration.failures.conftest import LEASE, wait_workers_ready
from tests.support.chaos import audit, state_of
from tests.support.invariants import assert_invariants
from tests.support.toxiproxy import Proxy
from tests.support.waits import until as _until
from tests.support.waits import wait_until

Sql = Any
APP = "tests.control_tasks:app"
GRACE = 2.0
ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "5",
        "--cancel-grace", str(GRACE), "--concurrency", "4")


def _started(marker: Path, job: int) -> float:
    return next((at for e, j, _, at in events(marker) if e == "start" and j == job), 0.0)


def _saw_stop(marker: Path, job: int) -> float:
    return next((at for e, j, _, at in events(marker) if e == "saw-stop" and j == job), 0.0)


@contextlib.asynccontextmanager
async def _running(w: Worker) -> AsyncIterator[Worker]:
    """An in-process worker, ready, for the block; stopped (drained) after it."""
    run = asyncio.create_task(w.run())
    try:
        await asyncio.wait_for(w.ready.wait(), 30)
        yield w
    finally:
        w.request_stop()
        await run


async def _cancel_one(c: Client, sql: Sql, marker: Path, tmp_path: Path,
                      within: float) -> float:
    """Cancel one running async job; seconds from the request to the handler seeing it."""
    job = c.enqueue("async_hold", {"marker": str(marker), "hold": str(tmp_path / "never")})
    assert await _until(lambda: _started(marker, job), 30)
    asked = time.monotonic()
    assert c.cancel(job) == "requested"
    assert await _until(lambda: _saw_stop(marker, job), within)
    assert await _until(lambda: state_of(sql, job)[0] == "cancelled", GRACE + 10)
    return _saw_stop(marker, job) - asked


def _history(sql: Sql, job: int) -> list[str]:
    ((errors,),) = sql("SELECT errors FROM jobs WHERE id = %s", job)
    return [str(e["error"]) for e in errors]


@pytest.mark.parametrize("task", ["sync_hold", "async_hold"])
def test_cancel_a_running_job_stops_its_handler(database_url: str, audited: Sql,
                                                spawn_worker: Any, marker: Path,
                                                tmp_path: Path, task: str) -> None:
    spawn_worker(APP, *ARGS)
    wait_workers_ready(audited, 1)
    latencies = []
    with Client(database_url) as c:
        for _ in range(5):
            job = c.enqueue(task, {"marker": str(marker), "hold": str(tmp_path / "never")})
            wait_until(lambda: _started(marker, job), 30, "the handler to start")
            asked = time.monotonic()
            assert c.cancel(job, "test") == "requested"
            wait_until(lambda: _saw_stop(marker, job), 5, "the handler to see the cancel")
            latencies.append(_saw_stop(marker, job) - asked)
            wait_until(lambda: state_of(audited, job)[0] == "cancelled", GRACE + 5,
                       "the job to end cancelled")
            assert audited("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
            history = _history(audited, job)
            assert len(history) == 1 and history[0].startswith("cancelled as requested by client ")
            assert "(test)" in history[0], history
            # Once: never re-run after the cancel.
            assert [e for e in events(marker) if e[1] == job and e[0] == "start"] == [
                ("start", job, 1, _started(marker, job))]
            assert [t[1] for t in audit(audited, job)] == ["queued", "running", "cancelled"]
    print(f"\n[cancel via NOTIFY] {task}: request -> handler sees it p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    # NOTIFY: well within the one second the issue asks for.
    assert max(latencies) < 1.0, latencies
    assert_invariants(audited)


@pytest.mark.parametrize("task", ["sync_hold", "async_hold"])
def test_a_handler_that_ignores_the_cancel_is_abandoned_after_the_grace(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path, tmp_path: Path,
        task: str) -> None:
    hold = tmp_path / "hold"
    w = spawn_worker(APP, *ARGS[:-1], "1")  # one slot: its accounting is visible
    wait_workers_ready(audited, 1)
    stubborn = ({"cooperative": False} if task == "sync_hold" else {"ignore_cancel": True})
    with Client(database_url) as c:
        job = c.enqueue(task, {"marker": str(marker), "hold": str(hold), **stubborn})
        wait_until(lambda: _started(marker, job), 30, "the handler to start")
        asked = time.monotonic()
        assert c.cancel(job) == "requested"
        wait_until(lambda: state_of(audited, job)[0] == "cancelled", GRACE + 10,
                   "the job to end cancelled after the grace")
        took = time.monotonic() - asked
        assert GRACE - 0.2 <= took < GRACE + 5, took
        history = _history(audited, job)
        assert "did not stop within 2s and was abandoned" in history[-1], history
        assert audited("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
        # The abandoned handler still holds the only slot: the next job waits for it.
        nxt = c.enqueue("quick", {"marker": str(marker), "seconds": 0})
        time.sleep(1.0)
        assert state_of(audited, nxt)[0] == "queued"
        hold.touch()  # the stubborn handler returns; its late result is discarded
        wait_until(lambda: state_of(audited, nxt)[0] == "succeeded", 30, "the next job")
    assert state_of(audited, job)[0] == "cancelled"
    assert audited("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
    assert "abandoned handler returned" in w.output()
    assert_invariants(audited)


def test_cancel_reaches_the_handler_without_listen(database_url: str, audited: Sql,
                                                   proxy: Proxy, marker: Path,
                                                   tmp_path: Path) -> None:
    """LISTEN unavailable (its link cut, as behind a transaction pooler): the worker polls for
    cancel requests while it cannot listen."""
    proxy.disable()  # the listen connection never gets through
    latencies: list[float] = []

    async def main() -> None:
        w = Worker(control_tasks.app, database_url, concurrency=2, lease_seconds=30,
                   poll_interval=0.2, cancel_grace=GRACE,
                   connection_urls={"listen": proxy.url(database_url)})
        async with _running(w):
            assert not w.state.listening
            with Client(database_url) as c:
                for _ in range(5):
                    latencies.append(await _cancel_one(c, audited, marker, tmp_path, 5))

    asyncio.run(main())
    print(f"\n[cancel without LISTEN] poll 0.2 s: request -> handler sees it p50 "
          f"{statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert all(0 < x < 1.0 for x in latencies), latencies
    assert_invariants(audited)


def test_the_heartbeat_answer_carries_the_cancel(database_url: str, audited: Sql) -> None:
    """The lease heartbeat alone (no LISTEN, no poll) tells the worker about the request."""
    seen: list[tuple[int, str]] = []

    async def main() -> None:
        w = Worker(control_tasks.app, database_url, concurrency=2, lease_seconds=30)
        with Client(database_url) as c:
            job = c.enqueue("quick", {"marker": "/dev/null", "seconds": 0})
        db = WorkerConnection(database_url, schema="skiplock", connect_timeout=5,
                              statement_timeout=5, application_name="test")
        try:
            (claimed,) = await db.claim(["default"], 1, w.worker_id, 30)
            from skiplock.worker.state import Run
            w.state.owned[job] = Run(claimed, time.monotonic())
            renewer = LeaseRenewer(w.state, db, 10, lambda i, why: seen.append((i, why)))
            assert await renewer.run_once() == 1 and seen == []
            with Client(database_url) as c:
                assert c.cancel(job, by="ops") == "requested"
            assert await renewer.run_once() == 1
            assert seen == [(job, "ops")]
        finally:
            await db.close()

    asyncio.run(main())


def test_cancel_racing_completion_ends_in_exactly_one_terminal_state(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path) -> None:
    """Cancels sent at random moments around each job's end: every job ends either succeeded
    with its one result, or cancelled with none; never both, never stuck."""
    spawn_worker(APP, *ARGS[:-1], "8")
    wait_workers_ready(audited, 1)
    rng = random.Random(11)
    with Client(database_url) as c:
        ids = [c.enqueue("quick", {"marker": str(marker), "seconds": rng.uniform(0, 0.3)})
               for _ in range(60)]
        for job in ids:
            time.sleep(rng.uniform(0, 0.02))
            c.cancel(job)
    wait_until(lambda: not audited("SELECT 1 FROM jobs WHERE state IN ('queued', 'running')"),
               60, "every job terminal")
    rows = audited("SELECT j.id, j.state::text, count(r.job_id) FROM jobs AS j "
                   "LEFT JOIN results AS r ON r.job_id = j.id GROUP BY j.id, j.state")
    outcome = {state for _, state, _ in rows}
    assert outcome <= {"succeeded", "cancelled"}, rows
    for job, state, results in rows:
        assert results == (1 if state == "succeeded" else 0), (job, state, results)
        ends = [t[1] for t in audit(audited, job) if t[1] in ("succeeded", "cancelled")]
        assert ends == [state], (job, ends)
    print(f"\n[cancel racing completion] {len(ids)} jobs: "
          f"{sum(1 for r in rows if r[1] == 'cancelled')} cancelled, "
          f"{sum(1 for r in rows if r[1] == 'succeeded')} succeeded")
    assert_invariants(audited, ids)


def test_a_worker_killed_after_the_cancel_request_does_not_get_the_job_rerun(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path,
        tmp_path: Path) -> None:
    hold = tmp_path / "never"
    a = spawn_worker(APP, *ARGS, "--cancel-grace", "600", name="doomed")
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        job = c.enqueue("sync_hold", {"marker": str(marker), "hold": str(hold),
                                      "cooperative": False})
        wait_until(lambda: _started(marker, job), 30, "the handler to start")
        assert c.cancel(job) == "requested"
        a.kill()  # before the (long) grace ends: nobody wrote the job's end
        assert state_of(audited, job)[0] == "running"
        spawn_worker(APP, *ARGS, name="survivor")
        wait_until(lambda: state_of(audited, job)[0] == "cancelled", LEASE * 10,
                   "the rescuer to end the job cancelled")
    history = _history(audited, job)
    assert "lease expired" in history[-1] and "cancelled as requested by client" in history[-1]
    assert [e for e in events(marker) if e[0] == "start"] == [
        ("start", job, 1, _started(marker, job))]  # never re-run
    assert_invariants(audited, [job], expected_states={job: "cancelled"})


def test_a_cancel_stored_before_the_completion_is_written_wins(database_url: str,
                                                               audited: Sql) -> None:
    """Deterministic race: the handler has returned and its outcome waits to be written (the
    write connection held) when the cancel is stored: the job ends cancelled, no result."""

    async def main() -> int:
        w = Worker(control_tasks.app, database_url, concurrency=2, lease_seconds=30,
                   poll_interval=0.2, cancel_grace=GRACE)
        async with _running(w):
            async with w._write_db._turn:  # the completer cannot write while we hold it
                with Client(database_url) as c:
                    job = c.enqueue("quick", {"marker": "/dev/null", "seconds": 0})
                    assert await _until(lambda: len(w.state.outcomes) == 1, 30)
                    assert await asyncio.to_thread(c.cancel, job) == "requested"
            assert await _until(lambda: state_of(audited, job)[0] != "running", 30)
            return job

    job = asyncio.run(main())
    assert state_of(audited, job) == ("cancelled", 1)
    assert audited("SELECT count(*) FROM results WHERE job_id = %s", job) == [(0,)]
    assert "the handler finished and its result was discarded" in _history(audited, job)[-1]
    assert_invariants(audited, [job], expected_states={job: "cancelled"})


def test_a_forged_or_garbled_notify_stops_nothing(database_url: str, audited: Sql,
                                                  spawn_worker: Any, marker: Path,
                                                  tmp_path: Path) -> None:
    """Anyone who can connect may NOTIFY: a notification alone never stops a job (the stored
    request is read back first), and no payload can take the listener down."""
    hold = tmp_path / "hold"
    w = spawn_worker(APP, *ARGS)
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        job = c.enqueue("async_hold", {"marker": str(marker), "hold": str(hold)})
        wait_until(lambda: _started(marker, job), 30, "the handler to start")
        for payload in ("²", "cancel:²", "cancel:" + "9" * 5000, "cancel:", "cancel:-1",
                        "cancel:1e3", f"cancel:{job}", f"cancel: {job}", "pause:", "\x7f",
                        "x" * 7000):
            audited("SELECT pg_notify('skiplock_control', %s)", payload)
        time.sleep(1.5)
        assert not _saw_stop(marker, job), events(marker)
        assert state_of(audited, job) == ("running", 1)
        hold.touch()
        wait_until(lambda: state_of(audited, job)[0] == "succeeded", 30, "the job to succeed")
    assert w.proc.poll() is None, w.output()[-3000:]
    assert "service listener failed" not in w.output()
    assert_invariants(audited, [job], expected_states={job: "succeeded"})


def test_an_abandoned_thread_keeps_its_slot_when_its_job_comes_back(
        database_url: str, audited: Sql, spawn_worker: Any, marker: Path) -> None:
    """A timed-out sync job retried on the same worker while its first thread still runs: the
    retry must not hide the busy thread (two slots, both taken), so a third job waits."""
    spawn_worker(APP, *ARGS[:-1], "2", "--cancel-grace", "0.5")
    wait_workers_ready(audited, 1)
    with Client(database_url) as c:
        slow = c.enqueue("sync_slow", {"marker": str(marker), "cooperative": False,
                                       "seconds": 6})
        # attempt 2 runs while attempt 1's thread is still busy (1 s deadline + 0.5 s grace)
        wait_until(lambda: [e for e in events(marker) if e[:3] == ("start", slow, 2)], 20,
                   "the retry to start on the same worker")
        other = c.enqueue("quick", {"marker": str(marker), "seconds": 0})
        # Not even claimed while both threads are busy (a claim into a slot that is not
        # free would hold the job running behind the busy thread, or run a cancelled one).
        looked = 0
        while not [e for e in events(marker) if e[:3] == ("end", slow, 1)]:
            state = state_of(audited, other)[0]
            if [e for e in events(marker) if e[:3] == ("end", slow, 1)]:
                break  # the thread returned between the two looks
            assert state == "queued", "claimed while both slots were taken"
            looked += 1
            time.sleep(0.05)
        assert looked > 10, looked
        wait_until(lambda: state_of(audited, other)[0] == "succeeded", 30, "the other job")
    assert_invariants(audited)


def test_a_silently_cut_listen_link_falls_back_to_the_heartbeat(
        database_url: str, audited: Sql, proxy: Proxy, marker: Path, tmp_path: Path) -> None:
    """The LISTEN link blackholed by Toxiproxy after it was set up (bytes swallowed, the TCP
    session kept: the worker still believes it listens, so it does not poll every interval):
    the cancel still reaches the handler, through the lease heartbeat's answer (every lease/3)
    or the watcher's slow look (every 5 s), whichever comes first."""
    latencies: list[float] = []

    async def main() -> None:
        w = Worker(control_tasks.app, database_url, concurrency=2, lease_seconds=3,
                   poll_interval=0.2, cancel_grace=GRACE,
                   connection_urls={"listen": proxy.url(database_url)})
        async with _running(w):
            assert await _until(lambda: w.state.listening, 30)
            with proxy.toxic("timeout", stream="downstream", timeout=0), \
                    proxy.toxic("timeout", stream="upstream", timeout=0, name="up"):
                with Client(database_url) as c:
                    for _ in range(3):
                        latencies.append(await _cancel_one(c, audited, marker, tmp_path, 15))
                assert w.state.listening  # it never noticed: the fallback did the work

    asyncio.run(main())
    print(f"\n[cancel, LISTEN silently cut] heartbeat every 1 s: request -> handler sees it "
          f"{', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")
    # within a heartbeat (1 s) or the slow look (5 s), with room for a busy machine
    assert all(0 < x < 6.0 for x in latencies), latencies
    assert_invariants(audited)
