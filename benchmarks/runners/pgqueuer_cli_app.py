"""The factory `pgqueuer.run("benchmarks.runners.pgqueuer_cli_app:create", batch_size=200)`
runs in the from-spawn end-to-end measurement (benchmarks/e2e_cli.py), on uvloop, as pgqueuer
1.6's `pgq run` CLI starts a worker: a QueueManager (not the PgQueuer class the harness's
runner uses) on one asyncpg connection, one no-op entrypoint. Peer venv only."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import Queries, QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job


@asynccontextmanager
async def create() -> AsyncIterator[QueueManager]:
    conn = await asyncpg.connect(os.environ["BENCH_DSN"])
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    try:
        yield qm
    finally:
        await conn.close()


def main() -> None:
    """`python -m benchmarks.runners.pgqueuer_cli_app BATCH`: what `pgq run` does."""
    import sys

    import uvloop
    from pgqueuer import run

    uvloop.run(run("benchmarks.runners.pgqueuer_cli_app:create",
                   batch_size=int(sys.argv[1]) if len(sys.argv) > 1 else 200))


if __name__ == "__main__":
    main()
