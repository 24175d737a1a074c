"""Skiplock under the benchmark: the same Worker and Client a user runs (project venv)."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

import psycopg

from benchmarks.common import Recorder, emit, on_stop, paced_sync, wait_for_go, worker_args
from skiplock import App, Client, collector, eventloop
from skiplock.db import Database
from skiplock.sql import queries
from skiplock.worker import Worker

app = App()
recorder = Recorder()


@app.task
async def noop(ctx: object, t: float = 0.0) -> None:
    recorder.hit(t)


def setup(dsn: str) -> None:
    with Database(dsn) as db:
        db.migrate()


def enqueue(dsn: str, jobs: int, chunk: int) -> None:
    with Client(dsn) as client:
        started = time.perf_counter()
        done = 0
        while done < jobs:
            n = min(chunk, jobs - done)
            done += client.enqueue_many({"task": "noop", "args": {}} for _ in range(n))
        emit({"jobs": done, "seconds": time.perf_counter() - started})


def copy_ceiling(dsn: str, jobs: int, chunk: int) -> None:
    """The raw ceiling of enqueue_many: its own COPY statement into the same table, a chunk
    per transaction as it sends them, of rows rendered once (the row enqueue_many wrote for
    the same job, read back): the server's cost with no client work per job. The bulk
    enqueue figure is reported against this (the issue's 85 % target)."""
    with Client(dsn) as client:
        client.enqueue_many([{"task": "noop", "args": {}}])
    with psycopg.connect(dsn, autocommit=True, options="-c search_path=skiplock") as conn:
        row = conn.execute("SELECT queue, task, args::text, priority, max_attempts FROM jobs "
                           "LIMIT 1").fetchone()
        assert row is not None
        line = "\t".join(str(v) for v in row) + "\t\\N\t\\N\n"  # no trace, no key
        rendered = (line * chunk).encode()
        started = time.perf_counter()
        done = 0
        while done < jobs:
            n = min(chunk, jobs - done)
            with conn.transaction(), conn.cursor().copy(queries()["copy_jobs"]) as copy:
                copy.write(rendered if n == chunk else (line * n).encode())
            done += n
        emit({"jobs": done, "seconds": time.perf_counter() - started})


async def work(dsn: str, out: str, concurrency: int, latency: bool) -> None:
    worker = Worker(app, dsn, concurrency=concurrency, poll_interval=1.0)
    on_stop(worker.request_stop)
    # Open the connections before the clock starts, as the peers do.
    for conn in (worker._claim_db, worker._write_db, worker._listen_db):
        await conn._get()
    collector.settle_for_work()  # as `skiplock worker` does once its Worker is made
    recorder.progress = Path(out + ".progress")
    await wait_for_go()
    try:
        await worker.run()
    finally:
        recorder.dump(out)


def produce(dsn: str, jobs: int, rate: float) -> None:
    with Client(dsn) as client:
        client.enqueue("noop", {"t": 0.0})  # warm the pool and the catalogue
        start = time.perf_counter()
        calls: list[float] = []
        for _ in paced_sync(jobs, rate):
            t0 = time.perf_counter()
            client.enqueue("noop", {"t": time.time()})
            calls.append(time.perf_counter() - t0)
        emit({"jobs": jobs, "seconds": time.perf_counter() - start, "call_p50": median(calls)})


def main() -> None:
    a = worker_args()
    if a.cmd == "setup":
        setup(a.dsn)
    elif a.cmd == "enqueue":
        enqueue(a.dsn, a.jobs, a.chunk)
    elif a.cmd == "copy-ceiling":
        copy_ceiling(a.dsn, a.jobs, a.chunk)
    elif a.cmd == "worker":
        # the loop `skiplock worker` runs by default (auto: uvloop when installed), as the
        # peers' runners run theirs
        eventloop.run(work(a.dsn, a.out, a.concurrency, a.latency), "auto")
    elif a.cmd == "produce":
        produce(a.dsn, a.jobs, a.rate)


if __name__ == "__main__":
    main()
