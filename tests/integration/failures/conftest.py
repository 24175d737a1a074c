"""Fixtures for the failure-mode suite: Toxiproxy between clients and the test Postgres, the
audit trigger, marker files, and a guarantee that Postgres is running after every test."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.chaos import ReconnectingSql, install_audit, worker_connections
from tests.support.pgserver import PgServer
from tests.support.toxiproxy import Proxy, Toxiproxy, running_toxiproxy, server_binary
from tests.support.waits import wait_until

_names = itertools.count()

# Short leases keep the suite fast; heartbeats renew every lease/3.
LEASE = 2.0
WORKER_ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "5")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Build Toxiproxy (first run on a machine only) before any test starts, so the build is not
    charged to one test's timeout."""
    if any("toxiproxy" in getattr(item, "fixturenames", ()) for item in items):
        server_binary()


@pytest.fixture(scope="session")
def toxiproxy() -> Iterator[Toxiproxy]:
    with running_toxiproxy() as api:
        yield api


@pytest.fixture
def proxy(toxiproxy: Toxiproxy, pg: PgServer) -> Iterator[Proxy]:
    """A fresh proxied link to the test Postgres; every toxic is gone after the test."""
    p = toxiproxy.create(f"pg{next(_names)}", pg.port)
    yield p
    toxiproxy.delete(p.name)


def _accepting(pg: PgServer) -> bool:
    try:
        with pg.admin():
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(autouse=True)
def _postgres_left_running(pg: PgServer) -> Iterator[None]:
    """Tests stop, crash and restart the session Postgres; the next test gets it running."""
    yield
    if not _accepting(pg):
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        pg.start()


@pytest.fixture
def audited(sql: Callable[..., list[tuple[Any, ...]]]) -> Callable[..., list[tuple[Any, ...]]]:
    """The ``sql`` helper, with every job transition recorded by a trigger (public.job_audit)."""
    install_audit(sql)
    return sql


@pytest.fixture
def rsql(database_url: str) -> Iterator[ReconnectingSql]:
    """Raw SQL on the test database that survives Postgres restarts (with the audit trigger)."""
    helper = ReconnectingSql(database_url)
    install_audit(helper)
    yield helper
    helper.close()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


def wait_workers_ready(sql: Callable[..., list[tuple[Any, ...]]], n: int,
                       timeout: float = 60) -> None:
    """Each worker has registered its tasks and holds its claim and listen connections."""
    wait_until(lambda: worker_connections(sql, "claim") >= n
               and worker_connections(sql, "listen") >= n
               and sql("SELECT count(*) FROM tasks")[0][0] > 0,
               timeout, f"{n} worker(s) connected")
