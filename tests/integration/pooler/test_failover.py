"""Failover: a primary and a streaming standby (both local, pg_basebackup); the primary is
killed and the standby promoted while worker processes and a producer run against a multi-host
URL with target_session_attrs=read-write. Nobody is told about the new primary.

Synchronous replication: every enqueue that returned an id is on the new primary. Asynchronous:
what the standby had not received when the primary died is lost (the window); the jobs that
remain are all terminal, one result per succeeded job, none stuck. The claim connection's
synchronous_commit=off means a claim may be lost either way: its job is claimed again
(at-least-once), and the first run's outcome is fenced off.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from skiplock import Client
from skiplock.errors import SkiplockError
from tests.conftest import WorkerProcess
from tests.support.chaos import install_audit
from tests.support.invariants import TERMINAL, assert_invariants
from tests.support.standby import accepts_writes, multihost_url, primary_and_standby
from tests.support.waits import wait_until

WORKER_ARGS = ("--poll-interval", "0.2", "--lease-seconds", "3", "--shutdown-grace", "5",
               "--concurrency", "4")


class Producer(threading.Thread):
    """Enqueues as fast as it can; records each id an enqueue returned (acknowledged)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[int] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        with Client(self.url, connect_timeout=2, validate=False) as c:
            n = 0
            while not self.halt.is_set():
                n += 1
                try:
                    self.acknowledged.append(c.enqueue("add", {"a": n, "b": 1}))
                except SkiplockError as exc:  # unreachable, outcome unknown: not acknowledged
                    self.errors.append(type(exc).__name__)
                    time.sleep(0.05)
                time.sleep(0.01)


def _sql(url: str) -> Any:
    conn = psycopg.connect(url, autocommit=True, options="-c search_path=skiplock,public")

    def run(query: str, *params: Any) -> list[tuple[Any, ...]]:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []

    run.conn = conn  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_promote_the_standby_while_workers_and_a_producer_run(synchronous: bool) -> None:
    with primary_and_standby(synchronous) as (primary, standby):
        with primary.admin() as admin:
            admin.execute("CREATE DATABASE app")
        with Client(primary.url("app")) as c:
            c.migrate()
        old = _sql(primary.url("app"))
        install_audit(old)  # replicated: the new primary keeps auditing
        url = multihost_url(primary, standby, dbname="app")
        workers = [WorkerProcess(url, "tests.tasks:app", *WORKER_ARGS, name=f"fo-{i}")
                   for i in range(2)]
        producer = Producer(url)
        closing = [old.conn]
        try:
            producer.start()
            wait_until(lambda: len(producer.acknowledged) >= 100 and old(
                "SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0] >= 30, 60,
                "100 enqueues, 30 jobs done")
            old.conn.close()
            primary.kill9()
            promoted_at = time.time()
            standby.promote()
            assert accepts_writes(standby, "app")
            new = _sql(standby.url("app"))
            closing.append(new.conn)
            try:
                first = wait_until(lambda: new(
                    "SELECT min(finished_at) FROM jobs WHERE finished_at > to_timestamp(%s)",
                    promoted_at)[0][0], 90, "a job finished on the new primary")
            except BaseException:
                for w in workers:
                    print(w.output()[-4000:])
                raise
            recovery = first.timestamp() - promoted_at
            wait_until(lambda: len(producer.acknowledged) >= 200, 60, "enqueues after it")
            producer.halt.set()
            producer.join(30)
            wait_until(lambda: new("SELECT count(*) FROM jobs WHERE state::text <> ALL(%s)",
                                   list(TERMINAL)) == [(0,)], 120, "every job terminal")
            for w in workers:
                assert w.terminate() == 0, w.output()[-3000:]
            counts = assert_invariants(new)
            stored = {r[0] for r in new("SELECT id FROM jobs")}
            lost = [i for i in producer.acknowledged if i not in stored]
            print(f"\n[{'sync' if synchronous else 'async'}] promote -> first job finished on "
                  f"the new primary: {recovery:.2f} s; {len(producer.acknowledged)} enqueues "
                  f"acknowledged, {len(lost)} of them lost; errors seen by the producer: "
                  f"{sorted(set(producer.errors))}; final states {counts}")
            if synchronous:
                assert lost == [], f"acknowledged enqueues lost under sync replication: {lost}"
        finally:
            producer.halt.set()
            for w in workers:
                w.close()
            for conn in closing:
                conn.close()
