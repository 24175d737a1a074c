"""Limits, second round: the starts ledger (a retry is a start), the bounded key walk, the
one-round-trip locked pass and which registered limits win. On a real Postgres, the claim
and registration statements called as the worker calls them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import psycopg

from skiplock.db import WorkerConnection
from skiplock.sql import queries
from tests.support.worker_conn import with_worker_conn

Sql = Callable[..., list[tuple[Any, ...]]]


def _task(sql: Sql, name: str, limits: dict[str, Any] | None) -> None:
    sql("INSERT INTO tasks (name, params, max_attempts, queue, limits) "
        "VALUES (%s, '{}', 3, 'q', %s)", name, json.dumps(limits) if limits else None)


def _retry(sql: Sql, ids: list[int]) -> None:
    """What a failed attempt with retries left does to the job: queued again, runnable now."""
    sql("UPDATE jobs SET state = 'queued', locked_by = NULL, locked_until = NULL "
        "WHERE id = ANY(%s)", ids)


def test_a_retry_counts_as_a_start(database_url: str, sql: Sql) -> None:
    """S3: one job failing fast, a rate of 3 a minute (task-wide) and 2 a minute per key:
    each attempt is a start, so the 4th (3rd) claim within the minute gets nothing (counting
    jobs' started_at, overwritten by each retry, let it start every time)."""
    _task(sql, "rated", {"rate_limit": 3, "rate_period": 60})
    _task(sql, "keyrated", {"key": "arg:t", "rate_limit": 2, "rate_period": 60,
                            "rate_per_key": True})
    sql("INSERT INTO jobs (queue, task, concurrency_key, max_attempts) "
        "VALUES ('q', 'rated', '', 10), ('q', 'keyrated', 'a', 10)")

    async def use(conn: WorkerConnection) -> dict[str, list[int]]:
        got: dict[str, list[int]] = {"rated": [], "keyrated": []}
        for _ in range(5):
            for task in got:
                claim = await conn.claim_limited([task], ["q"], 5, "w:1:x", 30, locked=True)
                got[task].append(len(claim.jobs))
                _retry(sql, [j.id for j in claim.jobs])
        return got
    assert with_worker_conn(database_url, use) == {"rated": [1, 1, 1, 0, 0],
                                             "keyrated": [1, 1, 0, 0, 0]}
    assert sql("SELECT task, concurrency_key, count(*) FROM limit_starts "
               "GROUP BY 1, 2 ORDER BY 1") == [("keyrated", "a", 2), ("rated", "", 3)]
    [(attempts,)] = sql("SELECT attempts FROM jobs WHERE task = 'rated'")
    assert attempts == 3


def test_the_ledger_is_pruned_to_its_window(database_url: str, sql: Sql) -> None:
    """Rows older than the task's window go, a bounded number per claim (twice its batch):
    the ledger holds about one window of starts, whatever ran before."""
    _task(sql, "rated", {"rate_limit": 100, "rate_period": 60})
    sql("INSERT INTO limit_starts (task, concurrency_key, started_at) "
        "SELECT 'rated', '', now() - interval '2 hours' FROM generate_series(1, 25)")
    sql("INSERT INTO limit_starts (task, concurrency_key, started_at) "
        "SELECT 'rated', '', now() - interval '10 seconds' FROM generate_series(1, 3)")
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'q', 'rated', '' FROM generate_series(1, 4)")

    async def use(conn: WorkerConnection) -> list[int]:
        sizes = []
        for _ in range(3):
            await conn.claim_limited(["rated"], ["q"], 5, "w:1:x", 30, locked=True)
            [(n,)] = sql("SELECT count(*) FROM limit_starts WHERE started_at < now() - "
                         "interval '1 minute'")
            sizes.append(int(n))
        return sizes
    assert with_worker_conn(database_url, use) == [15, 5, 0]
    # the starts within the window stay: 3 seeded, 4 claimed
    [(recent,)] = sql("SELECT count(*) FROM limit_starts")
    assert recent == 7


def test_the_key_walk_is_bounded_and_comes_round(database_url: str, sql: Sql) -> None:
    """A claim walks at most max(16, batch) keys, from where the previous one stopped: of
    100 keys at their cap and one with room after them, claims of 1 find nothing until the
    walk gets there (the 7th: 6 x 16 full keys first), each claim going on where the last
    stopped; then, past the last key, the walk wraps around and the first key, freed
    meanwhile, comes round within one round of the keys. (A walk over every key found the
    free key at once, at a cost in proportion to all the keys.)"""
    _task(sql, "keyed", {"key": "arg:t", "key_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key, state, attempts, locked_by, "
        "locked_until, started_at) SELECT 'q', 'keyed', 'k' || lpad(g::text, 3, '0'), "
        "'running', 1, 'other:1:x', now() + interval '1 hour', now() "
        "FROM generate_series(0, 99) AS g")
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'q', 'keyed', 'k' || lpad(g::text, 3, '0') FROM generate_series(0, 100) AS g")

    def keys_of(ids: list[int]) -> list[str]:
        return [str(k) for i in ids
                for (k,) in sql("SELECT concurrency_key FROM jobs WHERE id = %s", i)]

    async def use(conn: WorkerConnection) -> list[list[str]]:
        keys = []
        for _ in range(7):
            got = await conn.claim_limited(["keyed"], ["q"], 1, "w:1:x", 30, locked=True)
            keys.append(keys_of([j.id for j in got.jobs]))
        sql("UPDATE jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
            "locked_until = NULL WHERE state = 'running' AND concurrency_key = 'k000' "
            "AND locked_by = 'other:1:x'")
        # a full round of the 101 keys is at most 7 claims: k000 comes round within it
        for _ in range(7):
            got = await conn.claim_limited(["keyed"], ["q"], 1, "w:1:x", 30, locked=True)
            keys.append(keys_of([j.id for j in got.jobs]))
        return keys
    keys = with_worker_conn(database_url, use)
    assert keys[:7] == [[]] * 6 + [["k100"]]
    assert [k for ks in keys[7:] for k in ks] == ["k000"]


def test_the_locked_pass_claims_only_the_tasks_it_locked(database_url: str, sql: Sql) -> None:
    """Lock and claim go out in one pipeline: the claim cannot see the lock's answer, so it
    reads the tasks locked from the transaction's setting. A task whose lock is held
    elsewhere is not claimed (the claim would otherwise run unserialised), and nothing of
    the setting outlives the transaction."""
    _task(sql, "a", {"concurrency_limit": 1})
    _task(sql, "b", {"concurrency_limit": 1})
    sql("INSERT INTO jobs (queue, task, concurrency_key) VALUES ('q', 'a', ''), ('q', 'b', '')")
    holder = psycopg.connect(database_url, options="-c search_path=skiplock,public")
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                       "current_schema() || '/limit/' || 'a', 0))")

        async def use(conn: WorkerConnection) -> tuple[list[str], list[str], object]:
            got = await conn.claim_limited(["a", "b"], ["q"], 5, "w:1:x", 30, locked=True)
            again = await conn.claim_limited(["a", "b"], ["q"], 5, "w:1:x", 30, locked=True)
            conn_ = await conn._get()
            left = await (await conn_.execute(
                "SELECT current_setting('skiplock.limit_locks', true)")).fetchone()
            return [j.task for j in got.jobs], [j.task for j in again.jobs], left
        first, second, left = with_worker_conn(database_url, use)
    finally:
        holder.rollback()
        holder.close()
    assert first == ["b"]
    assert second == []  # a still locked elsewhere, b at its cap
    assert left in (None, ("",))


def test_an_older_registration_does_not_take_the_limit_back(
        database_url: str, sql: Sql) -> None:
    """S5: v0 had no limits, v1 says 5, v2 says 3, registered in that order: 3 for
    everybody. A v1 or v0 pod restarting while v2 runs leaves it at 3 (it used to write 5,
    or clear it, until the next v2 pod started). Once no v2 worker is live (a rollback), a
    v1 registration wins again, and so does the heartbeat's settling when the last v2 worker
    goes after the last v1 pod registered."""
    _task(sql, "t", None)
    v1, v2 = {"concurrency_limit": 5}, {"concurrency_limit": 3}

    async def register(conn: WorkerConnection, worker: str,
                       limits: dict[str, Any] | None) -> None:
        await conn.register_worker(worker, ["q"], {"t": {}}, 2, 30)
        await conn.register_limits({"t": limits})

    def stored() -> Any:
        return sql("SELECT limits FROM tasks WHERE name = 't'")[0][0]

    async def use(conn: WorkerConnection) -> list[Any]:
        seen = []
        for worker, limits in [("v0-a", None), ("v1-a", v1), ("v2-a", v2),
                               ("v1-b", v1),     # an old pod restarts mid-rollout
                               ("v0-b", None)]:  # and one of the version without limits
            await register(conn, worker, limits)
            seen.append(stored())
        seen.append((await conn.limited_tasks())["t"])  # the heartbeat keeps it
        # rollback: v2-a gone, then a v1 pod registers
        sql("DELETE FROM workers WHERE id = 'v2-a'")
        await register(conn, "v1-c", v1)
        seen.append(stored())
        # v2 once more (its definition has a live declarer again: it wins), then its only
        # worker goes while nobody registers: the heartbeat's settling brings back v1
        await register(conn, "v2-b", v2)
        seen.append(stored())
        sql("UPDATE workers SET last_seen = now() - interval '1 hour' WHERE id = 'v2-b'")
        seen.append((await conn.limited_tasks())["t"])
        seen.append(stored())
        return seen
    assert with_worker_conn(database_url, use) == [None, v1, v2, v2, v2, v2, v1, v2, v1, v1]


def test_a_slower_settle_does_not_put_an_older_winner_back(database_url: str, sql: Sql) -> None:
    """tasks.limits is written by compare-and-set: a heartbeat's settle that read the row
    before a newer registration committed (and then waited on its row lock) leaves the newer
    limit alone instead of writing the older winner its snapshot chose."""
    stale, v1, v2 = {"concurrency_limit": 7}, {"concurrency_limit": 5}, {"concurrency_limit": 3}
    _task(sql, "t", None)

    async def use(conn: WorkerConnection) -> Any:
        await conn.register_worker("v1-a", ["q"], {"t": {}}, 2, 30)
        await conn.register_limits({"t": v1})
        # the row as a slow settle's snapshot will see it: not the winner (v1)
        sql("UPDATE tasks SET limits = %s WHERE name = 't'", json.dumps(stale))
        with psycopg.connect(database_url) as newer:
            # a newer registration's write, not committed yet: the settle waits on its lock
            newer.execute("UPDATE skiplock.tasks SET limits = %s WHERE name = 't'",
                          (json.dumps(v2),))
            settle = asyncio.create_task(conn.limited_tasks())
            await asyncio.sleep(1.0)
            assert not settle.done(), "the settle should be waiting on the row lock"
            newer.commit()
        await settle
        return sql("SELECT limits FROM tasks WHERE name = 't'")[0][0]

    assert with_worker_conn(database_url, use) == v2


def test_the_limited_claims_run_generic_plans_and_the_plain_claim_keeps_its_own(
        database_url: str, sql: Sql) -> None:
    """The limited claims (both passes) tell the plan cache to use its generic plan, for
    their own transaction only: planning them cost three times what running the unlocked
    pass does (docs/limits.md "Cost"). On the worker's own connection, after several claims
    of each: every execution of a limited claim used the generic plan, none planned afresh;
    the plain claim, whose generic plan is slow, still gets custom plans; and the setting is
    gone once the claim's transaction is."""
    _task(sql, "wide", {"concurrency_limit": 1000})
    _task(sql, "keyed", {"key": "arg:t", "key_limit": 2})
    sql("INSERT INTO tasks (name, params, max_attempts, queue) VALUES ('free', '{}', 3, 'q')")
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'q', 'wide', '' FROM generate_series(1, 20) UNION ALL "
        "SELECT 'q', 'keyed', 'k' || (g % 3) FROM generate_series(1, 20) AS g UNION ALL "
        "SELECT 'q', 'free', NULL FROM generate_series(1, 20)")
    claims = 7  # past the plan cache's 5 custom plans before it chooses for itself

    async def use(conn: WorkerConnection) -> tuple[list[tuple[Any, ...]], int, object]:
        claimed = 0
        for _ in range(claims):
            for locked in (False, True):
                got = await conn.claim_limited(["wide", "keyed"], ["q"], 1, "w:1:x", 30,
                                               locked=locked)
                claimed += len(got.jobs)
            claimed += len(await conn.claim(["q"], 1, "w:1:x", 30, skip_tasks=["wide", "keyed"]))
        raw = await conn._get()
        plans = await (await raw.execute(
            "SELECT CASE WHEN statement LIKE '%WITH RECURSIVE lim%' THEN 'locked' "
            "            WHEN statement LIKE '%several tasks served%' THEN 'unlocked' "
            "            WHEN statement LIKE '%jobs this worker''s version cannot run%' "
            "            THEN 'plain' END AS claim, generic_plans, custom_plans "
            "FROM pg_prepared_statements ORDER BY 1", prepare=False)).fetchall()
        mode = await (await raw.execute("SHOW plan_cache_mode", prepare=False)).fetchone()
        return [p for p in plans if p[0] is not None], claimed, mode
    plans, claimed, mode = with_worker_conn(database_url, use)
    assert claimed > claims  # the claims claimed: each pass ran its statement to the end
    assert plans == [("locked", claims, 0), ("plain", 0, claims), ("unlocked", claims, 0)]
    assert mode == ("auto",)


