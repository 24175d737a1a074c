"""The migration plan (pure): steps split out of a migration file, what is still pending, and
the rule every shipped migration must follow on the big tables."""

from __future__ import annotations

import re

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from skiplock import migrator
from skiplock.errors import MigrationBlocked

TEXT = """
ALTER TABLE jobs ADD COLUMN x int;
ALTER TABLE jobs ADD CONSTRAINT jobs_x CHECK (x > 0) NOT VALID;

-- step: no transaction
-- only if: EXISTS (SELECT 1)
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_x_idx ON jobs (x)
    WHERE x IS NOT NULL;

-- step: no transaction
-- a comment about the next statement
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_x
"""


def test_a_migration_splits_into_its_transaction_and_its_steps() -> None:
    m = migrator.parse(7, "x", TEXT)
    assert "ADD COLUMN x" in m.body and "CONCURRENTLY" not in m.body
    assert [s.number for s in m.steps] == [1, 2]
    first, second = m.steps
    assert first.only_if == "EXISTS (SELECT 1)"
    assert first.index == "jobs_x_idx"
    assert first.statement.startswith("CREATE INDEX CONCURRENTLY") and ";" not in first.statement
    assert "only if" not in first.statement
    assert second.statement == "ALTER TABLE jobs VALIDATE CONSTRAINT jobs_x"
    assert second.only_if is None and second.index is None
    assert m.label == "0007_x"


@pytest.mark.parametrize("step", [
    "ALTER TABLE jobs VALIDATE CONSTRAINT a; ALTER TABLE jobs VALIDATE CONSTRAINT b",
    "CREATE INDEX jobs_y ON jobs (y)",  # would hold a write-blocking lock
    "CREATE INDEX CONCURRENTLY jobs_y ON jobs (y)",  # not idempotent: a rerun fails
    "-- only a comment",
])
def test_a_step_that_is_not_one_idempotent_statement_is_refused(step: str) -> None:
    with pytest.raises(ValueError, match="step 1"):
        migrator.parse(9, "bad", f"SELECT 1;\n-- step: no transaction\n{step}\n")


def test_every_shipped_migration_parses() -> None:
    found = migrator.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert any(m.steps for m in found)


def blocking_statements(body: str) -> list[str]:
    """Statements of a transactional part that scan jobs or results holding a lock every
    write waits on: a plain CREATE INDEX, a validating ADD CONSTRAINT ... CHECK."""
    code = "\n".join(line for line in body.splitlines() if not line.lstrip().startswith("--"))
    found = []
    for statement in (" ".join(s.split()) for s in code.split(";")):
        big = re.search(r"\b(ON|ALTER TABLE)\s+(jobs|results)\b", statement, re.IGNORECASE)
        index = re.search(r"\bCREATE\s+(UNIQUE\s+)?INDEX\b(?!\s+CONCURRENTLY)", statement,
                          re.IGNORECASE)
        check = re.search(r"\bADD\s+CONSTRAINT\b.*\bCHECK\b", statement, re.IGNORECASE)
        if big and (index or (check and "NOT VALID" not in statement.upper())):
            found.append(statement)
    return found


def test_the_rule_finds_what_blocks() -> None:
    assert blocking_statements("CREATE INDEX jobs_a ON jobs (a);") != []
    assert blocking_statements("ALTER TABLE results ADD CONSTRAINT r CHECK (x > 0);") != []
    assert blocking_statements("ALTER TABLE jobs ADD CONSTRAINT r CHECK (x > 0) NOT VALID;") == []
    assert blocking_statements("CREATE INDEX k ON idempotency_keys (created_at);") == []


@pytest.mark.parametrize("m", migrator.migrations()[1:], ids=lambda m: m.label)
def test_later_migrations_never_block_writes_on_the_big_tables(m: migrator.Migration) -> None:
    """After 0001 (which creates them empty), jobs and results may hold millions of rows: an
    index is built concurrently and a CHECK is added NOT VALID and validated in a step."""
    assert blocking_statements(m.body) == []


def _m(version: int, steps: int) -> migrator.Migration:
    steps_ = tuple(migrator.Step(n, f"ALTER TABLE jobs VALIDATE CONSTRAINT c{n}")
                   for n in range(1, steps + 1))
    return migrator.Migration(version, f"m{version}", "SELECT 1", steps_)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=6), st.data())
