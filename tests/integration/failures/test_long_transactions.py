"""Long transactions and locking: a session holding row locks, and a slow query holding locks
and a snapshot, do not block workers (FOR UPDATE SKIP LOCKED), workers do not block each other,
and no worker connection is ever `idle in transaction` while handlers run (jobs never execute
inside a transaction)."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg

from skiplock import Client
from tests.integration.failures.conftest import LEASE, WORKER_ARGS, wait_workers_ready
from tests.support.chaos import read_marker
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until

WORKER_BACKENDS = ("SELECT pid, application_name, state, xact_start IS NOT NULL, "
                   "coalesce(wait_event_type, ''), "
                   "coalesce(extract(epoch FROM now() - xact_start), 0) "
                   "FROM pg_stat_activity WHERE datname = current_database() "
                   "AND application_name LIKE 'skiplock-worker-%%'")


def _enqueue(database_url: str, n: int, marker: Path, **args: object) -> list[int]:
    with Client(database_url, validate=False) as c:
        return [c.enqueue("tracked", {"marker": str(marker), **args}) for _ in range(n)]


def _states(sql, ids: list[int]) -> dict[str, int]:
    rows = sql("SELECT state::text, count(*) FROM jobs WHERE id = ANY(%s) GROUP BY 1", ids)
    return {s: int(n) for s, n in rows}


def test_session_holding_row_locks_does_not_block_workers(database_url, audited, spawn_worker,
                                                         marker) -> None:
    sql = audited
    ids = _enqueue(database_url, 12, marker)
    locked, free = ids[:4], ids[4:]
    # A forgotten session: it locked four queued jobs and sits idle in its transaction.
    holder = psycopg.connect(database_url, options="-c search_path=skiplock")
    holder.execute("SELECT id FROM jobs WHERE id = ANY(%s) FOR UPDATE", [locked])
    waits: list[tuple] = []

    def free_done_without_waiting() -> bool:
        waits.extend(r for r in sql(WORKER_BACKENDS) if r[4] == "Lock")
        return _states(sql, free) == {"succeeded": len(free)}

    for i in range(2):
        spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "3", name=f"skip-{i}")
    wait_until(free_done_without_waiting, 60, "the unlocked jobs to finish while locks are held")
    assert waits == [], f"a worker waited on a lock: {waits[:5]}"
    assert _states(sql, locked) == {"queued": len(locked)}
    assert sql("SELECT max(attempts) FROM jobs WHERE id = ANY(%s)", locked) == [(0,)]
    holder.rollback()  # the session ends; its rows are claimable again
    holder.close()
    wait_until(lambda: _states(sql, ids) == {"succeeded": len(ids)}, 30, "the rest to finish")
    assert_invariants(sql, ids, expected_states={i: "succeeded" for i in ids})


def test_slow_query_and_slow_handler_do_not_block_other_workers(
        database_url, audited, spawn_worker, marker, tmp_path: Path) -> None:
    sql = audited
    gate = tmp_path / "slow-gate"
    slow_job = _enqueue(database_url, 1, marker, hold=str(gate))[0]
    slow_worker = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "1",
                               name="slowhandler")
    wait_until(lambda: read_marker(marker), 30, "the slow handler to start")
    ids = _enqueue(database_url, 20, marker)
    shared, rest = ids[:5], ids[5:]
    # A slow report: a long transaction that share-locks five queued jobs, then runs a query
    # that lasts until the test lets it finish (it waits on an advisory lock the test holds).
    control = psycopg.connect(database_url, autocommit=True)
    control.execute("SELECT pg_advisory_lock(4242)")
    report = psycopg.connect(database_url, options="-c search_path=skiplock")
    report.execute("SELECT id FROM jobs WHERE id = ANY(%s) FOR SHARE", [shared])
    slow_query = threading.Thread(target=lambda: report.execute(
        "SELECT count(*), pg_advisory_xact_lock(4242) FROM jobs"), daemon=True)
    slow_query.start()
    wait_until(lambda: sql("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                         "wait_event_type = 'Lock' AND query LIKE '%%pg_advisory_xact_lock%%'"
                         )[0][0] == 1, 10, "the slow query to be running")
    spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "4", name="fast")
    wait_until(lambda: _states(sql, rest) == {"succeeded": len(rest)}, 60,
               "other jobs to finish beside the slow handler and the slow query")
    assert _states(sql, shared) == {"queued": len(shared)}
    assert sql("SELECT state::text FROM jobs WHERE id = %s", slow_job) == [("running",)]
    control.execute("SELECT pg_advisory_unlock(4242)")
    slow_query.join(10)
    report.rollback()
    report.close()
    control.close()
    gate.touch()
    everything = [slow_job, *ids]
    wait_until(lambda: _states(sql, everything) == {"succeeded": len(everything)}, 30, "all done")
    assert sql("SELECT attempts FROM jobs WHERE id = %s", slow_job) == [(1,)]
    assert_invariants(sql, everything)
    slow_worker.terminate()


def test_no_worker_connection_idle_in_transaction_while_handlers_run(
        database_url, audited, spawn_worker, marker, tmp_path: Path) -> None:
    sql = audited
    gate = tmp_path / "gate"
    workers = [spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "3",
                            name=f"txn-{i}") for i in range(2)]
    wait_workers_ready(sql, 2)
    ids = _enqueue(database_url, 6, marker, hold=str(gate))
    wait_until(lambda: len(read_marker(marker)) == 6, 30, "six handlers running")
    first = sql("SELECT max(locked_until) FROM jobs")[0][0]
    samples: list[tuple] = []

    def sampled_through_heartbeats() -> bool:
        samples.extend(sql(WORKER_BACKENDS))
        # Until every lease was renewed at least twice (writes happened during the sampling).
        return sql("SELECT min(locked_until) > %s + make_interval(secs => %s) FROM jobs "
                   "WHERE state = 'running'", first, LEASE / 3)[0][0] and len(samples) > 100

    wait_until(sampled_through_heartbeats, 30, "heartbeats while sampling pg_stat_activity")
    roles = {r[1] for r in samples}
    assert {"skiplock-worker-claim", "skiplock-worker-write", "skiplock-worker-listen"} <= roles
    in_txn = [r for r in samples if r[2] and r[2].startswith("idle in transaction")]
    assert in_txn == [], f"worker connections idle in transaction: {in_txn[:5]}"
    idle_with_txn = [r for r in samples if r[2] == "idle" and r[3]]
    assert idle_with_txn == [], idle_with_txn[:5]
    long_txn = [r for r in samples if r[3] and r[5] > 1.0]
    assert long_txn == [], f"worker transactions open for over a second: {long_txn[:5]}"
    gate.touch()
    wait_until(lambda: _states(sql, ids) == {"succeeded": 6}, 30, "the handlers to finish")
    assert_invariants(sql, ids, expected_states={i: "succeeded" for i in ids})
    for w in workers:
        w.terminate()
