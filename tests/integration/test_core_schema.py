"""Migrations: they produce exactly schema.sql, are idempotent and safe to run concurrently."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg

from skiplock import sql
from skiplock.db import Database
from tests.support.pgserver import PgServer


def _dump(pg: PgServer, dbname: str) -> str:
    out = subprocess.run(
        [
            str(pg.bindir / "pg_dump"),
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema=skiplock",
            "--exclude-table=skiplock.schema_migrations",
            "--exclude-table=skiplock.schema_migration_steps",
            pg.url(dbname),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # pg_dump prints a random \restrict token on newer minor versions; it is not schema.
    return "\n".join(line for line in out.splitlines() if not re.match(r"^\\(un)?restrict ", line))


def test_migrations_give_exactly_schema_sql(pg: PgServer) -> None:
    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS schema_from_file")
        conn.execute("CREATE DATABASE schema_from_file")
    with psycopg.connect(pg.url("schema_from_file"), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA skiplock")
        conn.execute("SET search_path TO skiplock, public")
        conn.execute(sql.schema())  # type: ignore[call-overload]
    assert _dump(pg, "skiplock_template") == _dump(pg, "schema_from_file")


def test_migrate_is_idempotent(database_url: str) -> None:
    with Database(database_url) as db:
        assert db.migrate() == []  # the template is already migrated


def test_concurrent_migrate_from_several_processes(pg: PgServer) -> None:
    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_race")
        conn.execute("CREATE DATABASE migrate_race")
    url = pg.url("migrate_race")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "skiplock", "--database-url", url, "migrate"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: run(), range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    outputs = sorted(r.stdout.strip() for r in results)
    assert outputs.count("schema is up to date") == 3
    assert outputs[0].startswith("applied 0001_initial")
    with psycopg.connect(url) as conn:
        versions = conn.execute("SELECT version FROM skiplock.schema_migrations").fetchall()
    assert versions == [(v,) for v, _, _ in sql.migrations()]


def test_schema_name_is_configurable(pg: PgServer) -> None:
    with pg.admin() as conn:
        conn.execute("DROP DATABASE IF EXISTS other_schema")
        conn.execute("CREATE DATABASE other_schema")
    with Database(pg.url("other_schema"), schema="jobs_v2") as db:
        assert db.migrate() == [f"{v:04d}_{name}" for v, name, _ in sql.migrations()]
    with psycopg.connect(pg.url("other_schema")) as conn:
        assert conn.execute("SELECT to_regclass('jobs_v2.jobs') IS NOT NULL").fetchone() == (True,)