def test_pending_is_whatever_is_not_recorded_in_order(
    step_counts: list[int], data: st.DataObject
) -> None:
    all_ = [_m(v, n) for v, n in enumerate(step_counts, start=1)]
    applied = data.draw(st.sets(st.sampled_from([m.version for m in all_])))
    every_step = [(m.version, s.number) for m in all_ for s in m.steps]
    done = data.draw(st.sets(st.sampled_from(every_step))) if every_step else set()
    plan = migrator.pending(all_, applied, done)
    assert [m.version for m, _, _ in plan] == sorted(m.version for m, _, _ in plan)
    for m in all_:
        entry = next((p for p in plan if p[0] is m), None)
        todo = [s.number for s in m.steps if (m.version, s.number) not in done]
        if m.version in applied and not todo:
            assert entry is None
        else:
            assert entry is not None
            assert entry[1] is (m.version not in applied)
            assert [s.number for s in entry[2]] == todo


def test_a_lock_timeout_is_retried_with_backoff_then_reported() -> None:
    sleeps: list[float] = []
    calls = []

    def blocked() -> None:
        calls.append(1)
        raise psycopg.errors.LockNotAvailable("canceling statement due to lock timeout")

    with pytest.raises(MigrationBlocked, match=r"migration 0004_x: could not take its lock .* 4 "
                                               r"times.*pg_stat_activity"):
        migrator._retrying("migration 0004_x", 4, blocked, sleeps.append)
    assert len(calls) == 4
    assert sleeps == [1.0, 2.0, 4.0]
    assert migrator.backoff(20) == 30.0


@pytest.mark.parametrize("error", [psycopg.errors.LockNotAvailable,
                                   psycopg.errors.DeadlockDetected])
def test_a_lock_timeout_or_a_deadlock_then_success_runs_once_more(
        error: type[psycopg.Error]) -> None:
    """A transactional part (or a step) whose lock timed out, or that the server cancelled
    to break a deadlock with the workers' writes (CI saw one with writers running during the
    migration), is tried again."""
    outcomes = iter([error("x"), None])
    sleeps: list[float] = []

    def run() -> None:
        exc = next(outcomes)
        if exc:
            raise exc

    migrator._retrying("m", 3, run, sleeps.append)
    assert sleeps == [1.0]


def test_a_deadlock_every_time_is_reported() -> None:
    def always() -> None:
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    with pytest.raises(MigrationBlocked, match=r"m: deadlocked with other sessions 2 times"):
        migrator._retrying("m", 2, always, lambda _: None)


def test_a_step_binds_server_side_names() -> None:
    m = migrator.parse(6, "x", "SELECT 1;\n-- step: no transaction\n"
                       "-- with ext: SELECT nspname FROM pg_namespace LIMIT 1\n"
                       "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON jobs USING gin "
                       "(e {ext}.gin_trgm_ops)\n")
    (step,) = m.steps
    assert step.bindings == (("ext", "SELECT nspname FROM pg_namespace LIMIT 1"),)
    assert "-- with" not in step.statement and "{ext}" in step.statement
    with pytest.raises(ValueError, match="no `-- with` for \\['other'\\]"):
        migrator.parse(6, "x", "SELECT 1;\n-- step: no transaction\n"
                       "ALTER TABLE jobs VALIDATE CONSTRAINT {other}\n")


def test_the_tables_a_transactional_part_locks_first() -> None:
    body = """
    -- ALTER TABLE commented_out ADD COLUMN x int;
    CREATE TABLE fresh (id bigint REFERENCES Jobs (id));
    CREATE TRIGGER t AFTER UPDATE OF state ON jobs FOR EACH ROW EXECUTE FUNCTION f();
    DROP TRIGGER IF EXISTS old_t ON results;
    ALTER TABLE IF EXISTS ONLY tasks ADD COLUMN y int;  -- ALTER TABLE nope
    CREATE UNIQUE INDEX fresh_idx ON fresh (id);
    """
    assert migrator.altered_tables(body) == ("fresh", "jobs", "results", "tasks")
    # a concurrent index build is a step's, outside the part: no lock writers wait on
    assert migrator.altered_tables(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON jobs (queue)") == ()


@pytest.mark.parametrize(("lock_timeout", "deadlock", "tables", "budget"), [
    (5.0, 1.0, 1, 0.5), (5.0, 1.0, 2, 0.25), (0.2, 1.0, 1, 0.2), (5.0, 0.1, 0, 0.05)])
def test_the_first_locks_wait_less_than_a_deadlock_check(
        lock_timeout: float, deadlock: float, tables: int, budget: float) -> None:
    assert migrator.lock_budget(lock_timeout, deadlock, tables) == pytest.approx(budget)
