"""Shared helpers for the failure-mode suite: an audit trail of job transitions recorded by a
trigger inside Postgres (``tests.support.invariants.assert_invariants`` checks it), markers the
tasks write, and SQL that survives a database restart."""

from __future__ import annotations

from typing import Any

from tests.support.invariants import AUDIT_TABLE, Sql

# Every state change of every job, written by the database itself in the same transaction as
# the change: an independent record of who claimed which attempt, and what run_at each retry got.
AUDIT_DDL = f"""
CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
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
        INSERT INTO {AUDIT_TABLE} (job_id, old_state, new_state, attempts, run_at, locked_by,
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
               f"FROM {AUDIT_TABLE} WHERE job_id = %s ORDER BY seq", job_id)


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
