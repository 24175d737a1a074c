"""The insert transaction's failure policy both clients share (db.insert_failure, and the
one-round-trip enqueue's db.OneTripEnqueue): pure, so
Database and AsyncDatabase cannot drift apart on when to retry, when the outcome is unknown,
and when to give up. (The behaviour against real broken connections is in
tests/integration/failures/test_network_producer.py.)"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg_pool import PoolTimeout

from skiplock import job_ids
from skiplock.db import (
    ONE_TRIP_TRIES,
    ONE_TRIP_TRIES_AFTER_A_LOST_ANSWER,
    OneTripEnqueue,
    insert_failure,
)
from skiplock.errors import DataRefused, EnqueueOutcomeUnknown, SkiplockError
from skiplock.job_ids import ReservedIds

LOST = psycopg.OperationalError("server closed the connection unexpectedly")
READ_ONLY = psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only txn")
TOO_BIG = psycopg.errors.ProgramLimitExceeded("index row size exceeds maximum")
BAD_DATA = psycopg.errors.NumericValueOutOfRange("bigint out of range")


@pytest.mark.parametrize(("exc", "committing", "retried", "expected"), [
    (LOST, False, False, "retry"),      # before COMMIT nothing was stored
    (LOST, False, True, "wrap"),        # only once
    (LOST, True, False, "unknown"),     # while committing: may have committed
    (LOST, True, True, "unknown"),
    (READ_ONLY, False, False, "retry"),  # a standby: a fresh connection may find the primary
    (READ_ONLY, True, False, "retry"),   # refused, so not committed
    (READ_ONLY, False, True, "wrap"),
    (TOO_BIG, False, False, "wrap"),     # class 54: no retry cures it
    (BAD_DATA, False, False, "wrap"),
    (BAD_DATA, True, False, "wrap"),
])
def test_insert_failure(exc: psycopg.Error, committing: bool, retried: bool,
                        expected: str) -> None:
    assert insert_failure(exc, committing, retried) == expected


# -- the one-round-trip enqueue (db.one_trip_failure, OneTripEnqueue, job_ids.ReservedIds) --

QUERY_CANCELED = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
REFUSED_KEY = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
FAILURES = {
    "lost": LOST, "read_only": READ_ONLY, "too_big": TOO_BIG, "bad_data": BAD_DATA,
    "timeout": QUERY_CANCELED, "refused_key": REFUSED_KEY,
    "no_connection": PoolTimeout("couldn't get a connection after 2.00 sec"),
    "terminated": psycopg.errors.AdminShutdown("terminating connection due to administrator"),
}
LOST_KINDS = ("lost", "terminated")  # what the server did is unknown


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(sorted(FAILURES)), min_size=1, max_size=5))
def test_one_trip_failures_never_claim_nothing_was_stored_after_a_possible_commit(
        kinds: list[str]) -> None:
    """Any run of failures, driven through OneTripEnqueue as the clients drive it: at most
    ONE_TRIP_TRIES tries, one more only when a possible commit was followed by a try that
    found no connection; a try that may have committed (its connection lost) is followed by
    EnqueueOutcomeUnknown naming its id, or by the data's own refusal, never by an error that
    says nothing was changed; a first failure that
    sent nothing (no connection) or that the server refused (its data) is not tried again."""
    trip = OneTripEnqueue("enqueue 'add'", "postgresql://u:secret@db/x", 7, ReservedIds())
    maybe_stored = False
    for n, kind in enumerate(kinds):
        exc = FAILURES[kind]
        try:
            trip.failed(exc)
        except EnqueueOutcomeUnknown as unknown:
            assert unknown.job_id == 7
            assert maybe_stored or kind in LOST_KINDS
            assert "secret" not in str(unknown)
            return
        except SkiplockError as error:
            # after a possible commit only the data itself may be refused (the same statement
            # was refused on the earlier try too): never "unreachable, nothing was changed"
            assert not maybe_stored or isinstance(error, DataRefused), f"{kinds[:n + 1]}: {error}"
            assert not maybe_stored or "nothing was changed" not in str(error)
            assert "secret" not in str(error)
            if n == 0:
                assert kind in ("no_connection", "too_big", "bad_data", "refused_key")
            return
        assert trip.tries == n + 1 < ONE_TRIP_TRIES_AFTER_A_LOST_ANSWER
        if trip.tries >= ONE_TRIP_TRIES:
            assert maybe_stored and kind == "no_connection", kinds[:n + 1]
        maybe_stored = maybe_stored or kind in LOST_KINDS
        assert trip.maybe_stored == maybe_stored
        assert kind not in ("too_big", "bad_data", "refused_key")  # refused: never again


@pytest.mark.parametrize(("kinds", "expected"), [
    (["lost", "lost", "lost"], "unknown"),            # three tries, every one maybe stored
    (["lost", "no_connection", "no_connection"], "unknown"),  # the network never came back
    (["read_only", "read_only", "read_only"], "wrap"),  # refused each time: nothing stored
    (["read_only", "lost", "read_only"], "unknown"),    # the second try may have committed
    (["no_connection"], "wrap"),                       # nothing ever went out
    (["timeout", "bad_data"], "wrap"),                 # the data itself is refused
    (["timeout", "timeout"], "wrap"),                  # cancelled twice: rolled back, no third
    (["lost", "lost"], "unknown"),                     # two lost answers: no third try
    (["lost", "no_connection", "lost"], "unknown"),
    (["terminated", "timeout", "timeout"], "unknown"),  # the first may have committed
])
def test_one_trip_failure_examples(kinds: list[str], expected: str) -> None:
    trip = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", 7, ReservedIds())
    raised: type[BaseException] | None = None
    for kind in kinds:
        try:
            trip.failed(FAILURES[kind])
        except SkiplockError as exc:
            raised = type(exc)
            break
    assert raised is not None, "every try failed, yet no error was raised"
    assert (raised is EnqueueOutcomeUnknown) == (expected == "unknown"), raised


def test_one_trip_answers() -> None:
    """A row inserted now is created; a row already there is this job only after a try that
    may have committed (else the sequence was set back: refused, saying how to fix it); no
    row twice is refused the same way, or unknown after a lost try."""
    fresh = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", 7, ReservedIds())
    assert fresh.answered((7, True)) == (7, True)
    with pytest.raises(SkiplockError, match=r"job id 7.*jobs_id_seq.*setval") as taken:
        fresh.answered((7, False))
    assert not isinstance(taken.value, EnqueueOutcomeUnknown)
    assert fresh.answered(None) is None
    with pytest.raises(SkiplockError, match=r"job id 7.*set back"):
        fresh.answered(None)
    lost = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", 7, ReservedIds())
    lost.failed(LOST)
    assert lost.answered((7, False)) == (7, True)  # stored by the try whose answer was lost
    assert lost.answered(None) is None
    with pytest.raises(EnqueueOutcomeUnknown, match=r"get_job\(7\)"):
        lost.answered(None)


def test_a_failure_that_reached_the_server_drops_the_reserved_ids() -> None:
    """Any try the server saw fail (lost, read-only: perhaps a failover) or an id found taken
    drops the block: the next one is taken afresh. A try that found no connection keeps it."""
    for kind in ("lost", "read_only", "timeout", "terminated"):
        ids = ReservedIds()
        ids.add(range(10, 20))
        trip = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", ids.take() or 0, ids)
        trip.failed(FAILURES[kind])
        assert ids.take() is None, kind
    ids = ReservedIds()
    ids.add(range(10, 20))
    trip = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", ids.take() or 0, ids)
    trip.failed(LOST)
    ids.add(range(30, 40))
    trip.failed(FAILURES["no_connection"])
    assert ids.take() == 30
    fresh = OneTripEnqueue("enqueue 'add'", "postgresql://db/x", ids.take() or 0, ids)
    with pytest.raises(SkiplockError, match="set back"):
        fresh.answered((31, False))
    assert ids.take() is None


def test_reserved_ids_age_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A block is refreshed on an enqueue's trip once REFRESH_SECONDS old and never used once
    MAX_AGE_SECONDS old: an id is never much older than its insert."""
    now = [1000.0]
    monkeypatch.setattr(job_ids.time, "monotonic", lambda: now[0])
    ids = ReservedIds()
    assert ids.running_out() and ids.take() is None
    ids.add(range(1, 5))
    assert ids.take() == 1 and not ids.running_out()
    now[0] += job_ids.REFRESH_SECONDS + 0.01
    assert ids.running_out() and ids.take() == 2  # still good, but refresh on this trip
    ids.add(range(50, 54))  # the refresh replaces what was left
    assert ids.take() == 50
    now[0] += job_ids.MAX_AGE_SECONDS + 0.01
    assert ids.take() is None and ids.running_out()


