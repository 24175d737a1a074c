"""Shared fixtures: a real PostgreSQL server for the session, a fresh database per test made
from a migrated template (fast), and helpers to run real worker processes."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from skiplock.db import Database
from tests.support.pgserver import PgServer, running_server

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The CLI run in-process points the root logger at the sys.stderr of that moment (the
    test's capture); restored after each test so later tests do not log into a closed file."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with running_server() as server:
        with server.admin() as conn:
            conn.execute("CREATE DATABASE skiplock_template")
        db = Database(server.url("skiplock_template"))
        db.migrate()
        db.close()
        yield server


@pytest.fixture
def database_url(pg: PgServer) -> Iterator[str]:
    name = f"t{os.getpid()}_{next(_counter)}"
    for attempt in range(20):
        try:
            with pg.admin() as conn:
                conn.execute(f"CREATE DATABASE {name} TEMPLATE skiplock_template")
            break
        except psycopg.errors.ObjectInUse:
            # someone is connected to the template (the secret tests point URLs at it, and a
            # stopped test operator's last pass may still be closing its connection): brief
            if attempt == 19:
                raise
            time.sleep(0.5)
    yield pg.url(name)
    try:
        with pg.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    except psycopg.OperationalError:
        pass  # the test left the server stopped; the session teardown removes it all


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    yield database
    database.close()


@pytest.fixture
def sql(database_url: str) -> Iterator[Callable[..., list[tuple[object, ...]]]]:
    """Run raw SQL against the test database (for setting up and checking state)."""
    conn = psycopg.connect(database_url, autocommit=True, options="-c search_path=skiplock,public")

    def run(query: str, *params: object) -> list[tuple[object, ...]]:
        cur = conn.execute(query, params or None)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


class WorkerProcess:
    """A real ``skiplock worker`` process."""

    def __init__(
        self,
        database_url: str,
        app: str,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "test-worker",
    ) -> None:
        self.log_path = Path(f"/tmp/skiplock-worker-{os.getpid()}-{next(_counter)}.log")
        environment = {
            **os.environ,
            "SKIPLOCK_DATABASE_URL": database_url,
            "SKIPLOCK_WORKER_NAME": name,
            "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}",
            **(env or {}),
        }
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skiplock", "worker", app, *args],
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def spawn_worker(database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def spawn(app: str = "tests.tasks:app", *args: str, **kw: object) -> WorkerProcess:
        w = WorkerProcess(database_url, app, *args, **kw)  # type: ignore[arg-type]
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.close()
