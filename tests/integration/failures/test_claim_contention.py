"""Contention on the claim query: N concurrent claimers (2, 8, 32) on one queue, each on its own
connection, through the worker's own database boundary (claim, rescue, fenced completion).

A benchmark, not a timed assertion: claim latency p50/p99 per N is printed (and recorded as a
test property). Asserted: no deadlock (pg_stat_database.deadlocks unchanged, no deadlock error
seen by any claimer) and no double claim (every job claimed exactly once, at attempt 1)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path

import pytest

from skiplock.db import WorkerConnection
from skiplock.errors import SkiplockError
from tests.support.invariants import assert_invariants

JOBS_PER_CLAIMER = 12
MIN_JOBS = 200
RESULTS = Path(os.environ.get("SKIPLOCK_BENCH_OUT", "/tmp/skiplock-contention.json"))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _claimer(url: str, n: int, latencies: list[float], claimed: list[int],
                   errors: list[str], deadline: float) -> None:
    conn = WorkerConnection(url, schema="skiplock", connect_timeout=5, statement_timeout=30,
                            application_name="skiplock-worker-claim")
    worker_id = f"bench-{n}:{os.getpid()}:{id(latencies) % 10_000}"
    try:
        empty = 0
        while time.monotonic() < deadline and empty < 3:
            if len(latencies) % 10 == 0:
                await conn.rescue_expired(["bench"])
            started = time.perf_counter()
            try:
                jobs = await conn.claim(["bench"], 1, worker_id, 30)
            except SkiplockError as exc:
                errors.append(str(exc))
                continue
            latencies.append(time.perf_counter() - started)
            if not jobs:
                empty += 1
                continue
            empty = 0
            claimed.extend(j.id for j in jobs)
            done = await conn.complete_succeeded([(j.id, j.attempt, f'{{"by": "{worker_id}"}}')
                                                  for j in jobs], worker_id)
            assert done == dict.fromkeys((j.id for j in jobs), "succeeded")
    finally:
        await conn.close()


async def _run(url: str, n: int, deadline: float) -> tuple[list[float], list[int], list[str]]:
    per: list[list[float]] = [[] for _ in range(n)]
    claimed: list[int] = []
    errors: list[str] = []
    await asyncio.gather(*(_claimer(url, i, per[i], claimed, errors, deadline) for i in range(n)))
    return [x for p in per for x in p], claimed, errors


@pytest.mark.parametrize("n", [2, 8, 32])
def test_claim_contention(database_url, audited, capsys, record_property, n: int) -> None:
    sql = audited
    jobs = max(MIN_JOBS, JOBS_PER_CLAIMER * n)
    sql("INSERT INTO jobs (queue, task, args) SELECT 'bench', 'noop', '{}' "
        "FROM generate_series(1, %s)", jobs)
    deadlocks_before = sql("SELECT deadlocks FROM pg_stat_database "
                           "WHERE datname = current_database()")[0][0]
    started = time.monotonic()
    latencies, claimed, errors = asyncio.run(_run(database_url, n, started + 90))
    wall = time.monotonic() - started

    assert not [e for e in errors if "deadlock" in e.lower()], errors[:5]
    assert errors == [], errors[:5]
    deadlocks_after = sql("SELECT deadlocks FROM pg_stat_database "
                          "WHERE datname = current_database()")[0][0]
    assert deadlocks_after == deadlocks_before, "the claim path deadlocked"
    assert len(claimed) == len(set(claimed)) == jobs, "a job was claimed twice or never"
    assert sql("SELECT count(*) FROM jobs WHERE attempts <> 1") == [(0,)]
    assert_invariants(sql, expected_states={i: "succeeded" for i in claimed})

    ms = [x * 1000 for x in latencies]
    figures = {"claimers": n, "jobs": jobs, "claims": len(ms),
               "p50_ms": round(_quantile(ms, 0.50), 2), "p99_ms": round(_quantile(ms, 0.99), 2),
               "mean_ms": round(statistics.fmean(ms), 2), "jobs_per_s": round(jobs / wall, 1)}
    for key, value in figures.items():
        record_property(key, value)
    existing = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    existing[str(n)] = figures
    RESULTS.write_text(json.dumps(existing, indent=2))
    with capsys.disabled():
        print(f"\n[contention] N={n:>2} claimers: {jobs} jobs, claim latency "
              f"p50={figures['p50_ms']} ms p99={figures['p99_ms']} ms "
              f"({figures['jobs_per_s']} jobs/s)")


def test_real_worker_processes_contend_without_deadlock(database_url, audited, spawn_worker,
                                                        capsys) -> None:
    """Eight real worker processes (4 slots each: claims, rescues, heartbeats and batched fenced
    completions all at once) drain one queue: no deadlock, no double claim, nothing lost."""
    from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
    from tests.support.waits import wait_until

    sql = audited
    n_workers, jobs = 8, 400
    deadlocks_before = sql("SELECT deadlocks FROM pg_stat_database "
                           "WHERE datname = current_database()")[0][0]
    workers = [spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "4",
                            name=f"contend-{i}") for i in range(n_workers)]
    wait_workers_ready(sql, n_workers, timeout=120)
    started = time.monotonic()
    sql("INSERT INTO jobs (task, args) SELECT 'add', jsonb_build_object('a', g, 'b', 1) "
        "FROM generate_series(1, %s) AS g", jobs)
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] == jobs,
               120, f"{jobs} jobs to be done by {n_workers} workers")
    wall = time.monotonic() - started
    assert sql("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
               )[0][0] == deadlocks_before
    for w in workers:
        assert "deadlock" not in w.output().lower(), w.output()[-2000:]
    assert sql("SELECT count(*) FROM jobs WHERE attempts <> 1") == [(0,)]
    per_worker = dict(sql("SELECT split_part(locked_by, ':', 1), count(*) FROM public.job_audit "
                          "WHERE new_state = 'running' GROUP BY 1"))
    assert sum(per_worker.values()) == jobs
    assert_invariants(sql, expected_states=dict.fromkeys(
        [r[0] for r in sql("SELECT id FROM jobs")], "succeeded"))
    assert sql("SELECT count(*) FROM results WHERE (result->>'sum')::int <> "
               "(SELECT (args->>'a')::int + 1 FROM jobs WHERE id = job_id)") == [(0,)]
    with capsys.disabled():
        print(f"\n[contention] {n_workers} worker processes x 4 slots: {jobs} jobs in {wall:.1f}s; "
              f"claims per worker {sorted(per_worker.values())}")
    for w in workers:
        w.terminate()
