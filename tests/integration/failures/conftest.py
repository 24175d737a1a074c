"""Fixtures for the failure-mode suite: Toxiproxy between clients and the test Postgres, the
audit trigger, marker files, and a guarantee that Postgres is running after every test.

The modules in THROUGH_PGBOUNCER run a second time with producers and workers going through a
real PgBouncer in transaction pooling mode (``route`` = "pgbouncer"): the workers are given
only the pooler's URL, find it out on their own and poll (no LISTEN through a pooler). The
checks (``sql``, ``rsql``, ``audited``) stay on the direct URL.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.chaos import ReconnectingSql, install_audit, worker_connections
from tests.support.pgbouncer import PgBouncer, direct_of, running_pgbouncer
from tests.support.pgserver import PgServer
from tests.support.toxiproxy import Proxy, Toxiproxy, running_toxiproxy, server_binary
from tests.support.waits import wait_until

_names = itertools.count()

# Short leases keep the suite fast; heartbeats renew every lease/3.
LEASE = 2.0
WORKER_ARGS = ("--lease-seconds", str(LEASE), "--poll-interval", "0.2", "--shutdown-grace", "5")


# Where a pooler in the middle changes what a client sees, and what its tests prove there:
THROUGH_PGBOUNCER = frozenset({
    # a worker SIGKILLed mid-transaction: PgBouncer must drop that server link (and its
    # locks) and the lease still expires and the job is re-run
    "test_worker_crash",
    # a refused outcome aborts its transaction: the client connection through the pooler
    # must stay usable, the other outcomes written
    "test_unstorable_outcomes",
    # cancels and deadlines without LISTEN: the poll-only worker still stops the handler
    "test_cancel",
    "test_deadlines",
    # a handler outliving its lease, at-least-once without duplicate results
    "test_duplicate_execution",
    "test_poison_pill",
})
# Not test_database_outage: it waits 30 s for the direct link's "unreachable"; through
# PgBouncer a crashed server (kill -9) holds queries in the pooler's queue (query_wait_timeout,
# 120 s) until the worker's own deadline (connect + statement timeout) ends them. Its fast and
# immediate shutdowns pass through PgBouncer (57P01 reaches the client). Nor the Toxiproxy
# tests: their faults are on the direct link.
ROUTES = ("direct", "pgbouncer")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The modules of THROUGH_PGBOUNCER once per route; not the tests that put Toxiproxy in
    front of Postgres themselves (their faults are on the direct link)."""
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if (module in THROUGH_PGBOUNCER and "database_url" in metafunc.fixturenames
            and not {"proxy", "toxiproxy"} & set(metafunc.fixturenames)):
        metafunc.parametrize("route", ROUTES, indirect=True)


@pytest.fixture
def route(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "direct"))


@pytest.fixture(scope="session")
def bouncer(pg: PgServer) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg) as b:
        yield b


_ROUTE = {"now": "direct"}  # for wait_workers_ready, which tests call with ``sql`` alone


@pytest.fixture
def database_url(database_url: str, route: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test database as producers and workers reach it: direct, or through PgBouncer."""
    _ROUTE["now"] = route
    if route == "direct":
        yield database_url
    else:
        yield request.getfixturevalue("bouncer").pooled(database_url)
    _ROUTE["now"] = "direct"


def _direct(url: str, route: str, request: pytest.FixtureRequest) -> str:
    return url if route == "direct" else direct_of(url, request.getfixturevalue("bouncer"))


@pytest.fixture
def sql(database_url: str, route: str, request: pytest.FixtureRequest
        ) -> Iterator[Callable[..., list[tuple[object, ...]]]]:
    """The root ``sql`` helper, always on the direct URL (checks bypass the pooler)."""
    conn = psycopg.connect(_direct(database_url, route, request), autocommit=True,
                           options="-c search_path=skiplock,public")

    def run(query: str, *params: object) -> list[tuple[object, ...]]:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []

    yield run
    conn.close()


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
def rsql(database_url: str, route: str, request: pytest.FixtureRequest
         ) -> Iterator[ReconnectingSql]:
    """Raw SQL on the test database that survives Postgres restarts (with the audit trigger)."""
    helper = ReconnectingSql(_direct(database_url, route, request))
    install_audit(helper)
    yield helper
    helper.close()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "executions.txt"


def wait_workers_ready(sql: Callable[..., list[tuple[Any, ...]]], n: int,
                       timeout: float = 60) -> None:
    """Each worker has registered its tasks and holds its claim and listen connections
    (through PgBouncer: is in the registry; it polls, and the pooler's server connections
    carry no one worker's name)."""
    if _ROUTE["now"] == "pgbouncer":
        wait_until(lambda: sql("SELECT count(*) FROM workers")[0][0] >= n
                   and sql("SELECT count(*) FROM tasks")[0][0] > 0,
                   timeout, f"{n} worker(s) registered")
        return
    wait_until(lambda: worker_connections(sql, "claim") >= n
               and worker_connections(sql, "listen") >= n
               and sql("SELECT count(*) FROM tasks")[0][0] > 0,
               timeout, f"{n} worker(s) connected")
