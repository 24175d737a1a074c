"""procrastinate under the benchmark (peer venv): psycopg pool connector, async task."""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

import uvloop
from procrastinate import App, PsycopgConnector

from benchmarks.common import Recorder, emit, paced, wait_for_go, worker_args

recorder = Recorder()


def make_app(dsn: str, pool: int = 10) -> App:
    return App(connector=PsycopgConnector(conninfo=dsn, min_size=1, max_size=pool))


def register(app: App) -> None:
    @app.task(name="noop")
    async def noop(t: float = 0.0) -> None:
        recorder.hit(t)


async def setup(dsn: str) -> None:
    app = make_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def enqueue(dsn: str, jobs: int, chunk: int) -> None:
    app = make_app(dsn)
    register(app)
    task = app.tasks["noop"]
    async with app.open_async():
        started = time.perf_counter()
        done = 0
        while done < jobs:
            n = min(chunk, jobs - done)
            await task.batch_defer_async(*({} for _ in range(n)))
            done += n
        emit({"jobs": done, "seconds": time.perf_counter() - started})


async def work(dsn: str, out: str, concurrency: int, latency: bool) -> None:
    app = make_app(dsn, pool=concurrency + 4)
    register(app)
    async with app.open_async():
        recorder.progress = Path(out + ".progress")
        await wait_for_go()
        try:
            # SIGTERM/SIGINT: procrastinate's own handlers stop it gracefully.
            await app.run_worker_async(concurrency=concurrency, listen_notify=True,
                                       fetch_job_polling_interval=5.0,
                                       install_signal_handlers=True)
        finally:
            recorder.dump(out)


async def produce(dsn: str, jobs: int, rate: float) -> None:
    app = make_app(dsn, pool=2)
    register(app)
    task = app.tasks["noop"]
    async with app.open_async():
        await task.defer_async(t=0.0)
        start = time.perf_counter()
        calls: list[float] = []
        async for _ in paced(jobs, rate):
            t0 = time.perf_counter()
            await task.defer_async(t=time.time())
            calls.append(time.perf_counter() - t0)
        emit({"jobs": jobs, "seconds": time.perf_counter() - start, "call_p50": median(calls)})


def main() -> None:
    a = worker_args()
    if a.cmd == "setup":
        uvloop.run(setup(a.dsn))
    elif a.cmd == "enqueue":
        uvloop.run(enqueue(a.dsn, a.jobs, a.chunk))
    elif a.cmd == "worker":
        uvloop.run(work(a.dsn, a.out, a.concurrency, a.latency))
    elif a.cmd == "produce":
        uvloop.run(produce(a.dsn, a.jobs, a.rate))


if __name__ == "__main__":
    main()
