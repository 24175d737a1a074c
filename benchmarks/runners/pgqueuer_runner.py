"""pgqueuer under the benchmark (peer venv): asyncpg driver, uvloop, as its own CLI runs it."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from statistics import median

import asyncpg
import uvloop
from pgqueuer import PgQueuer, Queries
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

from benchmarks.common import Recorder, emit, on_stop, paced, wait_for_go, worker_args

recorder = Recorder()


async def setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await Queries(AsyncpgDriver(conn)).install()
    await conn.close()


async def enqueue(dsn: str, jobs: int, chunk: int) -> None:
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    started = time.perf_counter()
    done = 0
    while done < jobs:
        n = min(chunk, jobs - done)
        await queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        done += n
    emit({"jobs": done, "seconds": time.perf_counter() - started})
    await conn.close()


async def work(dsn: str, out: str, batch: int, concurrency: int, latency: bool) -> None:
    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        recorder.hit(float(job.payload.decode()) if job.payload else None)

    on_stop(pgq.shutdown.set)
    recorder.progress = Path(out + ".progress")
    await wait_for_go()
    try:
        await pgq.run(batch_size=batch, dequeue_timeout=timedelta(seconds=30),
                      max_concurrent_tasks=concurrency or None)
    finally:
        recorder.dump(out)


async def produce(dsn: str, jobs: int, rate: float) -> None:
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.enqueue("noop", b"0")
    start = time.perf_counter()
    calls: list[float] = []
    async for _ in paced(jobs, rate):
        t0 = time.perf_counter()
        await queries.enqueue("noop", repr(time.time()).encode())
        calls.append(time.perf_counter() - t0)
    emit({"jobs": jobs, "seconds": time.perf_counter() - start, "call_p50": median(calls)})
    await conn.close()


def main() -> None:
    a = worker_args()
    if a.cmd == "setup":
        uvloop.run(setup(a.dsn))
    elif a.cmd == "enqueue":
        uvloop.run(enqueue(a.dsn, a.jobs, a.chunk))
    elif a.cmd == "worker":
        uvloop.run(work(a.dsn, a.out, a.batch, a.concurrency, a.latency))
    elif a.cmd == "produce":
        uvloop.run(produce(a.dsn, a.jobs, a.rate))


if __name__ == "__main__":
    main()
