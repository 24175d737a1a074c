"""The overview's reads start side by side on the names its page listed last time
(api/last_pages.py). Whatever changed in between, the page must be exactly what reading one
step after another gives: the same queues, totals, cursor and counts. Real Postgres."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiplock import inspection
from skiplock.api import service
from skiplock.api.history import BacklogHistory
from skiplock.api.last_pages import LastPages
from skiplock.api.models import QueuesOut
from skiplock.api.side_by_side import SideBySide
from skiplock.api.throughput import ThroughputCache
from skiplock.db import Database, QueryScope, query_scope
from skiplock.errors import DatabaseUnavailable

Sql = Callable[..., list[tuple[object, ...]]]
T = TypeVar("T")
NAMES = ["a", "b", "c", "d", "e"]
# What a change between two page views can do to what a page lists and counts.
CHANGES = {
    "task": "INSERT INTO tasks (name, params, max_attempts, queue) VALUES ('t-' || %s, '{}', 3,"
            " %s) ON CONFLICT DO NOTHING",
    "untask": "DELETE FROM tasks WHERE name = 't-' || %s AND queue = %s",
    "queued": "INSERT INTO jobs (queue, task) SELECT %s, 'x' WHERE %s::text IS NOT NULL",
    "running": "INSERT INTO jobs (queue, task, state, attempts, locked_by, locked_until)"
               " SELECT %s, 'x', 'running', 1, 'w', now() + interval '1 minute'"
               " WHERE %s::text IS NOT NULL",
    # finished half a minute ago: within the window, in a bucket not yet closed
    "finished": "INSERT INTO jobs (queue, task, state, attempts, finished_at)"
                " SELECT %s, 'x', 'succeeded', 1, now() - interval '30 seconds'"
                " WHERE %s::text IS NOT NULL",
    "drain": "DELETE FROM jobs WHERE queue = %s AND state IN ('queued', 'running')"
             " AND %s::text IS NOT NULL",
    "pause": "INSERT INTO paused_queues (queue) SELECT %s WHERE %s::text IS NOT NULL"
             " ON CONFLICT DO NOTHING",
    "resume": "DELETE FROM paused_queues WHERE queue = %s AND %s::text IS NOT NULL",
}
# (queues named, after, limit): pages of every kind the API and dashboard ask for
PAGES: list[tuple[tuple[str, ...], str | None, int | None]] = [
    ((), None, 2), ((), "b", 2), ((), None, None), (("c", "a", "zz"), None, None)]


def no_queues(sql: Sql) -> None:
    for table in ("jobs", "tasks", "paused_queues"):
        sql(f"DELETE FROM {table}")


def comparable(out: QueuesOut) -> list[Any]:
    """What a page says, less what moves with the clock alone (its time, the buckets' times,
    the oldest job's age)."""
    return [out.total_queues, out.next_after] + [
        q.model_dump(exclude={"throughput", "oldest_runnable_age_seconds"})
        for q in out.queues]


@pytest.fixture
def history(db: Database) -> BacklogHistory:
    return BacklogHistory(lambda: inspection.queue_stats(db), 3600, 2)


@pytest.fixture
def reads() -> Iterator[SideBySide]:
    side = SideBySide(4)
    yield side
    side.close()


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(sorted(CHANGES)), st.sampled_from(NAMES)),
                min_size=1, max_size=10))
def test_a_page_read_on_last_times_names_is_the_page_read_one_step_after_another(
        db: Database, sql: Sql, history: BacklogHistory, reads: SideBySide,
        changes: list[tuple[str, str]]) -> None:
    no_queues(sql)
    guessing, kept = ThroughputCache(), LastPages()

    def both(queues: tuple[str, ...], after: str | None, limit: int | None
             ) -> tuple[list[Any], list[Any]]:
        fast = service.overview(db, history, guessing, 30, queues, after=after, limit=limit,
                                backlog_points=0, reads=reads, last_pages=kept)
        plain = service.overview(db, history, ThroughputCache(), 30, queues, after=after,
                                 limit=limit, backlog_points=0)
        return comparable(fast), comparable(plain)

    for queues, after, limit in PAGES:
        fast, plain = both(queues, after, limit)
        assert fast == plain
    for change, name in changes:
        sql(CHANGES[change], name, name)
        for queues, after, limit in PAGES:
            fast, plain = both(queues, after, limit)
            assert fast == plain, (change, name, queues, after, limit)


