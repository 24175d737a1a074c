"""Wake-up latency (enqueue -> start) direct and through PgBouncer, LISTEN or poll-only.

Not a test (no timed assertions): run ``.venv/bin/python -m benchmarks.
pooler_latency`` for the numbers docs/postgres.md quotes. One in-process worker, idle; jobs
enqueued one at a time, each at a random moment after the previous one started (so arrivals
fall at any phase of the poll interval, as independent producers' do). Latency is the
job's started_at - created_at, both the database's clock (no clock skew between processes).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

import psycopg
from tests.support.pgbouncer import running_pgbouncer
from tests.support.pgserver import running_server
from tests.tasks import app

from skiplock import Client, Worker


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(worker: Worker, producer_url: str, check_url: str, jobs: int) -> list[float]:
    async def go() -> list[float]:
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.ready.wait(), 20)
        await asyncio.sleep(0.5)
        out: list[float] = []
        with Client(producer_url) as c, psycopg.connect(
                check_url, autocommit=True, options="-c search_path=skiplock") as check:
            for _ in range(jobs):
                # longer than the longest poll interval: arrivals fall at any phase of it
                await asyncio.sleep(random.uniform(0.05, 1.3))
                job = c.enqueue("noop", {})
                while True:
                    row = check.execute(
                        "SELECT extract(epoch FROM started_at - created_at) FROM jobs "
                        "WHERE id = %s AND started_at IS NOT NULL", [job]).fetchone()
                    if row:
                        out.append(float(row[0]) * 1000)
                        break
                    await asyncio.sleep(0.005)
        worker.request_stop()
        await asyncio.wait_for(task, 30)
        return out

    return asyncio.run(go())


def main(jobs: int = 60) -> None:
    with running_server() as pg, running_pgbouncer(pg) as bouncer:
        with pg.admin() as admin:
            admin.execute("CREATE DATABASE latency")
        with Client(pg.url("latency")) as c:
            c.migrate()
        direct, pooled = pg.url("latency"), bouncer.pooled(pg.url("latency"))
        modes = {
            "direct, LISTEN": Worker(app, direct),
            "PgBouncer, LISTEN direct": Worker(app, pooled, pooler=True,
                                               connection_urls={"listen": direct}),
            "PgBouncer, poll-only (poll 1 s)": Worker(app, pooled, pooler=True),
            "PgBouncer, poll-only (poll 0.2 s)": Worker(app, pooled, pooler=True,
                                                        poll_interval=0.2),
        }
        for name, worker in modes.items():
            started = time.monotonic()
            ms = measure(worker, pooled if "PgBouncer" in name else direct, direct, jobs)
            print(f"{name:36s} p50 {statistics.median(ms):7.1f} ms  "
                  f"p99 {_percentile(ms, 0.99):7.1f} ms  max {max(ms):7.1f} ms  "
                  f"({len(ms)} jobs, {time.monotonic() - started:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 60)
