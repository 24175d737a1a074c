"""One worker connection for a test's run of worker statements: the claim, heartbeat and
settle statements called as the worker calls them, on a connection closed afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from skiplock.db import WorkerConnection

T = TypeVar("T")


def with_worker_conn(database_url: str,
                     use: Callable[[WorkerConnection], Coroutine[Any, Any, T]], *,
                     statement_timeout: float = 10) -> T:
    """``use(conn)`` on a fresh WorkerConnection (schema skiplock), in an event loop of its
    own; the connection is closed whatever ``use`` does."""
    async def go() -> T:
        conn = WorkerConnection(database_url, schema="skiplock", connect_timeout=5,
                                statement_timeout=statement_timeout, application_name="test")
        try:
            return await use(conn)
        finally:
            await conn.close()
    return asyncio.run(go())
