"""A real PgBouncer (pool_mode=transaction, nothing else configured) in front of the session's
test Postgres; ``pooled_url`` is the test database through it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.pgbouncer import PgBouncer, running_pgbouncer
from tests.support.pgserver import PgServer


@pytest.fixture(scope="session")
def bouncer(pg: PgServer) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg) as b:
        yield b


@pytest.fixture
def pooled_url(bouncer: PgBouncer, database_url: str) -> str:
    return bouncer.pooled(database_url)
