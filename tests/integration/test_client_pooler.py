"""wait() behind a real PgBouncer (pool_mode=transaction) that nobody declared
(SKIPLOCK_POOLER unset): the hub must poll without startup options, whether the client's
database found the pooler out first or the hub's own connection does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from skiplock import Client, JobWasCancelled
from tests.integration.test_client_support import Producer
from tests.support.pgbouncer import PgBouncer, running_pgbouncer
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until


@pytest.fixture(scope="module")
def bouncer(pg: PgServer) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg) as b:
        yield b


@pytest.fixture
def pooled_url(bouncer: PgBouncer, database_url: str,
               monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("SKIPLOCK_POOLER", raising=False)
    monkeypatch.delenv("SKIPLOCK_LISTEN_URL", raising=False)
    return bouncer.pooled(database_url)


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("first", ["enqueue", "wait"])
def test_wait_through_an_undeclared_pooler(kind: str, first: str, pooled_url: str,
                                           database_url: str) -> None:
    with Client(database_url) as direct:
        job_id = direct.enqueue("add", {"a": 1, "b": 1}, delay=3600)
        p = Producer(kind, pooled_url)
        try:
            if first == "enqueue":  # the client's database finds the pooler out first
                p.enqueue("add", {"a": 2, "b": 2}, validate=False)
            future = p.wait_in_background(job_id, 30)
            def hub() -> Any:  # read only: made by the wait itself, on its own thread
                return p.client._hub

            wait_until(lambda: future.done() or (hub() is not None and hub().connected.is_set()),
                       20,
                       "the hub to connect through the pooler")
            assert not future.done(), future.exception()
            assert hub()._channel is None and hub()._tx_settings is not None  # polls only
            assert direct.cancel(job_id) == "cancelled"
            with pytest.raises(JobWasCancelled):
                future.result(20)
        finally:
            p.close()