def _jobs_scans(plan: dict[str, Any]) -> list[tuple[str, float]]:
    """(node type, rows it read: returned plus filtered out, over all its loops) of every
    node of an EXPLAIN (ANALYZE, FORMAT JSON) plan that reads the jobs table."""
    found = []
    if plan.get("Relation Name") == "jobs":
        loops = plan.get("Actual Loops", 0)
        found.append((plan["Node Type"],
                      loops * (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0))))
    for child in plan.get("Plans", []):
        found += _jobs_scans(child)
    return found


def test_a_history_of_finished_jobs_ahead_is_not_read_by_the_limited_claims(
        database_url: str, sql: Sql) -> None:
    """30,000 finished jobs of a keyed task stored ahead of its 10,000 queued ones (the heap
    order of a queue that has run a while). Whether the task has a runnable job was an
    EXISTS, which the planner, seeing most of the task's rows match, made a seq scan: every
    unlocked claim read all 30,000 (at 300,000, 29 ms a claim). Both passes, with the
    parameters the worker sends: no seq scan of jobs, and no scan reads more rows than a
    batch's worth of keys and jobs."""
    _task(sql, "keyed", {"key": "arg:t", "key_limit": 5})
    sql("INSERT INTO jobs (queue, task, concurrency_key, state, finished_at) "
        "SELECT 'q', 'keyed', (g % 100)::text, 'succeeded', now() "
        "FROM generate_series(1, 30000) AS g")
    sql("INSERT INTO jobs (queue, task, concurrency_key) "
        "SELECT 'q', 'keyed', (g % 100)::text FROM generate_series(1, 10000) AS g")
    sql("ANALYZE jobs")
    params = {"tasks": ["keyed"], "queues": ["q"], "limit": 20, "worker_id": "w:1:x",
              "lease_seconds": 30, "skip_ids": [], "key_cursor": "{}"}
    with psycopg.connect(database_url, autocommit=True,
                         options="-c search_path=skiplock,public") as conn:
        plans = {name: conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + queries()[name],
                                    {**params, "locked": locked}).fetchall()[0][0]
                 for name, locked in (("claim_limited_unlocked", False),
                                      ("claim_limited", True))}
    for name, plan in plans.items():
        scans = _jobs_scans(plan[0]["Plan"])
        assert scans, name
        assert [s for s in scans if s[0] == "Seq Scan"] == [], name
        assert max(rows for _, rows in scans) <= 1_000, (name, scans)
