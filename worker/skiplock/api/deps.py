"""What the routes, the pages and the application share: the per-process state, the
database deadline (``blocking``), the public words for a database failure and the access
dependencies. A module of its own so that app.py can import the routers that use these without
the routers importing app.py back."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
from fastapi import Depends, Request
from markupsafe import Markup
from prometheus_client import CollectorRegistry, Counter, Histogram

from ..client import Client
from ..db import Database, QueryScope, query_scope
from ..errors import DatabaseUnavailable, EnqueueOutcomeUnknown, SchemaMissing
from ..preparation import Catalogue
from . import access
from .config import ApiSettings
from .history import BacklogHistory, QueueSeries
from .last_pages import LastPages
from .per_sample import PerSample
from .side_by_side import SideBySide
from .throughput import ThroughputCache

log = logging.getLogger("skiplock.api")
HERE = Path(__file__).resolve().parent


@dataclass
class ApiState:
    db: Database
    client: Client
    # What enqueue checks tasks against (skiplock.preparation, as the Client does).
    catalogue: Catalogue
    api: ApiSettings
    history: BacklogHistory
    # the overview's closed throughput buckets, read once per process (api/throughput.py)
    finished: ThroughputCache
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    # the overview's reads run side by side, started on the names its pages listed last
    # (api/side_by_side.py, api/last_pages.py)
    reads: SideBySide
    last_pages: LastPages
    # made once per backlog sample (api/per_sample.py): the queues page's charts by queue,
    # and the API's thinned backlog history by (queue, points)
    backlog_charts: PerSample[str, Markup]
    backlog_series: PerSample[tuple[str, int | None], QueueSeries]


T = TypeVar("T")


async def blocking(st: ApiState, work: Callable[[], T], *, mutating: bool = False) -> T:
    """Run database work in a thread, with a deadline.

    A database that stops answering without closing the connection (a dropped route, a frozen
    host, a proxy that swallows packets) would otherwise hold the request until TCP gives up,
    minutes later. At the deadline the request answers 503, the thread is abandoned and the
    queries it runs are cancelled (QueryScope), so it does not hold a connection until the
    statement timeout. Work that is not ``mutating`` runs on the read pool, so slow reads
    cannot take the connections enqueue needs.
    """
    scope = QueryScope(read_only=not mutating)

    def scoped() -> T:
        with query_scope(scope):
            return work()

    try:
        with anyio.fail_after(st.api.request_timeout):
            return await anyio.to_thread.run_sync(scoped, abandon_on_cancel=True)
    except TimeoutError:
        scope.cancel_soon(st.db.connect_timeout)
        outcome = ("the change may or may not have been made: retry with the same "
                   "Idempotency-Key to make the retry safe" if mutating else "nothing was changed")
        raise ApiDeadline(
            f"the database did not answer within {st.api.request_timeout:g}s; {outcome}"
        ) from None


class ApiDeadline(DatabaseUnavailable):
    """The request deadline passed; its message is the API's own (no user, host or driver
    text), so a caller may read it."""


def public_unavailable(exc: DatabaseUnavailable, doing: str) -> str:
    """What an anonymous caller may learn of a database failure: what to do, never the user,
    host, port or database, nor the driver's text (which names them). The whole, redacted
    message is logged for whoever runs the API."""
    log.warning("%s: %s", doing, exc)
    if isinstance(exc, ApiDeadline):
        return str(exc)
    if isinstance(exc, EnqueueOutcomeUnknown):
        stored_as = (f" (if it was, the job's id is {exc.job_id}: GET /v1/jobs/{exc.job_id} "
                     "tells once the database answers)") if exc.job_id is not None else ""
        return ("database unreachable while committing: the change may or may not have been "
                f"made{stored_as}; retry with the same Idempotency-Key to make the retry safe")
    if isinstance(exc, SchemaMissing):
        return ("database unreachable: the Skiplock tables are missing (whoever runs this API "
                "must run `skiplock migrate`); the API log has the details")
    return "database unreachable; try again later (the API log has the details)"


def state_of(request: Request) -> ApiState:
    st: ApiState = request.app.state.skiplock
    return st


State = Annotated[ApiState, Depends(state_of)]
# The access rules live in access.py; these names are what routes and pages depend on.
require_token = access.require_write
require_read = access.require_read