class Tracked(SideBySide):
    """Reads side by side that a test can wait for, those whose result nobody asked for too."""

    def __init__(self) -> None:
        super().__init__(4)
        self.started: list[Future[Any]] = []

    def start(self, read: Callable[[], T]) -> Future[T]:
        started = super().start(read)
        self.started.append(started)
        return started

    def idle(self) -> None:
        wait(self.started, timeout=30)
        self.started.clear()


def test_what_still_holds_is_not_read_again_and_what_changed_is(
        db: Database, sql: Sql, history: BacklogHistory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    reads = Tracked()
    no_queues(sql)
    for name in ("a", "b", "c"):
        sql(CHANGES["task"], name, name)
    calls: dict[str, list[tuple[str, ...]]] = {"names": [], "counts": []}
    listing, counting = db.overview_queue_names, db.stats_rows

    def names(queues: Any, finished: Any, *args: Any) -> tuple[int, list[str]]:
        calls["names"].append(tuple(finished))
        return listing(queues, finished, *args)

    def counts(queues: Any, **kw: Any) -> Any:
        calls["counts"].append(tuple(queues))
        return counting(queues, **kw)

    monkeypatch.setattr(db, "overview_queue_names", names)
    monkeypatch.setattr(db, "stats_rows", counts)
    kept, finished = LastPages(), ThroughputCache()

    def page() -> list[str]:
        for c in calls.values():
            c.clear()
        out = service.overview(db, history, finished, 30, limit=2, backlog_points=0,
                               reads=reads, last_pages=kept)
        reads.idle()  # a guess that missed may still be running: its calls count too
        return [q.queue for q in out.queues]

    assert page() == ["a", "b"]  # nothing to go on: one after another
    assert calls == {"names": [()], "counts": [("a", "b")]}
    assert page() == ["a", "b"]  # nothing changed: each read once, started together
    assert calls == {"names": [()], "counts": [("a", "b")]}
    sql(CHANGES["task"], "0", "0")  # a queue sorted first: the page moves, the finished stay
    assert page() == ["0", "a"]
    assert calls == {"names": [()], "counts": [("a", "b"), ("0",)]}  # only "0" counted again
    sql(CHANGES["finished"], "00", "00")  # a queue known only by its finished jobs
    try:
        assert page() == ["0", "00"]
    finally:
        reads.close()
    # read again with the new finished queue; the listing started on the old guess is
    # dropped, unless it had already begun
    assert calls["names"] in ([("00",)], [(), ("00",)], [("00",), ()])
    assert calls["counts"] == [("0", "a"), ("00",)]


def test_the_reads_of_a_page_run_at_once(db: Database, sql: Sql, history: BacklogHistory,
                                         reads: SideBySide,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The open buckets, the names and the counts each wait for the other two: one after
    another, the barrier would break."""
    no_queues(sql)
    sql(CHANGES["task"], "a", "a")
    kept, finished = LastPages(), ThroughputCache()
    service.overview(db, history, finished, 30, backlog_points=0, reads=reads, last_pages=kept)
    together = threading.Barrier(3, timeout=20)

    def meeting(read: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kw: Any) -> Any:
            together.wait()
            return read(*args, **kw)
        return run

    for method in ("finished_counts", "overview_queue_names", "stats_rows"):
        monkeypatch.setattr(db, method, meeting(getattr(db, method)))
    out = service.overview(db, history, finished, 30, backlog_points=0, reads=reads,
                           last_pages=kept)
    assert [q.queue for q in out.queues] == ["a"]


def test_reads_of_a_request_past_its_deadline_take_no_connection(database_url: str) -> None:
    """A side read queued behind others may start after its request answered 503: it is
    refused before it waits for a pool connection, so it never holds one up."""
    db = Database(database_url, read_pool_size=1)
    try:
        scope = QueryScope(read_only=True)
        scope.cancel(timeout=1)
        before = db._read_pool.get_stats().get("requests_num", 0) if db._read_pool else 0
        with query_scope(scope), pytest.raises(DatabaseUnavailable, match="deadline passed"):
            db.now()
        assert db._read_pool is not None
        assert db._read_pool.get_stats().get("requests_num", 0) == before
        with query_scope(QueryScope(read_only=True)):
            assert db.now() is not None  # the pool is untouched and serves the next request
    finally:
        db.close()
