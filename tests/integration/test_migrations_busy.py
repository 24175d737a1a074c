"""Migrations on a big, busy table: writers keep going while indexes are built and
constraints validated, a migration stuck behind a long transaction gives up instead of
queueing every write behind it, and an interrupted migration resumes where it stopped."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from skiplock import migrator
from skiplock.db import Database
from skiplock.errors import MigrationBlocked
from tests.support.pgserver import PgServer

_counter = iter(range(10**6))


@pytest.fixture
def empty_url(pg: PgServer) -> Iterator[str]:
    name = f"mig_{next(_counter)}"
    with pg.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield pg.url(name)
    with pg.admin() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _migrate(url: str, **kw: object) -> list[str]:
    with Database(url) as db:
        return db.migrate(**kw)  # type: ignore[arg-type]


def _catalogue(url: str) -> tuple[list[tuple[str, str]], list[tuple[str, str, bool]]]:
    """Index definitions and constraints (with whether each is validated) of the schema."""
    with psycopg.connect(url) as conn:
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef || CASE WHEN x.indisvalid THEN '' ELSE ' INVALID' END"
            " FROM pg_indexes AS i JOIN pg_class AS c ON c.relname = i.indexname"
            " AND c.relnamespace = 'skiplock'::regnamespace"
            " JOIN pg_index AS x ON x.indexrelid = c.oid"
            " WHERE i.schemaname = 'skiplock' AND i.tablename NOT LIKE 'schema_migration%'"
            " ORDER BY 1").fetchall()
        constraints = conn.execute(
            "SELECT conname, pg_get_constraintdef(oid), convalidated FROM pg_constraint"
            " WHERE connamespace = 'skiplock'::regnamespace"
            " AND conrelid::regclass::text NOT LIKE '%%schema_migration%%' ORDER BY 1").fetchall()
    return ([(str(a), str(b)) for a, b in indexes],
            [(str(a), str(b), bool(c)) for a, b, c in constraints])


def _migrating_in_background(url: str, outcome: list[BaseException | list[str]],
                             **kw: object) -> threading.Thread:
    """A migration started in a thread (its result or error appended to ``outcome``), once
    it waits for its ACCESS EXCLUSIVE lock on jobs."""
    def migrate() -> None:
        try:
            outcome.append(_migrate(url, **kw))
        except BaseException as exc:
            outcome.append(exc)

    mig = threading.Thread(target=migrate)
    mig.start()
    with psycopg.connect(url, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = "
                "'AccessExclusiveLock' AND relation = 'skiplock.jobs'::regclass").fetchone()
            if row and row[0]:
                return mig
            time.sleep(0.01)
    pytest.fail("the migration never waited for its lock")


def _steps_recorded(url: str) -> set[tuple[int, int]]:
    with psycopg.connect(url) as conn:
        return {(int(v), int(s)) for v, s in conn.execute(
            "SELECT version, step FROM skiplock.schema_migration_steps")}


ALL_STEPS = {(m.version, s.number) for m in migrator.migrations() for s in m.steps}


def test_a_million_rows_with_writers_running(empty_url: str, pg: PgServer) -> None:
    """From version 1 with 1M rows to the newest while two writers insert and claim: every
    write succeeds, writes complete while an index is being built, and the result is exactly
    the schema a fresh database gets."""
    assert _migrate(empty_url, target=1) == ["0001_initial"]
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("""
            INSERT INTO skiplock.jobs (queue, task, state, attempts, finished_at, last_error)
            SELECT 'q' || (i % 20), 'task', CASE WHEN i % 50 = 0 THEN 'queued'
                                                   WHEN i % 10 = 0 THEN 'dead'
                                                   ELSE 'succeeded' END::skiplock.job_state,
                   1, CASE WHEN i % 50 <> 0 THEN now() END,
                   CASE WHEN i % 10 = 0 THEN 'boom ' || i END
            FROM generate_series(1, 1000000) AS i""")
        conn.execute("VACUUM ANALYZE skiplock.jobs")

    stop = threading.Event()
    writes: list[float] = []
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        # the workload of a worker of version 1: enqueue, claim one job, finish it
        try:
            with psycopg.connect(empty_url, autocommit=True) as conn:
                deadline = time.monotonic() + 180
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.execute("INSERT INTO skiplock.jobs (queue, task) VALUES (%s, 't')",
                                 [f"w{n}"])
                    conn.execute("""
                        WITH picked AS (SELECT id FROM skiplock.jobs
                                        WHERE state = 'queued' AND queue = %s
                                        ORDER BY priority, run_at, id LIMIT 1
                                        FOR UPDATE SKIP LOCKED)
                        UPDATE skiplock.jobs AS j SET state = 'succeeded', finished_at = now(),
                               attempts = j.attempts + 1
                        FROM picked WHERE j.id = picked.id""", [f"w{n}"])
                    writes.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    builds: list[tuple[float, bool]] = []

    def sampler() -> None:
        with psycopg.connect(empty_url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT count(*) FROM pg_stat_progress_create_index"
                                   " WHERE command = 'CREATE INDEX CONCURRENTLY'").fetchone()
                builds.append((time.monotonic(), bool(row and row[0])))
                time.sleep(0.01)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    try:
        while len(writes) < 20 and not errors:
            time.sleep(0.01)
        applied = _migrate(empty_url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert applied == [m.label for m in migrator.migrations()[1:]]

    # writes completed inside a window where an index build was running throughout
    windows: list[tuple[float, float]] = []
    start: float | None = None
    for at, building in builds:
        if building and start is None:
            start = at
        elif not building and start is not None:
            windows.append((start, at))
            start = None
    assert windows, "no CREATE INDEX CONCURRENTLY was seen running"
    during = sum(1 for w in writes for a, b in windows if a < w < b)
    assert during > 0, f"no write completed during {len(windows)} index builds"

    fresh_indexes, fresh_constraints = _catalogue(pg.url("skiplock_template"))
    indexes, constraints = _catalogue(empty_url)
    assert indexes == fresh_indexes
    assert constraints == fresh_constraints
    assert all(valid for _, _, valid in constraints)
    assert _steps_recorded(empty_url) == ALL_STEPS


def test_a_migration_behind_a_long_transaction_gives_up_without_queueing_writes(
    empty_url: str,
) -> None:
    """A report holding the table (any open transaction that read it) and a migration that
    needs a brief exclusive lock: without a lock timeout every write would queue behind the
    waiting migration until the report ends. The write goes through; the migration reports
    what blocked it and applies nothing; once the report ends it applies."""
    _migrate(empty_url, target=3)
    with psycopg.connect(empty_url) as report:
        report.execute("SELECT count(*) FROM skiplock.jobs")  # holds ACCESS SHARE until commit
        outcome: list[BaseException | list[str]] = []
        mig = _migrating_in_background(empty_url, outcome, lock_timeout=0.5, attempts=2)
        done = threading.Event()

        def write() -> None:
            with psycopg.connect(empty_url, autocommit=True) as w:
                w.execute("INSERT INTO skiplock.jobs (queue, task) VALUES ('q', 't')")
            done.set()

        threading.Thread(target=write, daemon=True).start()
        # the report is still open: only the migration giving up lets the write through
        assert done.wait(20), "the write queued behind the waiting migration"
        mig.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], MigrationBlocked), outcome
        message = str(outcome[0])
        assert "0004_job_control" in message and "2 times" in message
        assert "pg_stat_activity" in message
        cols = report.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'skiplock'"
            " AND table_name = 'jobs' AND column_name = 'cancel_requested_at'").fetchone()
        assert cols == (0,)  # nothing of 0004 was applied
        report.rollback()  # the report ends
    # the rest, from the one that gave up on, applies once the report is gone
    later = [m.label for m in migrator.migrations() if m.version >= 4]
    assert later[0] == "0004_job_control" and _migrate(empty_url) == later


def test_an_index_left_invalid_by_an_interrupted_build_is_built_again(
    empty_url: str, pg: PgServer
) -> None:
    _migrate(empty_url)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("DROP INDEX skiplock.jobs_unrunnable_idx")
        conn.execute("DELETE FROM skiplock.schema_migration_steps WHERE version = 3")
        conn.execute("INSERT INTO skiplock.jobs (queue, task, unrunnable_since)"
                     " VALUES ('q', 't', now()), ('q', 't', now())")
        # a concurrent build that fails half way leaves an INVALID index under the name
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY jobs_unrunnable_idx"
                         " ON skiplock.jobs (queue)"
                         " WHERE state = 'queued' AND unrunnable_since IS NOT NULL")
        assert ("jobs_unrunnable_idx",) in conn.execute(
            "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
            " WHERE NOT i.indisvalid").fetchall()
    assert _migrate(empty_url) == []
    assert _catalogue(empty_url)[0] == _catalogue(pg.url("skiplock_template"))[0]
    assert _steps_recorded(empty_url) == ALL_STEPS


def test_a_database_migrated_before_steps_existed_records_them_without_changes(
    empty_url: str, pg: PgServer
) -> None:
    _migrate(empty_url)
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("DROP TABLE skiplock.schema_migration_steps")
    before = _catalogue(empty_url)
    assert _migrate(empty_url) == []
    assert _catalogue(empty_url) == before == _catalogue(pg.url("skiplock_template"))
    assert _steps_recorded(empty_url) == ALL_STEPS


def test_the_trigram_index_uses_pg_trgm_wherever_it_is_installed(empty_url: str) -> None:
    """Supabase and others keep extensions in their own schema, off the search_path."""
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA extensions")
        conn.execute("CREATE EXTENSION pg_trgm SCHEMA extensions")
    _migrate(empty_url)
    indexes = dict(_catalogue(empty_url)[0])
    assert "extensions.gin_trgm_ops" in indexes["jobs_last_error_trgm_idx"]
    assert "INVALID" not in indexes["jobs_last_error_trgm_idx"]
    assert _steps_recorded(empty_url) == ALL_STEPS


def test_a_writer_queued_between_two_locks_of_a_migration_is_never_the_one_cancelled(
    empty_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transactional part that takes a weaker lock on jobs, then a stronger one (0007:
    CREATE TRIGGER, then ADD COLUMN), and a writer that holds a row lock (a claim's FOR
    UPDATE) and then updates while the migration waits. Taken in that order the writer's
    UPDATE waited for the trigger's lock the migration held, while the migration waited for
    the writer: the server cancelled the writer's UPDATE at once (CI saw it in the test
    above, between the claim's FOR UPDATE and its UPDATE). The migrator now locks jobs
    first, holding nothing the writer waits for: the UPDATE goes through, then the
    migration applies."""
    _migrate(empty_url)
    real = migrator.migrations()
    extra = migrator.parse(99, "two_locks", (
        "CREATE TRIGGER jobs_two_locks AFTER TRUNCATE ON jobs FOR EACH STATEMENT "
        "EXECUTE FUNCTION notify_jobs_finished();\n"
        "ALTER TABLE jobs ADD COLUMN two_locks int;\n"))
    assert extra.tables == ("jobs",)
    monkeypatch.setattr(migrator, "migrations", lambda: [*real, extra])
    with psycopg.connect(empty_url, autocommit=True) as conn:
        [(job,)] = conn.execute("INSERT INTO skiplock.jobs (queue, task) VALUES ('q', 't') "
                                "RETURNING id").fetchall()
    outcome: list[BaseException | list[str]] = []
    with psycopg.connect(empty_url) as writer:
        writer.execute("SELECT id FROM skiplock.jobs WHERE id = %s FOR UPDATE", [job])
        mig = _migrating_in_background(empty_url, outcome)
        writer.execute("UPDATE skiplock.jobs SET priority = 1 WHERE id = %s", [job])
        writer.commit()
    mig.join(60)
    assert outcome == [["0099_two_locks"]]


def test_an_application_table_of_the_same_name_is_never_locked(empty_url: str) -> None:
    """The application's own `public.jobs`, read by an open transaction, while Skiplock's
    schema is created from nothing: the first locks are taken in Skiplock's schema only
    (resolved by the search path, 0001's `REFERENCES jobs` found public.jobs and waited
    for the application's reader, then gave up)."""
    with psycopg.connect(empty_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.jobs (id int)")
    with psycopg.connect(empty_url) as app:
        app.execute("SELECT count(*) FROM public.jobs")  # holds ACCESS SHARE until commit
        applied = _migrate(empty_url, lock_timeout=0.5, attempts=2)
        assert applied[0] == "0001_initial"
        [(locks,)] = app.execute(
            "SELECT count(*) FROM pg_locks WHERE relation = 'public.jobs'::regclass "
            "AND mode = 'AccessExclusiveLock'").fetchall()
        assert locks == 0
        app.rollback()
