"""The Python Client's idempotency keys (unique_key): Stripe's rule, as the HTTP API has it.
Equal canonical requests replay, any difference is an IdempotencyConflict naming the job."""

from __future__ import annotations

import datetime as dt
import os
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skiplock
from skiplock import Client, IdempotencyConflict, InvalidArguments, SkiplockError
from skiplock.db import Database

Sql = Callable[..., list[tuple[object, ...]]]


@pytest.fixture
def client(database_url: str) -> Iterator[Client]:
    # validate=False: the catalogue is empty here, so any task name is accepted and the
    # defaults are queue 'default', max_attempts 5.
    with Client(database_url, validate=False) as c:
        yield c


def test_conflict_is_a_typed_error_exported_from_skiplock(client: Client, sql: Sql) -> None:
    assert skiplock.IdempotencyConflict is IdempotencyConflict
    first = client.enqueue("send_email", {"to": "a@example.com"}, unique_key="order-1234")
    with pytest.raises(IdempotencyConflict) as info:
        client.enqueue("charge_card", {"cents": 100}, unique_key="order-1234")
    exc = info.value
    assert isinstance(exc, SkiplockError)
    assert (exc.key, exc.job_id, exc.job_ids) == ("order-1234", first, [first])
    assert exc.reason == "task was 'send_email', now 'charge_card'; args differ"
    assert str(exc).startswith(f"idempotency key 'order-1234' was already used for a "
                               f"different request (job {first}): task was")
    assert sql("SELECT task FROM jobs") == [("send_email",)]
    assert client.enqueue("send_email", {"to": "a@example.com"}, unique_key="order-1234") == first


def test_bad_keys_are_refused_before_the_database(client: Client, sql: Sql) -> None:
    for key, why in ((123, "must be text, got int"), ("", "must not be empty"),
                     ("k" * 256, "256 characters long; at most 255"),
                     ("nul\x00", "NUL"), ("\ud800", "lone surrogates")):
        with pytest.raises(InvalidArguments, match=why):
            client.enqueue("t", unique_key=key)  # type: ignore[arg-type]
    assert client.enqueue("t", unique_key="k" * 255) > 0
    assert client.enqueue("t", unique_key="\u8ba2\u5355 \U0001f4b3") > 0
    assert sql("SELECT count(*) FROM idempotency_keys") == [(2,)]


def test_replay_after_prune_then_free_after_key_retention(
        database_url: str, client: Client, sql: Sql) -> None:
    first = client.enqueue("t", {"x": 1}, unique_key="k")
    sql("UPDATE jobs SET state = 'succeeded', finished_at = now() - interval '1 hour'")
    with Database(database_url) as db:
        assert db.prune_finished(0) == 1
        assert db.prune_idempotency_keys(3600) == 0  # younger than an hour: kept
        # the job is gone; its key still recognises the request and refuses another
        assert client.enqueue("t", {"x": 1}, unique_key="k") == first
        with pytest.raises(IdempotencyConflict, match=f"job {first}"):
            client.enqueue("t", {"x": 2}, unique_key="k")
        assert sql("SELECT count(*) FROM jobs") == [(0,)]
        assert db.prune_idempotency_keys(0) == 1
    assert client.enqueue("t", {"x": 2}, unique_key="k") not in (first,)


