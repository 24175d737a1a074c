"""The insert transaction's failure policy both clients share (db.insert_failure): pure, so
Database and AsyncDatabase cannot drift apart on when to retry, when the outcome is unknown,
and when to give up. (The behaviour against real broken connections is in
tests/integration/failures/test_network_producer.py.)"""

from __future__ import annotations

import psycopg
import pytest

from skiplock.db import insert_failure

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