@settings(max_examples=10, deadline=None)
@given(st.integers(min_value=1, max_value=40), st.integers(min_value=2, max_value=6))
def test_reserved_ids_hand_each_id_out_once_while_refilled(block: int, threads: int) -> None:
    """Takers race a refiller that replaces the block with the next range, as enqueues of
    many threads do (bounded counts, no waiting on each other): no id is handed out twice,
    every id handed out was added, each thread sees its ids ascending (blocks come in
    order)."""
    ids = ReservedIds()
    blocks = [list(range(1 + k * block, 1 + (k + 1) * block)) for k in range(60)]
    taken: list[list[int]] = [[] for _ in range(threads)]

    def refill() -> None:
        for b in blocks:
            ids.add(b)
            time.sleep(0.0002)

    def take(mine: list[int]) -> None:
        for n in range(3000):
            if (i := ids.take()) is not None:
                mine.append(i)
            if n % 50 == 0:
                time.sleep(0)  # let the others in

    pool = [threading.Thread(target=refill)] + [
        threading.Thread(target=take, args=(t,)) for t in taken]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    assert not any(t.is_alive() for t in pool)
    every = [i for mine in taken for i in mine]
    assert every, "no id was taken at all"
    assert len(every) == len(set(every)), "an id was handed out twice"
    assert set(every) <= {i for b in blocks for i in b}
    assert all(mine == sorted(mine) for mine in taken)