def test_enqueue_many_follows_the_rule_all_or_nothing(client: Client, sql: Sql) -> None:
    first = client.enqueue("t", {"x": 1}, unique_key="a")
    same = [{"task": "t", "args": {"x": 1}, "unique_key": "a"},
            {"task": "t", "args": {"x": 2}, "unique_key": "b"},
            {"task": "t", "args": {"x": 2}, "unique_key": "b"}]
    assert client.enqueue_many(same) == 1  # "a" replays, "b" once
    with pytest.raises(IdempotencyConflict, match="args differ") as info:
        client.enqueue_many([{"task": "t", "args": {"x": 3}, "unique_key": "c"},
                             {"task": "t", "args": {"x": 9}, "unique_key": "a"}])
    assert info.value.job_id == first
    with pytest.raises(IdempotencyConflict, match="repeated in this call"):
        client.enqueue_many([{"task": "t", "args": {"x": 3}, "unique_key": "d"},
                             {"task": "t", "args": {"x": 4}, "unique_key": "d"}])
    # neither failed call stored anything, not even its good jobs
    assert sql("SELECT unique_key FROM jobs ORDER BY id") == [("a",), ("b",)]
    assert sql("SELECT key FROM idempotency_keys ORDER BY key") == [("a",), ("b",)]
    # the single-job key and an enqueue_many key are one namespace, one rule
    assert client.enqueue("t", {"x": 2}, unique_key="b") == sql(
        "SELECT id FROM jobs WHERE unique_key = 'b'")[0][0]


def test_transactional_enqueue_follows_the_rule(
        database_url: str, client: Client, sql: Sql) -> None:
    with psycopg.connect(database_url) as conn:
        with conn.transaction():
            first = client.enqueue("t", {"x": 1}, unique_key="tx", connection=conn)
            assert client.enqueue("t", {"x": 1}, unique_key="tx", connection=conn) == first
        with pytest.raises(IdempotencyConflict), conn.transaction():
            client.enqueue("t", {"x": 2}, unique_key="tx", connection=conn)
    assert sql("SELECT id FROM jobs") == [(first,)]


