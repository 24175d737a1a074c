"""The invariants every chaos, recovery and end-to-end test ends on: one implementation for the
test database (the ``sql`` fixture), the failure suite (``ReconnectingSql``) and the kind suite
(``Database.query`` through a port-forward)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# ``(query, *params) -> rows``, run with ``search_path`` including the ``skiplock`` schema.
Sql = Callable[..., list[tuple[Any, ...]]]
TERMINAL = ("succeeded", "dead", "cancelled")
# Written by the trigger that ``tests.support.chaos.install_audit`` installs.
AUDIT_TABLE = "public.job_audit"


def _has_audit(sql: Sql) -> bool:
    return bool(sql(f"SELECT to_regclass('{AUDIT_TABLE}') IS NOT NULL")[0][0])


def assert_invariants(
    sql: Sql,
    job_ids: Iterable[int] | None = None,
    *,
    queue: str | None = None,
    expected_jobs: int | None = None,
    expected_states: dict[int, str] | None = None,
    executions: dict[int, int] | None = None,
) -> dict[str, int]:
    """The end state every chaos test must reach.

    Only the jobs of ``queue`` are checked when it is given (and only their results and audit
    rows); otherwise every job in the database.

    - no job lost or duplicated: exactly ``job_ids`` exist, and/or exactly ``expected_jobs`` of
      them (when given);
    - every job terminal (succeeded, dead or cancelled), none running, none with an expired lease;
    - one result row per succeeded job (none for a task whose handler returns None: such a
      result is no row) and none for any other job (nor for a job that does not exist, when
      not filtered by queue);
    - attempts never exceed max_attempts;
    - with the audit trigger installed: each (job, attempt) was claimed at most once, and no
      job left a terminal state;
    - ``expected_states``: exact final state per job; ``executions``: handler starts per job as
      counted by the task itself (at least one per succeeded job, at most its attempts).
    Returns the count per final state.
    """
    # The same filter on jobs (as ``j``) for every query; ``params`` goes with it.
    scope, params = ("j.queue = %s", (queue,)) if queue is not None else ("true", ())
    rows = sql("SELECT j.id, j.state::text, j.attempts, j.max_attempts, j.locked_by FROM jobs j "
               f"WHERE {scope} ORDER BY j.id", *params)
    by_id = {r[0]: r for r in rows}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    if expected_jobs is not None:
        assert len(rows) == expected_jobs, (
            f"jobs lost or duplicated: {len(rows)} jobs {counts}, expected {expected_jobs}")
    if job_ids is not None:
        wanted = set(job_ids)
        lost = sorted(wanted - set(by_id))
        unexpected = sorted(set(by_id) - wanted)
        assert not lost, f"jobs lost: {lost[:20]}"
        assert not unexpected, f"jobs that nobody enqueued (duplicated inserts?): {unexpected[:20]}"
    not_terminal = [(r[0], r[1], r[4]) for r in rows if r[1] not in TERMINAL]
    assert not not_terminal, f"jobs not terminal (id, state, locked_by): {not_terminal[:20]}"
    stuck = sql("SELECT j.id FROM jobs j WHERE j.state = 'running' AND j.locked_until < now() "
                f"AND {scope}", *params)
    assert stuck == [], f"running jobs with an expired lease: {stuck[:20]}"
    over = [(r[0], r[2], r[3]) for r in rows if r[2] > r[3]]
    assert not over, f"attempts above max_attempts: {over[:20]}"
    # A None result is no row (sql/queries.sql complete_succeeded): a succeeded job of a task
    # whose handler returns None may have none (a test completing such a job by hand with a
    # value has one; tests/integration/test_none_result.py checks the rule itself);
    # outcome_from returns whatever its test asks, None included; every other succeeded job
    # has exactly one (the primary key keeps it at one).
    none_tasks = "j.task IN ('noop', 'slow_retry', 'chatty')"
    missing = sql("SELECT j.id FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
                  f"WHERE j.state = 'succeeded' AND r.job_id IS NULL AND NOT {none_tasks} "
                  f"AND j.task <> 'outcome_from' AND {scope}", *params)
    assert missing == [], f"succeeded without a result: {missing[:20]}"
    # only those tasks may lack a row: a lost result of any other task fails the count below
    ((without,),) = sql("SELECT count(*) FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
                        f"WHERE j.state = 'succeeded' AND r.job_id IS NULL "
                        f"AND ({none_tasks} OR j.task = 'outcome_from') AND {scope}", *params)
    # LEFT JOIN: a result whose job is gone has a NULL state, so it counts as extra when the
    # check is not filtered by queue (with a queue, ``scope`` drops it: it belongs to no queue).
    extra = sql("SELECT r.job_id FROM results r LEFT JOIN jobs j ON j.id = r.job_id "
                f"WHERE j.state IS DISTINCT FROM 'succeeded' AND {scope}", *params)
    assert extra == [], f"results for jobs that did not succeed: {extra[:20]}"
    succeeded = counts.get("succeeded", 0)
    ((results,),) = sql("SELECT count(*) FROM results r LEFT JOIN jobs j ON j.id = r.job_id "
                        f"WHERE {scope}", *params)
    assert results == succeeded - without, (
        f"not one result per success: {results} results for {succeeded} succeeded jobs "
        f"({without} of them returned None)")
    if _has_audit(sql):
        # Unfiltered, every audit row counts (also those of jobs deleted since).
        audited = "true" if queue is None else f"job_id IN (SELECT j.id FROM jobs j WHERE {scope})"
        # A shutdown release hands an attempt back (attempts - 1), so its number is claimed
        # again legitimately; any other repeat is a double claim.
        double = sql(f"""
            WITH t AS (
                SELECT job_id, old_state, new_state, attempts,
                       lag(attempts) OVER (PARTITION BY job_id ORDER BY seq) AS prev_attempts
                FROM {AUDIT_TABLE} WHERE {audited})
            SELECT c.job_id, c.attempts, c.n, coalesce(r.n, 0) FROM
              (SELECT job_id, attempts, count(*) AS n FROM t WHERE new_state = 'running'
               GROUP BY 1, 2) AS c
            LEFT JOIN
              (SELECT job_id, attempts + 1 AS attempts, count(*) AS n FROM t
               WHERE old_state = 'running' AND new_state = 'queued' AND attempts < prev_attempts
               GROUP BY 1, 2) AS r USING (job_id, attempts)
            WHERE c.n > 1 + coalesce(r.n, 0)""", *params)
        assert double == [], f"(job, attempt) claimed more than once: {double[:20]}"
        revived = sql(f"SELECT job_id, old_state, new_state FROM {AUDIT_TABLE} "
                      f"WHERE old_state IN ('succeeded', 'dead') AND {audited} LIMIT 20", *params)
        assert revived == [], f"jobs that left a terminal state: {revived}"
    if expected_states is not None:
        wrong = {i: by_id[i][1] for i, s in expected_states.items() if by_id[i][1] != s}
        assert not wrong, f"final states differ from expected {expected_states}: {wrong}"
    if executions is not None:
        for job_id, (_, state, attempts, _, _) in by_id.items():
            n = executions.get(job_id, 0)
            assert n <= attempts, f"job {job_id} ran {n} times in {attempts} attempts"
            if state == "succeeded":
                assert n >= 1, f"job {job_id} succeeded without its handler running"
    return counts
