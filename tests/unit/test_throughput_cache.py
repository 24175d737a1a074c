"""The overview's throughput cache (skiplock.api.throughput) against a model of the jobs table:
whatever the jobs, the page views and the clock, the counts it serves are those a full read
of the table gives, as long as each completion commits within the grace; closed buckets are
read once; a deletion shows within the ttl; memory stays bounded."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock.api.throughput import (
    MAX_ENTRIES,
    SIZES_KEPT,
    ThroughputCache,
    first_to_read,
    group,
    is_closed,
)

EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
T0 = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
GRACE = 120.0
TTL = 600.0


@dataclass(frozen=True)
class Job:
    queue: str
    state: str  # succeeded, dead or cancelled
    finished: float  # seconds after T0: finished_at
    committed: float  # seconds after T0: when a reader first sees it


def starts_at(now: dt.datetime, bucket: int, n: int) -> list[dt.datetime]:
    """What service.overview asks for: n buckets, the last one holding now."""
    last = EPOCH + dt.timedelta(seconds=((now - EPOCH).total_seconds() // bucket) * bucket)
    return [last - dt.timedelta(seconds=bucket * i) for i in range(n - 1, -1, -1)]


def bin_of(at: dt.datetime, bucket: int) -> dt.datetime:
    return EPOCH + dt.timedelta(seconds=((at - EPOCH).total_seconds() // bucket) * bucket)


class Table:
    """The jobs table as finished_counts reads it, with a log of the ranges read."""

    def __init__(self, jobs: list[Job], bucket: int) -> None:
        self.jobs, self.bucket, self.now, self.reads = list(jobs), bucket, T0, []

    def visible(self) -> list[Job]:
        return [j for j in self.jobs if T0 + dt.timedelta(seconds=j.committed) <= self.now]

    def read(self, since: dt.datetime) -> list[tuple[dt.datetime, str, int, int]]:
        self.reads.append(since)
        out: dict[tuple[dt.datetime, str], list[int]] = {}
        for j in self.visible():
            at = T0 + dt.timedelta(seconds=j.finished)
            if at >= since:
                c = out.setdefault((bin_of(at, self.bucket), j.queue), [0, 0])
                c[0] += j.state == "succeeded"
                c[1] += j.state == "dead"
        return [(b, q, ok, dead) for (b, q), (ok, dead) in out.items()]

    def truth(self, starts: list[dt.datetime]) -> dict[dt.datetime, dict[str, tuple[int, int]]]:
        full = Table(self.visible(), self.bucket)
        full.now = self.now
        got: dict[dt.datetime, dict[str, tuple[int, int]]] = {s: {} for s in starts}
        for b, q, ok, dead in full.read(starts[0]):
            if b in got:
                got[b][q] = (ok, dead)
        return got


JOBS = st.lists(st.builds(
    lambda q, s, f, lag: Job(q, s, f, f + lag),
    st.sampled_from(["a", "b", "é", "x" * 128]),
    st.sampled_from(["succeeded", "dead", "cancelled"]),
    # finished from before the first view's window to the last view; committed up to the grace
    # later (what a completion transaction takes at most)
    st.floats(-1800, 2700, allow_nan=False), st.floats(0, GRACE, allow_nan=False)),
    max_size=80)
VIEWS = st.lists(st.floats(1, 90, allow_nan=False), min_size=1, max_size=30)  # seconds apart
WINDOWS = st.sampled_from([1, 5, 30, 59, 60, 90])  # minutes


def bucket_of(window: int) -> int:
    return 60 * max(1, window // 30)


@settings(max_examples=500, deadline=None)
@given(jobs=JOBS, views=VIEWS, window=WINDOWS)
def test_the_cache_serves_what_a_full_read_gives(jobs: list[Job], views: list[float],
                                                  window: int) -> None:
    bucket = bucket_of(window)
    table, clock = Table(jobs, bucket), [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    for gap in views:
        clock[0] += gap
        table.now = T0 + dt.timedelta(seconds=clock[0])
        starts = starts_at(table.now, bucket, max(1, window * 60 // bucket))
        assert cache.counts(table.read, table.now, starts, bucket) == table.truth(starts)


@settings(max_examples=200, deadline=None)
@given(views=VIEWS, window=WINDOWS)
def test_a_closed_bucket_is_read_again_only_after_the_ttl(views: list[float],
                                                          window: int) -> None:
    bucket = bucket_of(window)
    table, clock = Table([], bucket), [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    seen_at, before = 0.0, None
    for gap in views:
        clock[0] += gap
        table.now = T0 + dt.timedelta(seconds=clock[0])
        starts = starts_at(table.now, bucket, max(1, window * 60 // bucket))
        cache.counts(table.read, table.now, starts, bucket)
        since = table.reads[-1]
        if before is not None and clock[0] - seen_at <= TTL:
            # nothing kept has expired: exactly the buckets that had not closed at the view
            # before are read
            assert since == next(s for s in starts if not is_closed(s, bucket, before, GRACE))
        if since == starts[0]:
            seen_at = clock[0]  # a full read: every closed bucket kept from here
        before = table.now


def test_a_deleted_job_leaves_the_chart_within_the_ttl() -> None:
    bucket = 60
    table = Table([Job("a", "dead", -900.0, -900.0)], bucket)
    clock = [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    starts = starts_at(table.now, bucket, 30)
    b = bin_of(T0 - dt.timedelta(seconds=900), bucket)
    assert cache.counts(table.read, table.now, starts, bucket)[b] == {"a": (0, 1)}
    table.jobs.clear()  # a bulk delete of the dead jobs
    clock[0] = TTL  # not yet past the ttl: the kept count
    table.now = T0 + dt.timedelta(seconds=clock[0])
    starts = starts_at(table.now, bucket, 30)
    assert cache.counts(table.read, table.now, starts, bucket)[b] == {"a": (0, 1)}
    clock[0] = TTL + 1
    table.now = T0 + dt.timedelta(seconds=clock[0])
    starts = starts_at(table.now, bucket, 30)
    assert cache.counts(table.read, table.now, starts, bucket)[b] == {}


def test_kept_counts_cannot_be_changed_by_a_caller() -> None:
    table, clock = Table([Job("a", "succeeded", -900.0, -900.0)], 60), [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    starts = starts_at(T0, 60, 30)
    got = cache.counts(table.read, T0, starts, 60)
    b = bin_of(T0 - dt.timedelta(seconds=900), 60)
    with pytest.raises(TypeError):
        got[b]["a"] = (99, 99)  # type: ignore[index]
    assert cache.counts(table.read, T0, starts, 60)[b] == {"a": (1, 0)}


def test_buckets_in_another_time_zone_meet_their_utc_starts() -> None:
    """Berlin's repeated hour (2026-10-25 02:00-03:00 twice): the database answers in the
    session's zone; the overview looks its buckets up by UTC starts."""
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    utc_starts = [dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC),  # 02:30 CEST
                  dt.datetime(2026, 10, 25, 1, 30, tzinfo=dt.UTC)]  # 02:30 CET
    rows = [(s.astimezone(berlin), "a", i + 1, 0) for i, s in enumerate(utc_starts)]
    assert rows[0][0].replace(tzinfo=None) == rows[1][0].replace(tzinfo=None)  # one wall time
    got = group(rows)
    assert [got[s] for s in utc_starts] == [{"a": (1, 0)}, {"a": (2, 0)}]