def test_concurrent_clients_with_one_key_get_one_job(database_url: str, sql: Sql) -> None:
    n = 10
    barrier = threading.Barrier(n)
    got: list[int | str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with Client(database_url, validate=False) as c:
            barrier.wait()
            try:
                out: int | str = c.enqueue("t", {"x": i % 2}, unique_key="race")
            except IdempotencyConflict as exc:
                out = f"conflict {exc.job_id}"
        with lock:
            got.append(out)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ((job_id, x),) = sql("SELECT id, args->'x' FROM jobs")
    # the winner's half (same x) replays its id, the other half conflicts naming it
    assert sorted(map(str, got)) == sorted([str(job_id)] * (n // 2)
                                           + [f"conflict {job_id}"] * (n // 2)), (got, x)


# -- hypothesis: equal canonical requests replay, any difference conflicts -----------------

# jsonb text holds no NUL nor lone surrogates
_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]),
                max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6)
_when = st.datetimes(min_value=dt.datetime(2030, 1, 1), max_value=dt.datetime(2031, 1, 1),
                     timezones=st.just(dt.UTC))
_base = st.fixed_dictionaries({
    "task": st.sampled_from(["send_email", "charge_card"]),
    "args": st.dictionaries(_text.filter(bool), _json, max_size=4),
    "queue": st.sampled_from([None, "default", "payments"]),
    "priority": st.integers(-3, 3),
    "max_attempts": st.sampled_from([None, 5, 1, 9]),
    "schedule": st.one_of(st.none(), _when.map(lambda w: ("run_at", w)),
                          st.integers(0, 3600).map(lambda d: ("delay", d))),
    "timeout": st.sampled_from([None, 1.5, 30.0]),
})


def _call(spec: dict[str, Any]) -> dict[str, Any]:
    kw = {k: v for k, v in spec.items() if k != "schedule"}
    if spec["schedule"] is not None:
        kw[spec["schedule"][0]] = spec["schedule"][1]
    return kw


def _equal_rewrites(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The same canonical request, spelled differently."""
    out = [{**spec, "args": dict(reversed(list(spec["args"].items())))}]
    if spec["queue"] in (None, "default"):
        out.append({**spec, "queue": "default" if spec["queue"] is None else None})
    if spec["max_attempts"] in (None, 5):
        out.append({**spec, "max_attempts": 5 if spec["max_attempts"] is None else None})
    if spec["schedule"] and spec["schedule"][0] == "run_at":
        other = spec["schedule"][1].astimezone(dt.timezone(dt.timedelta(hours=-7)))
        out.append({**spec, "schedule": ("run_at", other)})
    if spec["schedule"] and spec["schedule"][0] == "delay":
        out.append({**spec, "schedule": ("delay", dt.timedelta(seconds=spec["schedule"][1]))})
    return out


_changes: dict[str, Callable[[Any], Any]] = {
    "task": lambda t: "charge_card" if t == "send_email" else "send_email",
    "args": lambda a: {**a, "\u00e9xtra-key": 1},  # longer than any generated name
    "queue": lambda q: "other" if q != "other" else "default",
    "priority": lambda p: p + 1,
    "max_attempts": lambda m: 2 if m != 2 else 3,
    "schedule": lambda s: ("delay", 7200) if s is None or s[0] == "run_at" else None,
    "timeout": lambda t: 99.0 if t != 99.0 else None,
}


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_base, field=st.sampled_from(sorted(_changes)))
def test_hypothesis_equal_requests_replay_and_any_difference_conflicts(
        client: Client, spec: dict[str, Any], field: str) -> None:
    key = f"h-{uuid.uuid4()}"
    first = client.enqueue(unique_key=key, **_call(spec))
    for same in _equal_rewrites(spec):
        assert client.enqueue(unique_key=key, **_call(same)) == first, same
    changed = {**spec, field: _changes[field](spec[field])}
    with pytest.raises(IdempotencyConflict) as info:
        client.enqueue(unique_key=key, **_call(changed))
    assert info.value.job_id == first
    names = ("delay", "run_at") if field == "schedule" else (field,)
    assert any(n in info.value.reason for n in names), (field, info.value.reason)


# -- cost: what a key adds to one enqueue (printed, not asserted) ---------------------------

def _round_trips(db: Database, work: Callable[[], object]) -> tuple[int, int]:
    """(Sync, Flush) messages libpq sent during ``work``, from a libpq trace of the pool's
    one connection. In pipeline mode each Sync ends the transaction's batch and each Flush
    asks for results early; how many Flushes psycopg sends depends on how soon the server
    answers, so only the Syncs are compared."""
    with db._pool.connection() as conn:  # the test traces the pooled connection
        fd, path = tempfile.mkstemp()
        conn.pgconn.trace(fd)
    try:
        work()
    finally:
        with db._pool.connection() as conn:
            conn.pgconn.untrace()
        os.close(fd)
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f if "\tF\t" in line]
    os.unlink(path)
    return (sum(1 for line in lines if "\tSync" in line),
            sum(1 for line in lines if "\tFlush" in line))


def test_cost_of_a_key_on_the_single_enqueue_path(database_url: str) -> None:
    with Client(database_url, validate=False) as c:
        c.db.close()
        c.db = Database(database_url, max_size=1)
        for i in range(50):  # warm up: connection, plans
            c.enqueue("t", {"i": i})
            c.enqueue("t", {"i": i}, unique_key=f"warm-{i}")
        trips = {
            "no key": _round_trips(c.db, lambda: c.enqueue("t", {"i": 0})),
            "new key": _round_trips(c.db, lambda: c.enqueue("t", {"i": 0}, unique_key="rt")),
            "replay": _round_trips(c.db, lambda: c.enqueue("t", {"i": 0}, unique_key="rt")),
        }
        timings: dict[str, list[float]] = {"no key": [], "new key": [], "replay": []}
        for i in range(300):
            for name, key in (("no key", None), ("new key", f"k-{i}"), ("replay", "k-0")):
                started = time.perf_counter()
                c.enqueue("t", {"i": 0 if name == "replay" else i}, unique_key=key)
                timings[name].append((time.perf_counter() - started) * 1e6)
    print("\nsingle enqueue: median, p90 (us); libpq Sync + Flush messages")
    for name, values in timings.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"  {name:8} {statistics.median(values):7.0f} {p90:7.0f}   "
              f"{trips[name][0]} Sync + {trips[name][1]} Flush")
    # the key is claimed in the insert's own statement: no extra statement, no extra Sync
    assert trips["new key"][0] == trips["no key"][0] == trips["replay"][0] == 1, trips
