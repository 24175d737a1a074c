"""Concurrency and rate limits, enforced by the claim across real worker processes.

An audit trigger (made here, not part of Skiplock) records, at every claim of a limited job,
how many jobs of its task (and key) hold a live lease: what the limit is about. The trigger
runs inside the claiming transaction after the whole claim statement, so it counts the
batch being claimed as well as every other worker's committed claims.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from skiplock import Client
from skiplock.errors import InvalidArguments
from tests.conftest import WorkerProcess
from tests.limit_tasks import GLOBAL_LIMIT, KEY_LIMIT, RATE, RATE_PERIOD
from tests.limit_tasks_v2 import V2_LIMIT
from tests.support.waits import wait_until

APP = "tests.limit_tasks:app"
Sql = Callable[..., list[tuple[Any, ...]]]

AUDIT = """
CREATE TABLE limit_audit (task text, key text, task_running int, key_running int,
                          at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION limit_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO limit_audit (task, key, task_running, key_running)
    SELECT NEW.task, NEW.concurrency_key,
           (SELECT count(*) FROM jobs WHERE state = 'running' AND task = NEW.task
                                        AND locked_until >= now()),
           (SELECT count(*) FROM jobs WHERE state = 'running' AND task = NEW.task
                                        AND concurrency_key = NEW.concurrency_key
                                        AND locked_until >= now());
    RETURN NULL;
END $$;
CREATE TRIGGER limit_audit AFTER UPDATE OF state ON jobs FOR EACH ROW
    WHEN (OLD.state = 'queued' AND NEW.state = 'running') EXECUTE FUNCTION limit_audit();
"""


def _workers(spawn: Callable[..., WorkerProcess], n: int, *args: str) -> list[WorkerProcess]:
    return [spawn(APP, *args, name=f"limits-{i}") for i in range(n)]


def _registered(sql: Sql, task: str) -> None:
    wait_until(lambda: sql("SELECT limits FROM tasks WHERE name = %s AND limits IS NOT NULL",
                           task), 30, f"{task}'s limits in the catalogue")


def _finished(sql: Sql, task: str, n: int, timeout: float = 60) -> None:
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE task = %s AND state = 'succeeded'",
                           task)[0][0] == n, timeout, f"{n} {task} jobs succeeded")


def test_global_limit_holds_across_worker_processes(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    sql(AUDIT)
    _workers(spawn_worker, 3, "-q", "limited", "-c", "4", "--poll-interval", "0.1")
    _registered(sql, "limited")
    with Client(database_url) as client:
        client.enqueue_many({"task": "limited", "args": {"seconds": 0.15}} for _ in range(24))
        # unlimited work in the same queue is not held back by the limit
        client.enqueue_many({"task": "unlimited"} for _ in range(20))
    _finished(sql, "limited", 24)
    _finished(sql, "unlimited", 20)
    [(peak, claims)] = sql("SELECT max(task_running), count(*) FROM limit_audit "
                           "WHERE task = 'limited'")
    assert claims == 24
    # never above the limit, and it was reached: 12 slots were there to overshoot it
    assert peak == GLOBAL_LIMIT


def test_sigkill_frees_the_slots_when_the_leases_expire(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    sql(AUDIT)
    first = spawn_worker(APP, "-q", "limited", "-c", "4", "--lease-seconds", "2",
                         "--poll-interval", "0.1", name="doomed")
    _registered(sql, "limited")
    with Client(database_url) as client:
        for _ in range(GLOBAL_LIMIT):  # one attempt each: the rescue ends them dead
            client.enqueue("limited", {"seconds": 120}, max_attempts=1)
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE state = 'running'")[0][0]
               == GLOBAL_LIMIT, 30, "the limit's slots all taken")
    first.kill()
    # the first slot comes back when the earliest of the dead worker's leases expires (its
    # renewals need not give all three the same expiry)
    [(expires,)] = sql("SELECT min(locked_until) FROM jobs WHERE state = 'running'")
    spawn_worker(APP, "-q", "limited", "-c", "4", "--lease-seconds", "2",
                 "--poll-interval", "0.1", name="survivor")
    with Client(database_url) as client:
        short = client.enqueue("limited", {"seconds": 0})
    wait_until(lambda: sql("SELECT state FROM jobs WHERE id = %s", short)[0][0] == "succeeded",
               30, "the short job to run once the dead worker's leases expired")
    [(started,)] = sql("SELECT started_at FROM jobs WHERE id = %s", short)
    # not before the dead worker's slots came back: its leases were live until then
    assert started >= expires - dt.timedelta(milliseconds=1)
    assert sql("SELECT max(task_running) FROM limit_audit") == [(GLOBAL_LIMIT,)]


def test_rate_limit_over_any_window(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    _workers(spawn_worker, 2, "-q", "rated", "-c", "8", "--poll-interval", "0.05")
    _registered(sql, "rated")
    total = 3 * RATE
    with Client(database_url) as client:
        client.enqueue_many({"task": "rated"} for _ in range(total))
    _finished(sql, "rated", total)
    starts = [r[0] for r in sql("SELECT started_at FROM jobs WHERE task = 'rated' "
                                "ORDER BY started_at")]
    period = dt.timedelta(seconds=RATE_PERIOD)
    # every window (t - period, t] holds at most RATE starts
    worst = max(sum(1 for s in starts if t - period < s <= t) for t in starts)
    assert worst == RATE
    assert starts[-1] - starts[0] >= 2 * period - dt.timedelta(milliseconds=50)


def test_a_small_key_is_not_starved_by_a_big_one(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    sql(AUDIT)
    spawn_worker(APP, "-q", "keyed", "-c", "4", "--poll-interval", "0.05", name="fair")
    _registered(sql, "keyed")
    with Client(database_url) as client:
        # the big key first: it is older, so ordering by age alone would run it all first
        client.enqueue_many({"task": "keyed", "args": {"tenant": "big", "seconds": 0.05}}
                            for _ in range(80))
        client.enqueue_many({"task": "keyed", "args": {"tenant": "small", "seconds": 0.05}}
                            for _ in range(5))
    _finished(sql, "keyed", 85)
    [(small_done,)] = sql("SELECT max(finished_at) FROM jobs WHERE args->>'tenant' = 'small'")
    [(big_before,)] = sql("SELECT count(*) FROM jobs WHERE args->>'tenant' = 'big' "
                          "AND finished_at <= %s", small_done)
    # water-filling: the small key gets a slot each time one frees, so it is done long before
    # the big one (alone it would wait for all 80)
    assert big_before <= 20, big_before
    assert sql("SELECT max(key_running), max(task_running) FROM limit_audit") == [
        (KEY_LIMIT, KEY_LIMIT)]


def test_per_key_limit_with_a_key_function(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    sql(AUDIT)
    spawn_worker(APP, "-q", "per_tenant", "-c", "6", "--poll-interval", "0.05", name="keys")
    _registered(sql, "per_tenant")
    import tests.limit_tasks  # noqa: F401  # the key function lives with the task
    with Client(database_url) as client:
        client.enqueue_many({"task": "per_tenant", "args": {"tenant": t, "seconds": 0.1}}
                            for t in ("a", "A", "b", "c") * 3)
    _finished(sql, "per_tenant", 12)
    keys: dict[Any, Any] = dict(sql("SELECT key, max(key_running) FROM limit_audit GROUP BY key"))
    # "a" and "A" are one key (the function upper-cases): one at a time per key
    assert keys == {"A": 1, "B": 1, "C": 1}


def test_jobs_without_a_key_are_adopted(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    # enqueued before any worker registered the limit (no catalogue: no key)
    with Client(database_url) as client:
        ids = [client.enqueue("limited", {"seconds": 0}, queue="limited") for _ in range(3)]
    assert sql("SELECT count(*) FROM jobs WHERE concurrency_key IS NULL") == [(3,)]
    spawn_worker(APP, "-q", "limited", "--poll-interval", "0.1", name="adopter")
    wait_until(lambda: sql("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state = "
                           "'succeeded' AND concurrency_key = ''", ids)[0][0] == 3,
               30, "the unkeyed jobs keyed and run")


def test_a_key_function_the_producer_cannot_run_is_refused(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    spawn_worker(APP, "-q", "per_tenant", name="keys")
    _registered(sql, "per_tenant")
    from skiplock import limits
    monkeypatch.delitem(limits.KEY_FUNCTIONS, "per_tenant", raising=False)
    with Client(database_url) as client, pytest.raises(InvalidArguments, match="function"):
        client.enqueue("per_tenant", {"tenant": "a", "seconds": 0})


def test_a_rolling_deploy_enforces_the_newest_limit_everywhere(
        database_url: str, sql: Sql, spawn_worker: Callable[..., WorkerProcess]) -> None:
    sql(AUDIT)
    spawn_worker(APP, "-q", "limited", "-c", "4", "--poll-interval", "0.1", name="v1")
    wait_until(lambda: sql("SELECT limits->>'concurrency_limit' FROM tasks "
                           "WHERE name = 'limited'") == [(str(GLOBAL_LIMIT),)], 30, "v1's limit")
    spawn_worker("tests.limit_tasks_v2:app", "-q", "limited", "-c", "4", "--poll-interval",
                 "0.1", name="v2")
    wait_until(lambda: sql("SELECT limits->>'concurrency_limit' FROM tasks "
                           "WHERE name = 'limited'") == [(str(V2_LIMIT),)], 30, "v2's limit")
    # a v1 pod restarting mid-rollout does not take v2's limit back (S5): the newest
    # definition a live worker declares wins
    spawn_worker(APP, "-q", "limited", "-c", "4", "--poll-interval", "0.1", name="v1-again")
    wait_until(lambda: sql("SELECT count(*) FROM task_limit_definitions "
                           "WHERE task = 'limited' AND cardinality(declared_by) > 0 "
                           "AND definition ->> 'concurrency_limit' = %s "
                           "AND registered_at > introduced_at", str(GLOBAL_LIMIT)) == [(1,)],
               30, "the restarted v1 pod's registration")
    assert sql("SELECT limits->>'concurrency_limit' FROM tasks WHERE name = 'limited'") == [
        (str(V2_LIMIT),)]
    with Client(database_url) as client:
        client.enqueue_many({"task": "limited", "args": {"seconds": 0.1}} for _ in range(8))
    _finished(sql, "limited", 8)
    # v1 workers too keep to the one limit now stored (v2's)
    assert sql("SELECT max(task_running) FROM limit_audit") == [(V2_LIMIT,)]
