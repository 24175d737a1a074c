"""Fixtures of the integration tests; ``producer`` runs a test once with Client and once with
AsyncClient (test_client_parity, test_client_wait)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.test_client_support import Producer


@pytest.fixture(params=["sync", "async"])
def producer(request: pytest.FixtureRequest, database_url: str) -> Iterator[Producer]:
    p = Producer(request.param, database_url)
    yield p
    p.close()
