"""Shared checks for the failure-mode suite: the invariants every chaos test ends on, an audit
trail of job transitions recorded by a trigger inside Postgres, and small wait helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tests.support.waits import wait_until

Sql = Callable[..., list[tuple[Any, ...]]]
TERMINAL = ("succeeded", "dead", "cancelled")

# Every state change of every job, written by the database itself in the same transaction as
# the change: an independent record of who claimed which attempt, and what run_at each retry got.
AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS public.job_audit (
    seq          bigserial PRIMARY KEY,
    job_id       bigint NOT NULL,
    old_state    text,
    new_state    text NOT NULL,
    attempts     int NOT NULL,
    run_at       timestamptz,
    locked_by    text,
    locked_until timestamptz,
    -- now() of the changing transaction: the very clock run_at and locked_until are set and
    -- compared with, so delays and lease ends can be checked exactly.
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION public.job_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state OR NEW.attempts <> OLD.attempts THEN
        INSERT INTO public.job_audit (job_id, old_state, new_state, attempts, run_at, locked_by,
                                      locked_until)
        VALUES (NEW.id, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state::text END, NEW.state::text,
                NEW.attempts, NEW.run_at, NEW.locked_by, NEW.locked_until);
    END IF;
    RETURN NULL;
END;
$$;
DROP TRIGGER IF EXISTS job_audit_trg ON skiplock.jobs;
CREATE TRIGGER job_audit_trg AFTER INSERT OR UPDATE ON skiplock.jobs
    FOR EACH ROW EXECUTE FUNCTION public.job_audit_fn();
"""


def install_audit(sql: Sql) -> None:
    sql(AUDIT_DDL)


def audit(sql: Sql, job_id: int) -> list[tuple[Any, ...]]:
    """(old_state, new_state, attempts, run_at, locked_by, locked_until, at) in order."""
    return sql("SELECT old_state, new_state, attempts, run_at, locked_by, locked_until, at "
               "FROM public.job_audit WHERE job_id = %s ORDER BY seq", job_id)


def _has_audit(sql: Sql) -> bool:
    return bool(sql("SELECT to_regclass('public.job_audit') IS NOT NULL")[0][0])


def assert_invariants(sql: Sql, job_ids: Iterable[int] | None = None, *,
                      expected_states: dict[int, str] | None = None,
                      executions: dict[int, int] | None = None) -> dict[str, int]:
    """The end state every chaos test must reach.

    - no job lost or duplicated: exactly ``job_ids`` exist (when given);
    - every job terminal (succeeded, dead or cancelled), none running, none with an expired lease;
    - one result row per succeeded job and none for any other job;
    - attempts never exceed max_attempts;
    - with the audit trigger installed: each (job, attempt) was claimed at most once, and no
      job left a terminal state;
    - ``expected_states``: exact final state per job; ``executions``: handler starts per job as
      counted by the task itself (at least one per succeeded job, at most its attempts).
    Returns the count per final state.
    """
    rows = sql("SELECT id, state::text, attempts, max_attempts, locked_until FROM jobs ORDER BY id")
    by_id = {r[0]: r for r in rows}
    if job_ids is not None:
        wanted = set(job_ids)
        lost = sorted(wanted - set(by_id))
        unexpected = sorted(set(by_id) - wanted)
        assert not lost, f"jobs lost: {lost[:20]}"
        assert not unexpected, f"jobs that nobody enqueued (duplicated inserts?): {unexpected[:20]}"
    not_terminal = [(r[0], r[1]) for r in rows if r[1] not in TERMINAL]
    assert not not_terminal, f"jobs not terminal: {not_terminal[:20]}"
    stuck = sql("SELECT id FROM jobs WHERE state = 'running' AND locked_until < now()")
    assert stuck == [], f"running jobs with an expired lease: {stuck[:20]}"
    over = [(r[0], r[2], r[3]) for r in rows if r[2] > r[3]]
    assert not over, f"attempts above max_attempts: {over[:20]}"
    missing = sql("SELECT j.id FROM jobs j LEFT JOIN results r ON r.job_id = j.id "
                  "WHERE j.state = 'succeeded' AND r.job_id IS NULL")
    assert missing == [], f"succeeded without a result: {missing[:20]}"
    extra = sql("SELECT r.job_id FROM results r LEFT JOIN jobs j ON j.id = r.job_id "
                "WHERE j.state IS DISTINCT FROM 'succeeded'")
    assert extra == [], f"results for jobs that did not succeed: {extra[:20]}"
    succeeded = sum(1 for r in rows if r[1] == "succeeded")
    assert sql("SELECT count(*) FROM results") == [(succeeded,)], "not one result per success"
    if _has_audit(sql):
        # A shutdown release hands an attempt back (attempts - 1), so its number is claimed
        # again legitimately; any other repeat is a double claim.
        double = sql("""
            WITH t AS (
                SELECT job_id, old_state, new_state, attempts,
                       lag(attempts) OVER (PARTITION BY job_id ORDER BY seq) AS prev_attempts
                FROM public.job_audit)
            SELECT c.job_id, c.attempts, c.n, coalesce(r.n, 0) FROM
              (SELECT job_id, attempts, count(*) AS n FROM t WHERE new_state = 'running'
               GROUP BY 1, 2) AS c
            LEFT JOIN
              (SELECT job_id, attempts + 1 AS attempts, count(*) AS n FROM t
               WHERE old_state = 'running' AND new_state = 'queued' AND attempts < prev_attempts
               GROUP BY 1, 2) AS r USING (job_id, attempts)
            WHERE c.n > 1 + coalesce(r.n, 0)""")
        assert double == [], f"(job, attempt) claimed more than once: {double[:20]}"
        revived = sql("SELECT job_id, old_state, new_state FROM public.job_audit "
                      "WHERE old_state IN ('succeeded', 'dead') LIMIT 20")
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
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    return counts


def read_marker(path: Any) -> list[tuple[int, int, str, int]]:
    """Lines the ``tracked`` and ``sleep`` tasks append: (job_id, attempt, worker_id, pid)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        job, attempt, worker, pid = line.split()[:4]
        out.append((int(job), int(attempt), worker, int(pid)))
    return out


def executions(path: Any) -> dict[int, int]:
    counts: dict[int, int] = {}
    for job, _, _, _ in read_marker(path):
        counts[job] = counts.get(job, 0) + 1
    return counts


def wait_for(predicate: Callable[[], Any], timeout: float, message: str,
             interval: float = 0.05) -> Any:
    """``wait_until`` with the argument order this suite reads best in."""
    return wait_until(predicate, timeout=timeout, interval=interval, message=message)


def worker_connections(sql: Sql, role: str = "claim") -> int:
    """Live connections of one worker service in this database (one per worker process)."""
    return int(sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                   "AND application_name = %s", f"skiplock-worker-{role}")[0][0])


def state_of(sql: Sql, job_id: int) -> tuple[str, int]:
    row = sql("SELECT state::text, attempts FROM jobs WHERE id = %s", job_id)
    return (str(row[0][0]), int(row[0][1]))


class ReconnectingSql:
    """Like the ``sql`` fixture, but survives a database restart (reconnects once on error)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: Any = None

    def __call__(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg

        for attempt in (1, 2):
            try:
                if self.conn is None or self.conn.closed or self.conn.broken:
                    self.conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                                options="-c search_path=skiplock,public")
                cur = self.conn.execute(query, params or None)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
