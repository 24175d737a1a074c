"""Cancel latency: from ``Client.cancel`` returning to the handler seeing the stop, with LISTEN
and without it (the worker's LISTEN link points at a closed port, as behind a transaction
pooler; it then polls for cancel requests every poll interval).

    .venv/bin/python -m benchmarks.cancel_latency [--cancels 200]

Starts its own PostgreSQL, runs one in-process worker per mode, prints p50/p99/max per mode and
writes artifacts/bench/cancel_latency.json. Bounded: ``--cancels`` per mode, 60 s per cancel.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time

from tests.support.pgserver import free_port
from tests.support.waits import until as _until

import skiplock
from benchmarks.common import latency_summary, report_latencies
from benchmarks.local_support import migrated_server
from skiplock import Client, JobContext, Worker

app = skiplock.App()
SEEN: dict[int, float] = {}


@app.task(max_attempts=1)
async def hold(ctx: JobContext) -> None:
    SEEN.pop(ctx.job_id, None)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        SEEN[ctx.job_id] = time.perf_counter()
        raise


async def _measure(url: str, cancels: int, poll: float, listen: bool) -> list[float]:
    urls = {} if listen else {"listen": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}
    worker = Worker(app, url, concurrency=4, lease_seconds=30, poll_interval=poll,
                    cancel_grace=5, connection_urls=urls)
    run = asyncio.create_task(worker.run())
    out: list[float] = []
    rng = random.Random(7)
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        if listen and not await _until(lambda: worker.state.listening, 30):
            raise RuntimeError("the worker never got its LISTEN connection")
        with Client(url, validate=False) as client:
            for i in range(cancels):
                job = client.enqueue("hold")
                await _until(lambda j=job: j in worker.state.executing, 60)  # type: ignore[misc]
                # The handler is inside its await; a random pause so that the cancels do not
                # fall in step with the worker's poll (claims are polled too without LISTEN).
                await asyncio.sleep(0.005 + rng.uniform(0, poll))
                # The clock starts before the request (its own round trip is part of the
                # latency a producer sees); Client.cancel blocks, so it runs in a thread.
                asked = time.perf_counter()
                await asyncio.to_thread(client.cancel, job)
                if not await _until(lambda j=job: j in SEEN, 60):  # type: ignore[misc]
                    raise RuntimeError(f"cancel of job {job} never reached its handler")
                out.append(SEEN[job] - asked)
                if (i + 1) % 50 == 0:
                    print(f"  {i + 1}/{cancels}", file=sys.stderr, flush=True)
    finally:
        worker.request_stop()
        await run
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cancels", type=int, default=200)
    parser.add_argument("--out", default="artifacts/bench/cancel_latency.json")
    args = parser.parse_args()
    results = {}
    with migrated_server() as server:
        url = server.url()
        for name, poll, listen in (("NOTIFY (LISTEN up)", 1.0, True),
                                   ("no LISTEN, poll 1.0 s (default)", 1.0, False),
                                   ("no LISTEN, poll 0.2 s", 0.2, False)):
            print(f"== {name}: {args.cancels} cancels", file=sys.stderr, flush=True)
            got = asyncio.run(_measure(url, args.cancels, poll, listen))
            results[name] = latency_summary(got)
    report_latencies(results, args.out, label="mode", width=34, decimals=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
