"""The limited claim's locked pass is a transaction of two statements: it must hold through a
transaction pooler (PgBouncer, pool_mode=transaction) as it does direct."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from skiplock import Client
from tests.conftest import WorkerProcess
from tests.integration.pooler.conftest import bouncer, pooled_url  # noqa: F401  # fixtures
from tests.integration.test_limits import AUDIT
from tests.limit_tasks import GLOBAL_LIMIT
from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]


def test_a_global_limit_holds_through_the_pooler(pooled_url: str, sql: Sql) -> None:  # noqa: F811
    sql(AUDIT)
    workers = [WorkerProcess(pooled_url, "tests.limit_tasks:app", "-q", "limited", "-c", "4",
                             "--poll-interval", "0.1", env={"SKIPLOCK_POOLER": "transaction"},
                             name=f"pooled-{i}") for i in range(2)]
    try:
        wait_until(lambda: sql("SELECT 1 FROM tasks WHERE name = 'limited' "
                               "AND limits IS NOT NULL"), 30, "the limits registered")
        with Client(pooled_url) as client:
            client.enqueue_many({"task": "limited", "args": {"seconds": 0.1}} for _ in range(15))
        wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'succeeded'")[0][0]
                   == 15, 60, "15 limited jobs done through the pooler")
        assert sql("SELECT max(task_running) FROM limit_audit") == [(GLOBAL_LIMIT,)]
    finally:
        for w in workers:
            w.close()
