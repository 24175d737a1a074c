"""The producer pools' check of a connection before lending it to an insert: a liveness round
trip only when the connection might be dead.

psycopg_pool's ``check_connection`` sends an empty query on every checkout: one round trip in
front of every enqueue (which then takes two more: BEGIN with its INSERT, and COMMIT). On an
idle machine each round trip that wakes the server costs 0.3-0.6 ms (docs/benchmarks.md,
"Latency"). Inside ``insert_checkout()`` (the insert paths: Database._insert_transaction and
its async twin) a connection given back less than ``FRESH_SECONDS`` ago, whose socket has
nothing to read, is lent without it:

- a backend that was terminated, a server that shut down or restarted, a PgBouncer that went
  away: each sends its FATAL message or closes the socket, which then reads as readable, and
  the connection gets the round trip (and is replaced when it fails);
- a link that died silently (a failover that moved an address: no FIN until we send) fails
  the BEGIN+INSERT instead of the ping. The insert paths retry that once, nothing having
  been committed (the same policy as any failure before COMMIT), and the retry's checkout
  is pinged: the pool's next idle connection may be as dead, and the ping loop discards
  every dead one before it lends or connects;
- a connection idle for longer, or never lent, or with bytes waiting (a notice, a parameter
  change), is pinged as before.

Every other checkout (reads, cancels, bulk actions: no retry of their own) keeps the ping,
which is what lets the pool replace a dead connection before the caller sees it.
"""

from __future__ import annotations

import contextlib
import contextvars
import select
import time
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

# Long enough to cover a producer's steady stream of calls, short enough that a server gone
# quiet since (a failover, a partition) is usually noticed by the ping rather than by a failed
# statement. Not a setting: it only decides whether a round trip is saved.
FRESH_SECONDS = 1.0

_GIVEN_BACK = "_skiplock_given_back"  # attribute on the pooled connection: time.monotonic()
# Set while an insert path checks a connection out: the pools call their check in the
# caller's thread (sync) or task (async), so this is the checkout's own context.
_INSERTING: contextvars.ContextVar[bool] = contextvars.ContextVar("skiplock_inserting",
                                                                   default=False)


@contextlib.contextmanager
def insert_checkout() -> Iterator[None]:
    """Checkouts inside this block (an insert path, which retries a failure before COMMIT)
    may skip the ping of a fresh connection."""
    token = _INSERTING.set(True)
    try:
        yield
    finally:
        _INSERTING.reset(token)


def ping_needed(idle_seconds: float | None) -> bool:
    """Whether a pooled connection needs its liveness round trip whatever its socket says:
    never lent before (None), or idle ``FRESH_SECONDS`` or longer."""
    return idle_seconds is None or not 0 <= idle_seconds < FRESH_SECONDS


def given_back(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Note that ``conn`` is going back to its pool now, in a state fit to lend again."""
    if not conn.closed:
        setattr(conn, _GIVEN_BACK, time.monotonic())


def _needs_ping(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    if not _INSERTING.get() or conn.closed or conn.broken:
        return True
    since: float | None = getattr(conn, _GIVEN_BACK, None)
    idle = None if since is None else time.monotonic() - since
    if ping_needed(idle):
        return True
    try:
        poller = select.poll()  # not select.select: it refuses descriptors from 1024 on
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))  # readable, or POLLHUP/POLLERR
    except (OSError, ValueError, psycopg.OperationalError):
        return True


def check_unless_fresh(conn: psycopg.Connection[Any]) -> None:
    """ConnectionPool's ``check``: its own check, unless an insert checks out a fresh ``conn``
    (module doc)."""
    if _needs_ping(conn):
        ConnectionPool.check_connection(conn)


async def acheck_unless_fresh(conn: psycopg.AsyncConnection[Any]) -> None:
    """AsyncConnectionPool's ``check``: check_unless_fresh awaited."""
    if _needs_ping(conn):
        await AsyncConnectionPool.check_connection(conn)
