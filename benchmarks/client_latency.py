"""Producer latency: enqueue with AsyncClient vs Client, and wait() from a job's completion
to the waiter's return (p50/p99), with the completion NOTIFY and with polling only.

    .venv/bin/python -m benchmarks.client_latency [--enqueues 500] [--waits 200]

Starts its own PostgreSQL. Enqueue: one job per call, one after another (the latency a request
handler sees), validate=False so that both measure the same statement, the two clients in
alternating blocks of 50 calls. Wait: a waiter waits
for a queued job while another connection finishes it (an UPDATE like a worker's completion,
autocommit); the clock starts before that statement is sent, so its round trip is included.
Prints a table and writes artifacts/bench/client_latency.json. Bounded: 30 s per wait.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from typing import Any

import psycopg

from benchmarks.common import latency_summary, report_latencies
from benchmarks.local_support import migrated_server
from skiplock import AsyncClient, Client

FINISH = ("WITH d AS (UPDATE skiplock.jobs SET state = 'succeeded', finished_at = now() "
          "WHERE id = %s RETURNING id) INSERT INTO skiplock.results (job_id, result) "
          "SELECT id, '{\"ok\": true}' FROM d")


def enqueue_both(url: str, n: int, block: int = 50) -> tuple[list[float], list[float]]:
    """Client and AsyncClient enqueue latencies, measured in alternating blocks of ``block``
    calls: on a shared machine the load drifts, and alternating spreads that drift over both."""
    sync_out: list[float] = []
    async_out: list[float] = []
    runner = asyncio.Runner()

    async def open_async() -> AsyncClient:
        return AsyncClient(url, validate=False)

    async def async_block(client: AsyncClient, count: int) -> None:
        for i in range(count):
            t = time.perf_counter()
            await client.enqueue("bench", {"i": i})
            async_out.append(time.perf_counter() - t)

    aclient = runner.run(open_async())
    try:
        with Client(url, validate=False) as client:
            client.enqueue("bench", {"i": -1})  # first connections are not measured
            runner.run(aclient.enqueue("bench", {"i": -1}))
            while len(sync_out) < n:
                count = min(block, n - len(sync_out))
                for i in range(count):
                    t = time.perf_counter()
                    client.enqueue("bench", {"i": i})
                    sync_out.append(time.perf_counter() - t)
                runner.run(async_block(aclient, count))
    finally:
        runner.run(aclient.close())
        runner.close()
    return sync_out, async_out


class Finisher:
    """Finishes jobs from its own thread and connection, noting when each statement was sent."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)
        self.sent: dict[int, float] = {}

    def finish(self, job_id: int) -> None:
        self.sent[job_id] = time.perf_counter()
        self.conn.execute(FINISH, [job_id])

    def close(self) -> None:
        self.conn.close()


async def wait_async(url: str, n: int, *, poll_only: bool) -> list[float]:
    out = []
    finisher = Finisher(url)
    async with AsyncClient(url, validate=False) as client:
        hub = client._wait_hub()
        if poll_only:
            hub._channel = None  # as behind a transaction pooler
        for i in range(n):
            job = await client.enqueue("bench", {"i": i})
            waiter = asyncio.create_task(client.wait(job, timeout=30))
            while hub.waiting() < 1 or not hub.connected.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.005)  # its first read is done: the job is waited for
            await asyncio.to_thread(finisher.finish, job)
            await waiter
            out.append(time.perf_counter() - finisher.sent[job])
    finisher.close()
    return out


def wait_sync(url: str, n: int) -> list[float]:
    out = []
    finisher = Finisher(url)
    with Client(url, validate=False) as client:
        for i in range(n):
            job = client.enqueue("bench", {"i": i})
            done: list[float] = []

            def waiter(j: int = job, into: list[float] = done) -> None:
                client.wait(j, timeout=30)
                into.append(time.perf_counter())

            t = threading.Thread(target=waiter)
            t.start()
            while client._hub is None or client._hub.waiting() < 1 \
                    or not client._hub.connected.is_set():
                time.sleep(0.001)
            time.sleep(0.005)
            finisher.finish(job)
            t.join(30)
            out.append(done[0] - finisher.sent[job])
    finisher.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--enqueues", type=int, default=500)
    parser.add_argument("--waits", type=int, default=200)
    parser.add_argument("--out", default="artifacts/bench/client_latency.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with migrated_server() as server:
        url = server.url()
        print(f"== enqueue: {args.enqueues} each", file=sys.stderr, flush=True)
        sync_lat, async_lat = enqueue_both(url, args.enqueues)
        results["enqueue Client"] = latency_summary(sync_lat)
        results["enqueue AsyncClient"] = latency_summary(async_lat)
        print(f"== wait: {args.waits} each", file=sys.stderr, flush=True)
        results["wait AsyncClient (NOTIFY)"] = latency_summary(asyncio.run(
            wait_async(url, args.waits, poll_only=False)))
        results["wait Client (NOTIFY)"] = latency_summary(wait_sync(url, args.waits))
        results["wait AsyncClient (poll only, 2 s)"] = latency_summary(asyncio.run(
            wait_async(url, max(5, args.waits // 20), poll_only=True)))
    report_latencies(results, args.out, label="measure", width=36, decimals=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
