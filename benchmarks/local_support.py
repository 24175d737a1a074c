"""Helpers of the benchmarks that run in Skiplock's own virtualenv (they import psycopg and
skiplock); benchmarks/common.py stays standard library only, for the peer runners."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from tests.support.pgserver import PgServer

from skiplock import Client
from skiplock.db import Database


@contextlib.contextmanager
def migrated_server(*, durable: bool = True) -> Iterator[PgServer]:
    """A PostgreSQL of the benchmark's own, Skiplock's schema migrated into its ``postgres``
    database (``server.url()``); stopped and its data directory removed afterwards.
    ``durable``: fsync each commit, as production does (off: the CPU cost alone shows)."""
    server = PgServer(durable=durable)
    server.init()
    server.start()
    try:
        with Database(server.url()) as db:
            db.migrate()
        yield server
    finally:
        server.stop()
        server.destroy()


def load_noop_jobs(url: str, jobs: int) -> None:
    """A fresh backlog of ``jobs`` queued ``noop`` jobs with ids 1..jobs (a script may pick one
    at random), vacuumed and analysed so that every variant is planned on the same table."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE skiplock.results, skiplock.jobs RESTART IDENTITY")
    with Client(url) as client:
        client.enqueue_many({"task": "noop", "args": {}} for _ in range(jobs))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE skiplock.jobs")
