"""Outcomes Postgres cannot store never block other outcomes, and never freeze a worker.

One real worker process serves every example: what is tested is that a live worker keeps
writing ordinary outcomes whatever the poison before them was, and stays healthy.
"""

from __future__ import annotations

import base64
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skiplock import Client
from tests.support.invariants import assert_invariants
from tests.support.pgserver import free_port
from tests.support.probes import livez
from tests.support.waits import wait_until
from tests.tasks import Unserialisable

from .conftest import WORKER_ARGS, wait_workers_ready

Sql = Callable[..., list[tuple[Any, ...]]]
MIB = 1024 * 1024


def blob(kind: str, value: object) -> str:
    return base64.b64encode(pickle.dumps((kind, value))).decode()


# Values that survive JSON and jsonb unchanged (floats bounded: jsonb keeps the decimal text,
# and a huge float's decimal is not the same number as the double).
_good_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"))
_good_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(-1e9, 1e9, allow_nan=False).filter(lambda f: f != 0 or math.copysign(1, f) > 0)
    | _good_text.filter(lambda t: len(t) <= 20)
)
good_values = st.recursive(
    _good_leaf,
    lambda c: st.lists(c, max_size=4)
    | st.dictionaries(_good_text.filter(lambda t: len(t) <= 6), c, max_size=4),
    max_leaves=12,
)
_bad_leaf = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        "a\x00b",
        "\ud800",
        "x\udfffy",
        Unserialisable(),
        10**5000,  # more digits than Python's int->str limit
        b"bytes",
        {1, 2},
    ]
)


@st.composite
def poison_values(draw: st.DrawFn) -> object:
    """A JSON-like value with at least one thing Postgres (or JSON) refuses, somewhere."""
    bad = draw(_bad_leaf)
    depth = draw(st.integers(0, 3))
    value: object = bad
    for _ in range(depth):
        if draw(st.booleans()):
            value = [*draw(st.lists(good_values, max_size=2)), value]
        else:
            key = draw(st.sampled_from(["x", "a b", "\x00key", "\ud83dk", "y"]))
            value = {key: value, "ok": 1}
    return value


poison = (
    st.tuples(st.just("return"), poison_values())
    | st.tuples(st.just("raise"), st.text(max_size=30).map(lambda t: t + "\x00\ud800"))
    | st.tuples(st.just("huge"), st.sampled_from([MIB + 1, 2 * MIB]))  # over the 1 MiB default
    | st.tuples(st.just("deep"), st.sampled_from([300, 5_000, 100_000]))
)




def _terminal(sql: Sql, ids: list[int]) -> bool:
    return not sql("SELECT 1 FROM jobs WHERE id = ANY(%s) AND state NOT IN "
                   "('succeeded', 'dead', 'cancelled') LIMIT 1", ids)


@pytest.fixture
def worker_port(database_url: str, sql: Sql, spawn_worker: Any) -> Any:
    port = free_port()
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "20",
                     env={"SKIPLOCK_METRICS_PORT": str(port)})
    wait_workers_ready(sql, 1)
    return w, port


def test_one_nul_result_does_not_freeze_the_worker(database_url: str, audited: Sql,
                                                   worker_port: Any) -> None:
    """The issue's measurement: 1 poison job among 60 left 50 of them running forever."""
    w, port = worker_port
    with Client(database_url) as c:
        ids = [c.enqueue("add", {"a": i, "b": 1}) for i in range(30)]
        bad = c.enqueue("outcome_from", {"blob": blob("return", {"x": "a\x00b"})})
        ids += [c.enqueue("add", {"a": i, "b": 2}) for i in range(30)]
    wait_until(lambda: _terminal(audited, [*ids, bad]), 60, "all 61 jobs terminal")
    assert audited("SELECT state::text, last_error FROM jobs WHERE id = %s", bad) == [
        ("dead", "result is not storable: NUL character at $.x")]
    assert audited("SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state = 'succeeded'",
                   ids) == [(60,)]
    assert w.proc.poll() is None, w.output()
    assert livez(port)[0] == 200
    assert_invariants(audited)


