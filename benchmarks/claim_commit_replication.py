"""What the claim connection's synchronous_commit=off saves, with a synchronous standby and
without: mean time of a one-job claim, on vs off, alternating rounds.

Not a test (no timed assertions): ``.venv/bin/python -m benchmarks.
claim_commit_replication`` for the numbers in docs/postgres.md. Servers with fsync on
(``durable``), both local: the standby round trip is loopback, so a real network adds its RTT
to every claim with synchronous_commit on.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from tests.support.pgserver import PgServer
from tests.support.standby import Standby, wait_streaming

from skiplock.db import Database, NewJob, WorkerConnection

ROUNDS, CLAIMS = 6, 300


async def _claims(url: str, synchronous_commit: bool) -> float:
    conn = WorkerConnection(url, schema="skiplock", connect_timeout=5, statement_timeout=30,
                            application_name="bench", synchronous_commit=synchronous_commit)
    try:
        await conn.claim(["default"], 1, "w", 60)  # connected, prepared
        started = time.perf_counter()
        for _ in range(CLAIMS):
            await conn.claim(["default"], 1, "w", 60)
        return (time.perf_counter() - started) / CLAIMS * 1000
    finally:
        await conn.close()


def main() -> None:
    for synchronous in (False, True):
        primary = PgServer(durable=True)
        primary.init()
        with open(primary.datadir / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\n"
                       + ("synchronous_standby_names = '*'\n" if synchronous else ""))
        primary.start()
        standby = Standby(primary)
        try:
            standby.init()
            standby.start()
            wait_streaming(primary, synchronous)
            with primary.admin() as admin:
                admin.execute("CREATE DATABASE bench")
            with Database(primary.url("bench")) as db:
                db.migrate()
                db.enqueue_copy([NewJob("noop", {}, "{}", "default", 0, 5)]
                                * (2 * ROUNDS * CLAIMS + 10))
            results: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(ROUNDS):
                for on in (True, False):
                    results[on].append(asyncio.run(_claims(primary.url("bench"), on)))
            label = "sync standby " if synchronous else "async standby"
            print(f"{label}: claim with synchronous_commit on "
                  f"{statistics.mean(results[True]):.3f} ms, off "
                  f"{statistics.mean(results[False]):.3f} ms (mean of {ROUNDS} rounds of "
                  f"{CLAIMS})", flush=True)
        finally:
            standby.destroy()
            primary.destroy()


if __name__ == "__main__":
    main()
