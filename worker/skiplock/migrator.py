"""Applies the schema migrations without blocking a busy table.

A migration file is a transactional part, then optional steps that run outside a transaction::

    ALTER TABLE jobs ADD CONSTRAINT jobs_x CHECK (...) NOT VALID;   -- transactional part

    -- step: no transaction
    ALTER TABLE jobs VALIDATE CONSTRAINT jobs_x

    -- step: no transaction
    -- only if: EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm')
    CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_y ON jobs ...

Why: on a table of millions of rows a plain CREATE INDEX or a validating ADD CONSTRAINT holds a
lock that stops every enqueue, claim and completion for as long as the scan takes. So:

- the transactional part runs with a short ``lock_timeout``: its brief ACCESS EXCLUSIVE locks
  (ADD COLUMN, ADD CONSTRAINT ... NOT VALID) never sit in the lock queue in front of the
  workers' writes for longer than that; on a timeout the transaction is retried with backoff,
  then the migration fails saying which lock it could not take;
- before anything else it locks, ACCESS EXCLUSIVE, every existing table its statements alter
  (ALTER TABLE, a trigger, a plain index or a foreign key on it), in name order, each wait
  bounded by half the server's ``deadlock_timeout`` at most. Taking the weaker lock of one
  statement and then the stronger one of the next (0007: CREATE TRIGGER, then ADD COLUMN)
  deadlocked with a writer waiting behind the first, and the server may cancel either side:
  CI saw the writer's UPDATE cancelled. Locked first, within a time shorter than any
  waiter's deadlock check, the migrator is the only side that can give up (retried);
- each step is one idempotent statement (CONCURRENTLY, IF NOT EXISTS, VALIDATE) that takes only
  locks writers do not wait on, without a statement timeout; a step is recorded when done, so
  an interrupted migration resumes at its first unfinished step. An index left INVALID by an
  interrupted CREATE INDEX CONCURRENTLY is dropped (concurrently) and built again.

The migration's version is recorded with its transactional part: the queries that need the new
columns work from then on; the steps add indexes and validate constraints on old rows.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql

from . import sql
from .errors import MigrationBlocked

log = logging.getLogger("skiplock.migrate")

_STEP = re.compile(r"^-- step: no transaction\s*$", re.MULTILINE)
_ONLY_IF = re.compile(r"^-- only if: (.+)$", re.MULTILINE)
# `-- with NAME: <query>`: {NAME} in the statement becomes the query's one value, quoted as an
# identifier (the schema an extension lives in, known only on the server)
_WITH = re.compile(r"^-- with (\w+): (.+)$", re.MULTILINE)
# the tables a transactional part's statements take a lock on that writers wait for: ALTER
# TABLE, CREATE/DROP TRIGGER ... ON, a plain (not concurrent) CREATE INDEX ... ON, REFERENCES
_ALTERED = re.compile(
    r"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?(\w+)"
    r"|\bTRIGGER\s+(?:IF\s+EXISTS\s+)?\w+\s+(?:[^;]*?\s)?ON\s+(\w+)"
    r"|\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY)(?:IF\s+NOT\s+EXISTS\s+)?\w+\s+ON\s+"
    r"(?:ONLY\s+)?(\w+)"
    r"|\bREFERENCES\s+(\w+)", re.IGNORECASE)
_INDEX_NAME = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+(\w+)", re.IGNORECASE
)


@dataclass(frozen=True)
class Step:
    number: int  # 1-based within its migration
    statement: str
    only_if: str | None = None
    bindings: tuple[tuple[str, str], ...] = ()
    # the index a CREATE INDEX CONCURRENTLY builds: dropped first when an earlier try left it
    # INVALID (IF NOT EXISTS would otherwise keep the broken index for ever)
    index: str | None = None


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    body: str  # the transactional part
    steps: tuple[Step, ...]
    # the tables the transactional part locks first (altered_tables)
    tables: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def parse(version: int, name: str, text: str) -> Migration:
    """Split a migration file into its transactional part and its steps (pure)."""
    parts = _STEP.split(text)
    steps = []
    for number, part in enumerate(parts[1:], start=1):
        only_if = _ONLY_IF.search(part)
        bindings = tuple((m[1], m[2].strip()) for m in _WITH.finditer(part))
        statement = _WITH.sub("", _ONLY_IF.sub("", part))
        # the statement without its comment lines: one statement, no trailing semicolon
        code = "\n".join(
            line for line in statement.splitlines() if not line.lstrip().startswith("--")
        ).strip().rstrip(";").strip()
        if not code or ";" in code:
            raise ValueError(
                f"migration {version:04d}_{name}, step {number}: a step is exactly one statement"
            )
        if re.search(r"\bCREATE\s+(UNIQUE\s+)?INDEX\b", code, re.IGNORECASE) and not (
            _INDEX_NAME.search(code)
        ):
            raise ValueError(
                f"migration {version:04d}_{name}, step {number}: an index step must be "
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS <name> (idempotent, writers keep going)"
            )
        index = _INDEX_NAME.search(code)
        unbound = set(re.findall(r"\{(\w+)\}", code)) - {name for name, _ in bindings}
        if unbound:
            raise ValueError(f"migration {version:04d}_{name}, step {number}: no `-- with` "
                             f"for {sorted(unbound)}")
        steps.append(Step(number, code, only_if[1].strip() if only_if else None, bindings,
                          index[1] if index else None))
    return Migration(version, name, parts[0], tuple(steps), altered_tables(parts[0]))


def altered_tables(body: str) -> tuple[str, ...]:
    """The tables a transactional part's statements lock in a mode writers wait for, in
    name order, without its comments (pure; the migrator locks them first)."""
    code = "\n".join(line.split("--", 1)[0] for line in body.splitlines())
    return tuple(sorted({next(g for g in m.groups() if g).lower()
                         for m in _ALTERED.finditer(code)}))


def lock_budget(lock_timeout: float, deadlock_timeout: float, tables: int) -> float:
    """Seconds each of the first locks may wait (pure): all of them together within half the
    server's deadlock_timeout (and the migration's lock_timeout), so a writer queued behind
    the migrator never reaches its own deadlock check while the migrator waits."""
    return min(lock_timeout, deadlock_timeout / 2) / max(1, tables)


def migrations() -> list[Migration]:
    return [parse(v, n, body) for v, n, body in sql.migrations()]


def pending(
    all_: Iterable[Migration], applied: set[int], steps_done: set[tuple[int, int]]
) -> list[tuple[Migration, bool, list[Step]]]:
    """(migration, its transactional part still to run, its steps still to run), in order
    (pure). A migration applied before steps existed re-runs its idempotent steps once."""
    out = []
    for m in all_:
        todo = [s for s in m.steps if (m.version, s.number) not in steps_done]
        if m.version not in applied or todo:
            out.append((m, m.version not in applied, todo))
    return out


def backoff(attempt: int) -> float:
    """Seconds before retrying a transactional part that hit its lock timeout (pure)."""
    return float(min(30, 2 ** (attempt - 1)))


def _retrying(what: str, attempts: int, run: Callable[[], None],
              sleep: Callable[[float], None] = time.sleep) -> None:
    """Run ``run``, again after a backoff when its lock timed out or the server cancelled it
    to break a deadlock with the workers' writes (CI saw one with writers running): nothing
    of it was applied (a transactional part rolled back; a step is one idempotent statement).
    After ``attempts`` tries, MigrationBlocked says what to do."""
    for attempt in range(1, attempts + 1):
        try:
            run()
            return
        except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable) as exc:
            deadlock = isinstance(exc, psycopg.errors.DeadlockDetected)
            if attempt == attempts:
                raise MigrationBlocked(
                    f"{what}: deadlocked with other sessions {attempts} times; run "
                    "`skiplock migrate` again when the database is less busy. Nothing of "
                    "this part was applied." if deadlock else
                    f"{what}: could not take its lock within the lock timeout, {attempts} "
                    "times; a long transaction holds the table (see pg_stat_activity for "
                    "sessions 'idle in transaction' or long queries), then run "
                    "`skiplock migrate` again. Nothing of this migration was applied."
                ) from None
            delay = backoff(attempt)
            log.warning("%s: %s; retrying in %.0fs", what,
                        "deadlocked with another session" if deadlock
                        else "lock not available within the lock timeout", delay)
            sleep(delay)


def take_lock(conn: psycopg.Connection[Any], key: str,
              sleep: Callable[[float], None] = time.sleep) -> None:
    """The migration lock, taken by polling rather than by a waiting pg_advisory_lock: a
    session waiting in a statement holds a snapshot, and CREATE INDEX CONCURRENTLY in the
    session holding the lock waits for every such snapshot: a deadlock between migrators."""
    tries = 0
    while True:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
        if row and row[0]:
            return
        tries += 1
        if tries % 40 == 0:  # every 10 s
            log.info("waiting for another process's migration to finish (%ds)", tries // 4)
        sleep(0.25)


def apply(conn: psycopg.Connection[Any], schema: str, lock_timeout: float = 5.0,
          attempts: int = 5, sleep: Callable[[float], None] = time.sleep,
          target: int | None = None) -> list[str]:
    """Apply what is pending on ``conn`` (autocommit; the caller holds the migration lock),
    up to version ``target`` (default: all). Returns the labels of the migrations whose
    transactional part ran."""
    schema_id = pgsql.Identifier(schema)
    q = sql.queries()
    conn.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema_id))
    conn.execute(pgsql.SQL("SET search_path TO {}, public").format(schema_id))
    # no statement timeout: the steps may scan a big table, and they block no writer
    conn.execute("SET statement_timeout = 0")
    # but a migrator that dies (a killed pod) must not leave its backend building an index
    # and holding the migration lock: the server checks the client is still there
    conn.execute("SET client_connection_check_interval = '10s'")
    conn.execute(q["migrations_table"])
    conn.execute(q["migration_steps_table"])
    applied = {int(r[0]) for r in conn.execute(q["applied_migrations"])}
    steps_done = {(int(r[0]), int(r[1])) for r in conn.execute(q["applied_migration_steps"])}
    ran: list[str] = []
    wanted = [m for m in migrations() if target is None or m.version <= target]
    for m, body_pending, steps in pending(wanted, applied, steps_done):
        if body_pending:
            def body(m: Migration = m) -> None:
                with conn.transaction():
                    _lock_first(conn, schema, m.tables, lock_timeout)
                    _set_lock_timeout(conn, lock_timeout)
                    conn.execute(m.body)
                    conn.execute(q["record_migration"], {"version": m.version, "name": m.name})
            _retrying(f"migration {m.label}", attempts, body, sleep)
            ran.append(m.label)
        for step in steps:
            def run(m: Migration = m, step: Step = step) -> None:
                _run_step(conn, m, step)
            _retrying(f"migration {m.label} step {step.number}", attempts, run, sleep)
    return ran


def _set_lock_timeout(conn: psycopg.Connection[Any], seconds: float) -> None:
    """For the rest of this transaction, in whole milliseconds (0: no timeout)."""
    conn.execute(pgsql.SQL("SET LOCAL lock_timeout = {}").format(
        pgsql.Literal(f"{int(seconds * 1000)}ms")))


def _lock_first(conn: psycopg.Connection[Any], schema: str, tables: tuple[str, ...],
                lock_timeout: float) -> None:
    """ACCESS EXCLUSIVE on those of ``tables`` that exist in ``schema`` (never a table of the
    same name elsewhere on the search path), in order, each wait within lock_budget
    (LockNotAvailable: the part is retried, see _retrying)."""
    if not tables:
        return
    row = conn.execute(sql.queries()["existing_tables"],
                       {"schema": schema, "tables": list(tables)}).fetchone()
    assert row is not None
    existing, deadlock_timeout = list(row[0]), float(row[1])
    # at least 1 ms: a budget rounded down to 0 would mean no timeout at all
    _set_lock_timeout(conn, max(0.001, lock_budget(lock_timeout, deadlock_timeout,
                                                   len(existing))))
    for table in existing:
        conn.execute(pgsql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
            pgsql.Identifier(schema, table)))


def _run_step(conn: psycopg.Connection[Any], m: Migration, step: Step) -> None:
    q = sql.queries()
    if step.only_if is not None:
        row = conn.execute(f"SELECT ({step.only_if})").fetchone()
        if not (row and row[0]):
            # not recorded: the next migrate looks again (pg_trgm installed later, say)
            log.info("migration %s step %d skipped for now (condition false)", m.label,
                     step.number)
            return
    statement = step.statement
    for name, query in step.bindings:
        row = conn.execute(query).fetchone()
        if not row or row[0] is None:
            raise MigrationBlocked(f"migration {m.label} step {step.number}: {name} is unknown")
        statement = statement.replace("{" + name + "}",
                                      pgsql.Identifier(str(row[0])).as_string(conn))
    if step.index is not None:
        row = conn.execute(q["invalid_index"], {"name": step.index}).fetchone()
        if row:
            log.warning("migration %s: index %s was left invalid by an interrupted build; "
                        "dropping it to build it again", m.label, step.index)
            conn.execute(pgsql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                pgsql.Identifier(step.index)))
    started = time.monotonic()
    conn.execute(statement)
    conn.execute(q["record_migration_step"], {"version": m.version, "step": step.number})
    log.info("migration %s step %d done in %.1fs", m.label, step.number,
             time.monotonic() - started)
