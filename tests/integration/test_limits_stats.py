"""Jobs waiting on a limit, apart from runnable ones: inspection, the API, the metrics, the
CLI's JSON and the dashboard. Seeded with SQL, exact answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx

from skiplock import inspection
from skiplock.db import Database, WorkerConnection
from tests.conftest import ROOT
from tests.integration.api.conftest import api  # noqa: F401  # the fixture
from tests.support.worker_conn import with_worker_conn

Sql = Callable[..., list[tuple[Any, ...]]]


def seed(sql: Sql) -> None:
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) VALUES "
        "('capped', '{}', 3, 'lim', %s), ('per_key', '{}', 3, 'kq', %s)",
        json.dumps({"concurrency_limit": 3}), json.dumps({"key": "arg:t", "key_limit": 1}))
    # capped: 10 queued, 1 running -> 2 may start, 8 wait on the limit; at most 3 at once
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'lim', 'capped', '' FROM generate_series(1, 11)")
    # and 4 unlimited jobs in the same queue: they may all start
    sql("INSERT INTO jobs (queue, task) SELECT 'lim', 'other' FROM generate_series(1, 4)")
    # per_key: key a has 1 running and 3 queued (all wait), b 2 queued (1 may start)
    sql("INSERT INTO jobs (queue, task, concurrency_key, args) SELECT 'kq', 'per_key', k, "
        "jsonb_build_object('t', k) FROM unnest(ARRAY['a','a','a','a','b','b']) AS k")
    sql("""UPDATE jobs SET state = 'running', attempts = 1, locked_by = 'w:1:x',
                          locked_until = now() + interval '1 hour', started_at = now()
           WHERE id IN ((SELECT min(id) FROM jobs WHERE task = 'capped'),
                        (SELECT min(id) FROM jobs WHERE task = 'per_key'))""")
    # a running job with an expired lease holds no slot
    sql("INSERT INTO jobs (queue, task, concurrency_key, state, attempts, locked_by, "
        "locked_until, started_at) VALUES ('lim', 'capped', '', 'running', 1, 'dead:1:x', "
        "now() - interval '1 minute', now() - interval '2 minutes')")


def test_waiting_on_limit_everywhere(api: httpx.Client, sql: Sql,  # noqa: F811
                                     database_url: str) -> None:
    seed(sql)
    with Database(database_url) as db:
        stats = {s.queue: s for s in inspection.queue_stats(db, ["lim", "kq"])}
    lim, kq = stats["lim"], stats["kq"]
    assert (lim.runnable, lim.waiting_on_limit, lim.stuck, lim.backlog) == (14, 8, 1, 7)
    # runnable work that is not limited: no cap from the limits
    assert lim.limit_capacity is None
    assert (kq.runnable, kq.waiting_on_limit, kq.backlog, kq.limit_capacity) == (5, 4, 1, None)

    sql("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE task = 'other'")
    with Database(database_url) as db:
        lim = inspection.queue_stats(db, ["lim"])[0]
    assert (lim.backlog, lim.limit_capacity) == (3, 3)  # 2 may start + 1 stuck

    queues = {q["queue"]: q for q in api.get("/v1/queues").json()["queues"]}
    assert (queues["lim"]["waiting_on_limit"], queues["lim"]["limit_capacity"]) == (8, 3)
    assert (queues["kq"]["waiting_on_limit"], queues["kq"]["backlog"]) == (4, 1)
    metrics = api.get("/metrics").text
    assert 'skiplock_queue_waiting_on_limit{queue="lim"} 8.0' in metrics
    assert 'skiplock_queue_waiting_on_limit{queue="kq"} 4.0' in metrics
    page = api.get("/ui/").text
    assert 'data-col="waiting_on_limit"' in page and "Waiting on limit" in page

    env = {**os.environ, "SKIPLOCK_DATABASE_URL": database_url,
           "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    out = subprocess.run([sys.executable, "-m", "skiplock", "stats", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    cli = {q["queue"]: q for q in json.loads(out)}
    assert (cli["lim"]["waiting_on_limit"], cli["kq"]["waiting_on_limit"]) == (8, 4)


def test_the_claim_passes(database_url: str, sql: Sql) -> None:
    """The unlocked pass serves a task-wide limit far from its cap; near it, or per key, it
    asks for the locked pass, and an idle task or one at its cap asks for nothing."""
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) VALUES "
        "('wide', '{}', 3, 'q', %s), ('narrow', '{}', 3, 'q', %s), ('keyed', '{}', 3, 'q', %s)",
        json.dumps({"concurrency_limit": 1000}), json.dumps({"concurrency_limit": 3}),
        json.dumps({"key": "arg:t", "key_limit": 1}))
    # another registered worker of concurrency 10: 20 running jobs we might not see
    sql("INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds) "
        "VALUES ('peer:1:x', '{q}', '{}', 10, 30)")

    def run(task: str, n: int, *, locked: bool = False) -> tuple[int, bool]:
        async def claim(conn: WorkerConnection) -> tuple[int, bool]:
            got = await conn.claim_limited([task], ["q"], n, "me:1:x", 30, locked=locked)
            return len(got.jobs), got.need_lock
        return with_worker_conn(database_url, claim)

    assert run("wide", 5) == (0, False)  # nothing queued: no lock either
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'wide', '' "
        "FROM generate_series(1, 50)")
    assert run("wide", 5) == (5, False)  # 1000 free >= 5 + 20: served without a lock
    sql("INSERT INTO jobs (queue, task, concurrency_key) SELECT 'q', 'narrow', '' "
        "FROM generate_series(1, 10)")
    assert run("narrow", 5) == (0, True)  # 3 free < 5 + 20: only under the lock
    assert run("narrow", 5, locked=True) == (3, False)
    assert run("narrow", 5) == (0, False)  # at its cap: nothing to lock for
    sql("INSERT INTO jobs (queue, task, concurrency_key, args) SELECT 'q', 'keyed', k, "
        "jsonb_build_object('t', k) FROM unnest(ARRAY['a', 'a', 'b']) AS k")
    assert run("keyed", 5) == (0, True)  # per key: always the locked pass
    assert run("keyed", 5, locked=True) == (2, False)  # one per key