def test_entries_are_capped_whatever_the_queues() -> None:
    queues = [f"q{i}" for i in range(MAX_ENTRIES // 20)]
    jobs = [Job(q, "succeeded", -60.0 * m, -60.0 * m) for q in queues for m in range(3, 33)]
    table, clock = Table(jobs, 60), [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    starts = starts_at(T0, 60, 30)
    first = cache.counts(table.read, T0, starts, 60)
    assert cache.entries() == 0  # 15,000 queues x 27 closed buckets: more than it keeps
    assert cache.counts(table.read, T0, starts, 60) == first  # read whole again: the same
    assert table.reads == [starts[0], starts[0]]


def test_memory_is_bounded_by_sizes_and_buckets() -> None:
    table, clock = Table([Job("a", "succeeded", -10.0, -10.0)], 60), [0.0]
    cache = ThroughputCache(grace=GRACE, ttl=TTL, clock=lambda: clock[0])
    for window in range(30, 1441, 30):  # every bucket size the API offers
        bucket = bucket_of(window)
        table.bucket = bucket
        cache.counts(table.read, T0, starts_at(T0, bucket, window * 60 // bucket), bucket)
    kept = cache._sizes
    assert len(kept) == SIZES_KEPT
    assert all(len(v) <= 60 for v in kept.values())
    # a day later at 1-minute buckets, only the last hour's buckets stay
    later = T0 + dt.timedelta(days=1)
    cache.counts(table.read, later, starts_at(later, 60, 30), 60)
    assert all(s >= later - dt.timedelta(hours=1) for s in kept[60])


def test_a_bucket_closes_grace_seconds_after_it_ends() -> None:
    start = dt.datetime(2026, 12, 6, 9, 0, tzinfo=dt.UTC)
    end = start + dt.timedelta(seconds=60)
    assert not is_closed(start, 60, end + dt.timedelta(seconds=GRACE - 0.001), GRACE)
    assert is_closed(start, 60, end + dt.timedelta(seconds=GRACE), GRACE)
    # the open bucket is always read, even when every bucket is kept
    assert first_to_read([start], {}, 60, end, 0.0, GRACE, TTL) == start
