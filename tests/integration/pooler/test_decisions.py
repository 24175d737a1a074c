"""The pure decisions behind pooler mode and failover errors (no server needed)."""

from __future__ import annotations

import psycopg
import pytest

from skiplock.db import (
    conninfo,
    needs_reconnect,
    refuses_startup_options,
    transaction_settings,
    wrap_error,
)
from skiplock.errors import DatabaseUnavailable, DataRefused, SkiplockError


def test_pooler_conninfo_sends_no_options_and_direct_is_unchanged() -> None:
    direct = conninfo("postgresql://u@h/db", "jobs", 5, 30, synchronous_commit=False)
    assert "search_path=jobs,public" in direct and "synchronous_commit=off" in direct
    pooled = conninfo("postgresql://u@h/db", "jobs", 5, 30, synchronous_commit=False,
                      pooler=True)
    assert "options" not in pooled
    assert "application_name" in pooled and "keepalives" in pooled


def test_transaction_settings_mirror_the_startup_options() -> None:
    assert transaction_settings("jobs", 2.5) == {
        "search_path": "jobs, public", "statement_timeout": "2500",
        "synchronous_commit": None, "read_only": None}
    claim = transaction_settings("jobs", 30, synchronous_commit=False, read_only=True)
    assert claim["synchronous_commit"] == "off" and claim["read_only"] == "on"


def test_only_pgbouncers_refusal_means_a_pooler() -> None:
    assert refuses_startup_options(psycopg.OperationalError(
        'connection to server at "127.0.0.1", port 6432 failed: FATAL:  unsupported startup '
        "parameter: options"))
    assert not refuses_startup_options(psycopg.OperationalError("password authentication failed"))
    assert not refuses_startup_options(ValueError("unsupported startup parameter"))


@pytest.mark.parametrize("error", [
    psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
    psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
    psycopg.errors.CrashShutdown("terminating connection because of crash of another process"),
    psycopg.errors.CannotConnectNow("the database system is starting up"),
])
def test_failover_errors_are_reconnect(error: psycopg.Error) -> None:
    assert needs_reconnect(error)
    wrapped = wrap_error(error, "postgresql://u:pw@h/db", "record results")
    assert isinstance(wrapped, DatabaseUnavailable) and not isinstance(wrapped, DataRefused)


def test_a_write_refused_on_the_read_pool_stays_an_error() -> None:
    error = psycopg.errors.ReadOnlySqlTransaction("cannot execute UPDATE")
    wrapped = wrap_error(error, None, "cancel", read_only_session=True)
    assert type(wrapped) is SkiplockError
    assert not needs_reconnect(psycopg.errors.UniqueViolation("duplicate key"))