def test_poison_outcomes_among_ordinary_ones(database_url: str, sql: Sql,
                                             worker_port: Any) -> None:
    """Property: whatever poison the handlers return or raise, every ordinary job succeeds
    with its one result, every poison job ends dead with a clear error, the worker lives."""
    w, port = worker_port
    client = Client(database_url)
    examples: list[int] = []

    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(st.tuples(st.booleans(), good_values, poison), min_size=1, max_size=8))
    def check(plan: list[tuple[bool, Any, tuple[str, Any]]]) -> None:
        ordinary: dict[int, Any] = {}
        poisoned: dict[int, tuple[str, Any]] = {}
        for is_poison, value, bad in plan:
            if is_poison:
                poisoned[client.enqueue("outcome_from", {"blob": blob(*bad)})] = bad
            else:
                ordinary[client.enqueue("outcome_from", {"blob": blob("return", value)})] = value
        ids = [*ordinary, *poisoned]
        examples.append(len(ids))
        wait_until(lambda: _terminal(sql, ids), 60, f"jobs {ids} terminal")
        rows = {r[0]: r[1:] for r in sql(
            "SELECT j.id, j.state::text, j.last_error, r.result, "
            "(SELECT count(*) FROM results x WHERE x.job_id = j.id) "
            "FROM jobs j LEFT JOIN results r ON r.job_id = j.id WHERE j.id = ANY(%s)", ids)}
        for job_id, value in ordinary.items():
            state, error, result, n = rows[job_id]
            # a None result is stored as no row (it reads None all the same)
            assert (state, n) == ("succeeded", 0 if value is None else 1), (
                job_id, value, state, error)
            assert result == value
        for job_id, (kind, _) in poisoned.items():
            state, error, _, n = rows[job_id]
            assert state == "dead" and n == 0, (job_id, kind, state, error)
            if kind == "raise":
                assert error.startswith("RuntimeError: "), error
            else:
                assert error.startswith("result is not storable: "), error
                assert "$" in error or "limit" in error, error
        assert w.proc.poll() is None, w.output()[-3000:]

    try:
        check()
    finally:
        client.close()
    assert len(examples) >= 20, f"only {len(examples)} examples ran"
    assert sql("SELECT count(*) FROM jobs WHERE state = 'running'") == [(0,)]
    # The last outcome's COMMIT is visible here a moment before its worker has read the
    # answer and dropped it from its pending count (CI saw 1 pending, 8 ms old).
    wait_until(lambda: livez(port)[1].get("pending_outcomes") == 0, 10, "no outcome pending")
    status, body = livez(port)
    assert status == 200 and body["pending_outcomes"] == 0, body
    assert_invariants(sql)


def test_a_batch_the_database_refuses_is_split_to_the_one_outcome_at_fault(
    database_url: str, audited: Sql, spawn_worker: Any
) -> None:
    """Values our checks let through and the database still refuses (here: constraints the
    test adds) fail only their own job; every other outcome of the batch is written."""
    audited("ALTER TABLE results ADD CONSTRAINT refuse_marker CHECK (NOT (result ? 'refuse_me'))")
    audited("ALTER TABLE jobs ADD CONSTRAINT refuse_text "
            "CHECK (last_error IS NULL OR strpos(last_error, 'REFUSE_TEXT') = 0)")
    with Client(database_url) as c:  # all enqueued first: claimed and completed in one batch
        ok = [c.enqueue("outcome_from", {"blob": blob("return", {"n": i})}) for i in range(40)]
        refused = [c.enqueue("outcome_from", {"blob": blob("return", {"refuse_me": i})})
                   for i in range(2)]
        bad_text = c.enqueue("outcome_from", {"blob": blob("raise", "REFUSE_TEXT here")})
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--concurrency", "50")
    everything = [*ok, *refused, bad_text]
    wait_until(lambda: _terminal(audited, everything), 60, "all jobs terminal")
    states = dict(audited("SELECT id, state::text FROM jobs"))
    assert all(states[i] == "succeeded" for i in ok), states
    for i in refused:
        [(state, error)] = audited("SELECT state::text, last_error FROM jobs WHERE id=%s", i)
        assert state == "dead"
        assert error.startswith("result is not storable: the database refused it"), error
        assert "refuse_marker" in error
    [(state, error)] = audited("SELECT state::text, last_error FROM jobs WHERE id=%s", bad_text)
    assert state == "dead", (state, error)  # retried per its policy, then dead
    assert error.startswith("the error text was not storable: the database refused it")
    assert "refuse_text" in error
    assert w.proc.poll() is None
    assert "refused its outcome" in w.output()
    assert_invariants(audited)
