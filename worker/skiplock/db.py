"""The only module that talks to psycopg: one method per named query.

Everything above this boundary sees plain Python values and Skiplock errors; driver errors are
wrapped here with the password scrubbed from their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypedDict, Unpack

import psycopg
from psycopg import sql as pgsql
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from . import migrator, sql
from .copy_data import CopyBatch, CopyRefused, next_block
from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DataRefused,
    EnqueueOutcomeUnknown,
    IdempotencyConflict,
    SchemaMissing,
    SkiplockError,
)
from .idempotency import batch_request, differences, job_request, request_hash
from .job_ids import RESERVE, ReservedIds
from .limits import adoption_keys
from .names import schema_problem
from .pool_check import check_unless_fresh, given_back, insert_checkout
from .redact import SecretFilter, parse_problem, redact_url, remember, scrub

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("skiplock.db")
# psycopg and psycopg_pool log connection failures in their own words (a host name libpq read
# out of a malformed password, say): scrubbed like our own messages.
for _name in ("psycopg", "psycopg.pool"):
    logging.getLogger(_name).addFilter(SecretFilter())
Row = dict[str, Any]
Q = sql.queries()
_MIGRATION_LOCK = "skiplock-migrate"


def conninfo(
    url: str,
    schema: str,
    connect_timeout: float,
    statement_timeout: float,
    application_name: str = "skiplock",
    synchronous_commit: bool = True,
    read_only: bool = False,
    pooler: bool = False,
) -> str:
    """The URL plus the options every Skiplock connection needs (schema, bounded timeouts).

    ``read_only``: the server refuses writes on it (the API's read pool: a write that landed
    there by mistake fails loudly instead of competing with reads).

    ``pooler``: the URL is a transaction pooler's (PgBouncer), which refuses startup
    ``options`` and would not keep them for us anyway (each transaction may run on another
    server connection): no options are sent; the caller sends transaction_settings() in every
    transaction instead.

    Every connection (Database, WorkerConnection) is built here, so this is where the schema
    name is checked (it is spliced into ``options``: a space would add a server setting) and
    where a URL libpq cannot parse becomes a ConfigurationError without the URL's text."""
    remember(url)
    problem = schema_problem(schema)
    if problem:
        raise ConfigurationError(problem)
    # jit=off: every Skiplock query is short; JIT compiling queue_stats on a big table cost
    # 1.4 s of a 2.4 s run at 1M rows (the planner's cost estimate trips the JIT threshold).
    options = (
        f"-c search_path={schema},public -c statement_timeout={int(statement_timeout * 1000)}"
        " -c jit=off"
    )
    if not synchronous_commit:
        options += " -c synchronous_commit=off"
    if read_only:
        options += " -c default_transaction_read_only=on"
    try:
        return _make_conninfo(url, connect_timeout, statement_timeout, application_name,
                              None if pooler else options)
    except (psycopg.Error, ValueError, TypeError) as exc:
        raise malformed_url(exc, url) from None


def malformed_url(exc: BaseException, url: str) -> ConfigurationError:
    """The error for a URL libpq cannot parse. Its message quotes the piece it choked on,
    which is often the password (`invalid percent-encoded token: "Hunter%zzSecret"`), so only
    what it means is said (redact.parse_problem), never its text."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigurationError(
        f"the database URL ({redact_url(url)}) is malformed: {parse_problem(first)}. "
        "Fix SKIPLOCK_DATABASE_URL (--database-url): percent-encode special characters in "
        "the user and password ('%' as %25, '@' as %40, '/' as %2F, a space as %20), or "
        "use a key=value DSN with the password in single quotes (a quote or backslash in it "
        "escaped with a backslash)."
    )


def transaction_settings(
    schema: str, statement_timeout: float, synchronous_commit: bool = True,
    read_only: bool = False,
) -> dict[str, Any]:
    """The parameters of the transaction_settings query: what conninfo()'s options set for a
    session, for one transaction (behind a transaction pooler)."""
    return {
        "search_path": f"{schema}, public",
        "statement_timeout": str(int(statement_timeout * 1000)),
        "synchronous_commit": None if synchronous_commit else "off",
        "read_only": "on" if read_only else None,
    }


def refuses_startup_options(exc: BaseException) -> bool:
    """A connection refused because it sent startup ``options``: PgBouncer answers "unsupported
    startup parameter: options" (unless told to ignore them, which would silently drop the
    search_path and the statement timeout)."""
    return isinstance(exc, psycopg.OperationalError) and (
        "unsupported startup parameter" in str(exc))


# SQLSTATEs that say "this server cannot take this connection's work now", not "this work is
# wrong": a read-only server (a standby, or a demoted primary, where a connection lands across
# a failover) and the shutdowns of one (administrator, crash, still starting up).
RECONNECT_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})


def needs_reconnect(exc: BaseException) -> bool:
    """The connection must be dropped and a new one made: another host (the new primary, which
    a multi-host URL with target_session_attrs=read-write finds) may take the work."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate in RECONNECT_SQLSTATES


def _make_conninfo(
    url: str, connect_timeout: float, statement_timeout: float, application_name: str,
    options: str | None,
) -> str:
    return psycopg.conninfo.make_conninfo(
        url,
        connect_timeout=max(1, round(connect_timeout)),
        application_name=application_name,
        options=options,
        # UTF-8 whatever the URL asks for: with SQL_ASCII psycopg returns text as bytes and
        # sends it as ASCII, so the catalogue, non-ASCII names and keys, and the bulk COPY
        # broke. The server converts to the database's encoding (refusing, as for any
        # producer, what that cannot hold).
        client_encoding="UTF8",
        # Detect a dead peer (cut cable, frozen host) instead of waiting forever on a socket.
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        tcp_user_timeout=int((connect_timeout + statement_timeout) * 1000),
    )


# SQLSTATE classes that say "this data", not "this connection": data exception, integrity
# constraint violation, program limit exceeded.
_DATA_REFUSED_CLASSES = frozenset({"22", "23", "54"})


def wrap_error(exc: BaseException, url: str | None, doing: str, *,
               read_only_session: bool = False) -> SkiplockError:
    """A Skiplock error for a driver error, saying what failed and what to do, no secrets.

    ``read_only_session``: the connection was opened read-only on purpose (the API's read
    pool), so a refused write (25006) is a bug to report, not a server to leave."""
    where = redact_url(url)
    detail = scrub(
        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, url
    )
    if needs_reconnect(exc) and not (read_only_session and isinstance(
            exc, psycopg.errors.ReadOnlySqlTransaction)):
        return DatabaseUnavailable(
            f"{doing}: the database at {where} is read-only or shutting down ({detail}): a "
            "standby, or a primary in a failover. The connection was dropped; a new one looks "
            "for the primary again (list every host in the URL, with "
            "target_session_attrs=read-write)."
        )
    if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
        return SchemaMissing(
            f"{doing}: the Skiplock tables are missing in the database at {where} ({detail}). "
            "Run `skiplock migrate` (or enable the operator's migrate option)."
        )
    # Before OperationalError: "stack depth limit exceeded" and "total size of jsonb array
    # elements exceeds the maximum" (class 54) are OperationalErrors that no retry can cure.
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _DATA_REFUSED_CLASSES:
        return DataRefused(f"{doing}: the database at {where} refused the data ({detail})")
    if isinstance(exc, psycopg.OperationalError | PoolTimeout | OSError):
        return DatabaseUnavailable(
            f"{doing}: database at {where} is unreachable ({detail}). "
            "Check that PostgreSQL is running and SKIPLOCK_DATABASE_URL is right; "
            "nothing was changed by this call."
        )
    return SkiplockError(f"{doing}: database error at {where}: {detail}")


class NewJob(NamedTuple):
    """A validated job, ready to insert (a tuple: built once per job on the bulk path, where a
    frozen dataclass's constructor alone cost ~1 us)."""

    task: str
    args: Mapping[str, Any]
    args_json: str  # ``args`` serialised once, by the producer's validation
    queue: str
    priority: int
    max_attempts: int
    run_at: dt.datetime | None = None
    delay: float | None = None
    unique_key: str | None = None
    # the deadline of each attempt, overriding the task's (seconds)
    timeout: float | None = None
    # a limited task's key (limits.key_for): '' for the task as a whole; None: no limits
    concurrency_key: str | None = None
    # the producer's trace context as JSON text (skiplock/tracing.py); None: none (no otel)
    trace_context: str | None = None


@dataclass(eq=False, slots=True)
class ClaimedJob:
    """One claimed run; compared by identity (two claims of one job are different runs).
    Not frozen: a frozen dataclass's constructor (object.__setattr__ per field) cost ~3 us of
    a no-op job's ~55 us; nothing changes a claimed job after the claim."""

    id: int
    queue: str
    task: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    # seconds since a worker first found that no live worker can run this job (None: never)
    unrunnable_for: float | None = None
    # this job's own deadline per attempt (enqueue's timeout=); None: the task's, if any
    timeout: float | None = None
    snoozes: int = 0
    # the producer's trace context (skiplock/tracing.py), when the claim returns it
    trace_context: Any = None


@dataclass(frozen=True)
class Failure:
    id: int
    attempt: int
    error: str
    delay: float
    permanent: bool


class StatsRows(NamedTuple):
    """What one stats call reads (Database.stats_rows): per-queue counts, the paused queues,
    per queue and limited task the limits' counts, and the next schedule firing's row."""

    counts: list[Row]
    paused: list[Row]
    limits: list[Row]
    next_firing: list[Row]  # empty unless asked for


class LimitedClaim(NamedTuple):
    """What claim_limited claimed, and whether a locked pass may claim more (limits.sql):
    for which tasks (``lock_tasks``, the only ones that pass locks)."""

    jobs: list[ClaimedJob]
    need_lock: bool
    lock_tasks: tuple[str, ...] = ()


class Peer(NamedTuple):
    """Another live worker: the queues it serves and its {task: params}."""

    queues: frozenset[str]
    tasks: dict[str, Any]


class WorkerBeat(NamedTuple):
    """What a registry heartbeat learned: each other live worker, and whether our own row was
    still there (a pruned row means: register again)."""

    peers: dict[str, Peer]
    registered: bool


def _job_params(job: NewJob) -> dict[str, Any]:
    """The parameters of enqueue and enqueue_keyed for one job (request and its hash only for
    a keyed job: the unkeyed path pays nothing for idempotency)."""
    request = job_request(job) if job.unique_key is not None else None
    return {
        "queue": job.queue,
        "task": job.task,
        "args": Jsonb(dict(job.args)),
        "priority": job.priority,
        "max_attempts": job.max_attempts,
        "run_at": job.run_at,
        "delay": job.delay,
        "unique_key": job.unique_key,
        "timeout": job.timeout,
        "concurrency_key": job.concurrency_key,
        "trace_context": job.trace_context,
        "request_hash": request_hash(request) if request is not None else None,
        "request": Jsonb(request) if request is not None else None,
        "_request": request,
    }


def unnest_params(jobs: Sequence[NewJob]) -> tuple[
        dict[str, Any], list[dict[str, Any] | None], list[str | None],
        dict[str, tuple[dict[str, Any], str]]]:
    """The parameters of enqueue_many_unnest (Database's and AsyncDatabase's), each job's
    idempotency request and its hash (None: no key), and each key's first request and hash
    (a key's first job in the call is the one that claims it)."""
    if any(j.delay for j in jobs):
        raise ValueError("enqueue_many takes run_at, not delay, per job")
    params: dict[str, Any] = {
        "queues": [j.queue for j in jobs],
        "tasks": [j.task for j in jobs],
        "args": [j.args_json for j in jobs],
        "priorities": [j.priority for j in jobs],
        "max_attempts": [j.max_attempts for j in jobs],
        "run_ats": [j.run_at for j in jobs],
        "unique_keys": [j.unique_key for j in jobs],
        "timeouts": [j.timeout for j in jobs],
        "concurrency_keys": [j.concurrency_key for j in jobs],
        "trace_contexts": [j.trace_context for j in jobs],
    }
    requests = [job_request(j) if j.unique_key is not None else None for j in jobs]
    hashes = [request_hash(r) if r is not None else None for r in requests]
    params["request_hashes"] = hashes
    params["requests"] = [Jsonb(r) if r is not None else None for r in requests]
    keyed: dict[str, tuple[dict[str, Any], str]] = {}
    for j, r, h in zip(jobs, requests, hashes, strict=True):
        if j.unique_key is not None and r is not None and h is not None:
            keyed.setdefault(j.unique_key, (r, h))
    return params, requests, hashes, keyed


def check_unnest_keys(
    rows: Iterable[Sequence[Any]], jobs: Sequence[NewJob], hashes: Sequence[str | None],
    requests: Sequence[dict[str, Any] | None], keyed: Mapping[str, tuple[dict[str, Any], str]],
) -> None:
    """After enqueue_many_unnest, in its transaction: a key stored before (or twice in the
    call) skipped its job, so it must have been the same request; IdempotencyConflict (which
    rolls the whole call back) otherwise. ``rows``: idempotency_keys of the call's keys."""
    for key, job_ids, stored_hash, stored in rows:
        _check_replay(key, job_ids, stored_hash, stored, *keyed[key])
    for j, r, h in zip(jobs, requests, hashes, strict=True):
        if j.unique_key is not None and r is not None and h != keyed[j.unique_key][1]:
            raise IdempotencyConflict(j.unique_key, [], differences(
                keyed[j.unique_key][0], r) + " (the key is repeated in this call)")


def _check_replay(key: str, job_ids: Sequence[int], stored_hash: str | None,
                  stored: Mapping[str, Any] | None, request: Mapping[str, Any],
                  new_hash: str) -> list[int]:
    """The key's job ids when this request is the one the key was first used for; else
    IdempotencyConflict. A key carried over from jobs.unique_key (no hash) replays."""
    ids = [int(i) for i in job_ids]
    if stored_hash is not None and stored_hash != new_hash:
        raise IdempotencyConflict(key, ids, differences(stored, request))
    return ids


def _keyed_outcome(row: Sequence[Any], params: Mapping[str, Any]) -> tuple[int, bool]:
    """(id, created) from a row of enqueue or enqueue_keyed; a key that was already there
    must have been used for this same request."""
    if bool(row[1]) or len(row) < 5:
        return int(row[0]), bool(row[1])
    ids = _check_replay(params["unique_key"], row[2], row[3], row[4], params["_request"],
                        params["request_hash"])
    if len(ids) != 1:  # the key of a batch, sent for one job
        raise IdempotencyConflict(params["unique_key"], ids, differences(
            row[4], params["_request"]))
    return ids[0], False


# -- one enqueue's decisions, shared by Database and adb.AsyncDatabase (only their I/O differs) --

# A keyed insert returns no row when a concurrent insert with the same key committed after the
# statement's snapshot was taken: a second statement sees it, so one job is tried twice.
ENQUEUE_TRIES = 2


def enqueue_plan(job: NewJob) -> tuple[str, dict[str, Any]]:
    """The statement and parameters that store ``job``. Only a keyed job pays for the key
    (hashing, the key row): the unkeyed statement is the plain insert."""
    return (Q["enqueue"] if job.unique_key is None else Q["enqueue_keyed"]), _job_params(job)


def firing_seconds(rows: Sequence[Row]) -> float | None:
    """next_firing's answer from its rows: seconds, or None when nothing is scheduled."""
    return None if not rows or rows[0]["seconds"] is None else float(rows[0]["seconds"])


def unread_key(doing: str) -> DatabaseUnavailable:
    """The error when ENQUEUE_TRIES statements could not read back a concurrent key's job."""
    return DatabaseUnavailable(
        f"{doing}: a request with the same unique_key was being stored at the same time "
        "and could not be read back; nothing was stored by this call, retry it")


def schema_search_path(schema: str) -> dict[str, str]:
    """search_path_swap's parameters for the enqueue in a caller's transaction."""
    return {"search_path": f"{schema}, public"}


def restored_search_path(swapped: Sequence[Any] | None) -> dict[str, str]:
    """search_path_swap's parameters that put back the caller's search_path, from the row
    of the swap that replaced it."""
    return {"search_path": str(swapped[0]) if swapped else "public"}


def caller_enqueue_outcome(row: Sequence[Any] | None,
                           params: Mapping[str, Any]) -> tuple[int, bool]:
    """(id, created) of an enqueue in the caller's transaction: there it cannot be retried
    (the caller's snapshot stays), so a concurrent key is an error of its own."""
    if row is None:
        raise SkiplockError("enqueue: a job with this unique_key is being inserted concurrently")
    return _keyed_outcome(row, params)


def _int_array(values: Iterable[int]) -> str:
    """An integer array literal: psycopg's list dumper costs ~1 us per element, this ~0.1."""
    return "{" + ",".join(map(str, values)) + "}"


# The filters of a jobs listing, with their defaults (None: not filtered).
_JOB_FILTER_DEFAULTS: dict[str, Any] = {
    "queue": None,
    "task": None,
    "stuck": False,
    "waiting_for_worker": False,
    "min_attempts": None,
    "created_after": None,
    "created_before": None,
    "finished_after": None,
    "finished_before": None,
    "error_contains": None,
    "before_id": None,
    "limit": 100,
}


def _job_filters(filters: Mapping[str, Any], state_key: str) -> dict[str, Any]:
    """Query parameters for a jobs listing; an unknown filter is a programming error."""
    params = {state_key: None, **_JOB_FILTER_DEFAULTS}
    unknown = set(filters) - set(params)
    if unknown:
        raise TypeError(f"unknown job filters: {sorted(unknown)}")
    params.update(filters)
    return params


# Bulk actions over a jobs filter (bulk.sql): what they do, the bounds of one batch, the cap of
# the count shown before one.
BULK_ACTIONS = ("cancel", "retry", "delete")
BULK_MAX_BATCH = 1000
BULK_DEFAULT_BATCH = 500
BULK_COUNT_CAP = 1_000_000


@dataclass(frozen=True)
class BulkBatch:
    """One batch of a bulk action: ``ids`` it acted on, of ``examined`` matching ids (the rest
    were skipped), and where the next batch starts."""

    ids: list[int]
    examined: int
    cursor: int | None  # the last id examined: the next batch looks at lower ids only
    more: bool  # the batch was full, so more jobs may match past the cursor

    @property
    def done(self) -> int:
        return len(self.ids)

    @property
    def skipped(self) -> int:
        return self.examined - len(self.ids)


class QueryScope:
    """The database work of one caller (an API request), which another thread can cancel.

    The API runs a request's work in a thread under a deadline; at the deadline the request
    answers 503 and the thread is abandoned. Without this its query kept running up to the
    statement timeout, holding a pool connection. ``cancel`` sends a cancel request for every
    connection the work holds and makes every later checkout fail; those connections are closed
    instead of going back to the pool, so a late cancel can never hit another request's query.
    ``read_only`` work takes connections from the read pool when the Database has one.
    """

    def __init__(self, *, read_only: bool) -> None:
        self.read_only = read_only
        self.cancelled = False
        self._lock = threading.Lock()
        self._held: set[psycopg.Connection[Any]] = set()

    def cancel(self, timeout: float) -> None:
        """Cancel the running queries (blocking: a network round trip per connection)."""
        with self._lock:  # held while sending, so no connection goes back to the pool meanwhile
            self.cancelled = True
            for conn in self._held:
                try:
                    conn.cancel_safe(timeout=timeout)
                except Exception as exc:  # it ended meanwhile, or the server is unreachable
                    log.debug("cancelling a query of an abandoned request: %s",
                              type(exc).__name__)

    def cancel_soon(self, timeout: float) -> None:
        """``cancel`` in a thread of its own: the caller (the event loop) must not wait on a
        database that may not answer."""
        threading.Thread(target=self.cancel, args=(timeout,), name="skiplock-cancel",
                         daemon=True).start()

    def refuse_if_cancelled(self) -> None:
        if self.cancelled:
            raise DatabaseUnavailable("the request's deadline passed; its work was cancelled")

    def _enter(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self.refuse_if_cancelled()
            self._held.add(conn)

    def _leave(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._held.discard(conn)
            if self.cancelled:
                conn.close()  # the pool discards a closed connection


_SCOPE: contextvars.ContextVar[QueryScope | None] = contextvars.ContextVar(
    "skiplock_query_scope", default=None)


@contextlib.contextmanager
def query_scope(scope: QueryScope) -> Iterator[QueryScope]:
    """Run the block's database work (in this thread) under ``scope``."""
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


@contextlib.contextmanager
def _discarded_on_failover(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Close a pooled connection whose server turned read-only or is shutting down, so that the
    pool drops it instead of handing it out again (a new one may find the new primary); note
    when one fit to lend again goes back (pool_check: the next checkout skips its ping)."""
    try:
        yield
    except psycopg.Error as exc:
        if needs_reconnect(exc):
            conn.close()
        raise
    finally:
        given_back(conn)


class _PoolConnection(psycopg.Connection[Any]):
    """A pool's connection that notices a transaction pooler: when the server refuses the
    startup options, ``skiplock_on_refused`` (the Database's) switches to pooler mode and
    returns the conninfo to connect with instead."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        on_refused: Callable[[], str] | None = kwargs.pop("skiplock_on_refused", None)
        try:
            return super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as exc:
            if on_refused is None or not refuses_startup_options(exc):
                raise
            retry_with = on_refused()
        return super().connect(retry_with, **{**kwargs, "prepare_threshold": None})


def log_pooler_found(url: str) -> None:
    """The one log line of a connection's switch to pooler mode (startup options refused)."""
    log.info("the database at %s refused startup options: a transaction pooler (PgBouncer). "
             "Sending session settings per transaction, without prepared statements "
             "(SKIPLOCK_POOLER=transaction says so up front).", redact_url(url))


class PoolOptions(TypedDict, total=False):
    """PoolSettings' keyword arguments, which Database and AsyncDatabase take as they are."""

    schema: str
    connect_timeout: float
    statement_timeout: float
    max_size: int
    application_name: str
    pooler: bool


class PoolSettings:
    """How a pool's connections are made, for Database and AsyncDatabase (adb.py), which
    differ only in awaiting: the conninfo, each connection's arguments, the settings a
    transaction sends behind a pooler, and the switch to pooler mode."""

    def __init__(
        self,
        url: str,
        *,
        schema: str = "skiplock",
        connect_timeout: float = 5.0,
        statement_timeout: float = 30.0,
        max_size: int = 4,
        application_name: str = "skiplock",
        pooler: bool = False,
    ) -> None:
        """``pooler``: ``url`` is a transaction pooler's (PgBouncer, pool_mode=transaction): no
        startup options and no server-side prepared statements, the settings sent in each
        transaction instead. Found out on the first connection too (the pooler refuses the
        options), at the cost of that one refused attempt; saying so skips it."""
        self.url = url
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self.max_size = max_size
        self.application_name = application_name
        self.pooler = pooler
        # Built now: a bad URL or schema is a ConfigurationError here, not at first use.
        self._conninfo = self._info()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        application_name: str,
        url: str | None = None,
        schema: str | None = None,
        connect_timeout: float | None = None,
        statement_timeout: float | None = None,
        max_size: int = 4,
        **extra: Any,
    ) -> Self:
        """One as ``settings`` configure it (URL, schema, timeouts, pooler), ConfigurationError
        saying how to set the URL when there is none. ``url``, ``schema``, ``connect_timeout``
        and ``statement_timeout`` override the settings (a caller's own arguments); ``extra``:
        the class's own keyword arguments (Database's read_pool_size)."""
        return cls(
            url or settings.require_url(),
            schema=schema or settings.schema_name,
            connect_timeout=connect_timeout or settings.connect_timeout,
            statement_timeout=statement_timeout or settings.statement_timeout,
            max_size=max_size,
            application_name=application_name,
            pooler=settings.pooler == "transaction",
            **extra,
        )

    def _info(self, *, read_only: bool = False) -> str:
        return conninfo(self.url, self.schema, self.connect_timeout, self.statement_timeout,
                        self.application_name, read_only=read_only, pooler=self.pooler)

    def _pool_arguments(self, max_size: int, *, read_only: bool = False) -> dict[str, Any]:
        """A pool's arguments but its class and connection check (sync or async): empty until
        used, conninfo and connect arguments asked for each new connection (pooler mode may
        have begun since the last one), no reconnect loop (the caller's error says why)."""
        return {
            "conninfo": lambda: self._info(read_only=read_only),
            "kwargs": lambda: self._connect_kwargs(read_only=read_only),
            "min_size": 0,
            "max_size": max_size,
            "timeout": self.connect_timeout,
            "reconnect_timeout": 0,
        }

    def _connect_kwargs(self, *, read_only: bool) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        if self.pooler:
            # Named prepared statements live on one server connection: through a
            # transaction pooler the next execution may run on another that lacks it.
            kwargs["prepare_threshold"] = None
        else:
            kwargs["skiplock_on_refused"] = lambda: self._behind_pooler(read_only=read_only)
        return kwargs

    def _behind_pooler(self, *, read_only: bool) -> str:
        """The pooler refused our startup options: pooler mode from now on (one log line);
        returns the conninfo to connect with instead."""
        if not self.pooler:
            self.pooler = True
            log_pooler_found(self.url)
        self._conninfo = self._info()
        return self._info(read_only=read_only)

    def _transaction_settings(self, *, read_only: bool = False) -> dict[str, Any]:
        """Behind a pooler: the parameters of the transaction_settings query each transaction
        sends first (a direct connection's options set them once)."""
        return transaction_settings(self.schema, self.statement_timeout, read_only=read_only)


class Database(PoolSettings):
    """Synchronous access for producers, the CLI, the API and the operator (a small pool)."""

    def __init__(self, url: str, *, read_pool_size: int | None = None,
                 **options: Unpack[PoolOptions]) -> None:
        """``read_pool_size``: a second pool, of read-only connections, for work run under a
        read-only QueryScope (the API's reads), so that they cannot take every connection.
        ``options``: PoolSettings' (schema, timeouts, max_size, application_name, pooler)."""
        super().__init__(url, **options)
        self._pool = self._new_pool(self.max_size, read_only=False)
        self._ids = ReservedIds()
        self._read_pool = None if read_pool_size is None else self._new_pool(
            read_pool_size, read_only=True)

    def _new_pool(self, max_size: int, *, read_only: bool) -> ConnectionPool[_PoolConnection]:
        return ConnectionPool(
            connection_class=_PoolConnection,
            open=True,
            check=check_unless_fresh,
            **self._pool_arguments(max_size, read_only=read_only),
        )

    def _settings(self, conn: psycopg.Connection[Any], *, read_only: bool = False) -> None:
        """Behind a pooler: this transaction's settings (first statement of a transaction, or
        in the pipeline of an autocommit statement: one implicit transaction until its Sync).
        Nothing on a direct connection, whose options set them once."""
        if self.pooler:
            conn.execute(Q["transaction_settings"],
                         self._transaction_settings(read_only=read_only))

    def close(self) -> None:
        self._pool.close()
        if self._read_pool is not None:
            self._read_pool.close()

    @contextlib.contextmanager
    def _checkout(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection: from the read pool for read-only work, tracked by the current
        QueryScope (if any) so that its deadline can cancel what runs on it."""
        scope = _SCOPE.get()
        if scope is None:
            with self._pool.connection() as conn, _discarded_on_failover(conn):
                yield conn
            return
        pool = self._pool if self._read_pool is None or not self._reading() else self._read_pool
        # Work of a request that has already answered (its deadline passed) takes no
        # connection: its reads started side by side (api/side_by_side.py) would each wait for
        # one and ping it, ahead of live requests, only to be refused.
        scope.refuse_if_cancelled()
        with pool.connection() as conn, _discarded_on_failover(conn):
            scope._enter(conn)
            try:
                yield conn
            finally:
                scope._leave(conn)

    def _reading(self) -> bool:
        """This thread's work runs on the read pool's read-only connections."""
        scope = _SCOPE.get()
        return scope is not None and scope.read_only and self._read_pool is not None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _conn(self, doing: str) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._checkout() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise wrap_error(exc, self.url, doing) from None
        except psycopg.Error as exc:
            raise wrap_error(exc, self.url, doing, read_only_session=self._reading()) from None

    def _rows(
        self, name: str, params: Mapping[str, Any] | None = None, doing: str | None = None
    ) -> list[Row]:
        with self._conn(doing or name) as conn, conn.cursor(row_factory=dict_row) as cur:
            if self.pooler:
                # One round trip: the settings and the statement go out with one Sync, and
                # the results are read after it (reading inside the pipeline flushes first).
                with conn.pipeline():
                    self._settings(conn, read_only=self._reading())
                    cur.execute(Q[name], params or {})
            else:
                cur.execute(Q[name], params or {})
            return cur.fetchall() if cur.description else []

    def _rows_of_each(
        self, statements: Sequence[tuple[str, Mapping[str, Any]]], doing: str, *,
        generic_plans: bool = False,
    ) -> list[list[Row]]:
        """Several statements on one checkout, in one round trip (one pipeline, one Sync: one
        implicit transaction, a snapshot per statement as in any read-committed transaction):
        a checkout each would cost a liveness ping and a round trip each. ``generic_plans``:
        each statement is prepared at once and planned once per connection, not at every call
        (limits.sql generic_plans; not behind a pooler, where nothing is prepared)."""
        generic = generic_plans and not self.pooler
        with self._conn(doing) as conn, contextlib.ExitStack() as cursors:
            # the pipeline's one Sync is what keeps the settings (behind a pooler) and the
            # plan-cache setting for the statements after them: no fallback without it
            with conn.pipeline():
                self._settings(conn, read_only=self._reading())
                if generic:
                    conn.execute(Q["generic_plans"])
                sent = []
                for name, params in statements:
                    cur = cursors.enter_context(conn.cursor(row_factory=dict_row))
                    # prepared from the first call: a generic plan made afresh each time
                    # would save nothing and lose what custom plans fold
                    cur.execute(Q[name], params, prepare=True if generic else None)
                    sent.append(cur)
            return [cur.fetchall() if cur.description else [] for cur in sent]

    # -- migrations -----------------------------------------------------------------------

    def migrate(
        self, lock_timeout: float = 5.0, attempts: int = 5, target: int | None = None
    ) -> list[str]:
        """Apply pending migrations under an advisory lock; returns the names applied.

        On its own autocommit connection, not a pooled one: the index builds run outside a
        transaction and without the pool's statement timeout (see skiplock/migrator.py).
        """
        if self.pooler:
            raise ConfigurationError(
                "migrate needs a direct connection to PostgreSQL, not a transaction pooler: "
                "it holds a session lock and builds indexes outside transactions. Run "
                "`skiplock migrate` with the server's own URL (SKIPLOCK_DATABASE_URL without "
                "PgBouncer, and SKIPLOCK_POOLER unset)")
        lock = [f"{_MIGRATION_LOCK}:{self.schema}"]
        try:
            with psycopg.connect(self._conninfo, autocommit=True) as conn:
                migrator.take_lock(conn, lock[0])
                try:
                    return migrator.apply(conn, self.schema, lock_timeout, attempts,
                                          target=target)
                finally:
                    if not conn.closed:
                        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", lock)
        except psycopg.Error as exc:
            raise wrap_error(exc, self.url, "migrate") from None

    # -- producers --------------------------------------------------------------------------

    def _insert_transaction(self, doing: str, what: str, run: Any, *, pipeline: bool = True) -> Any:
        """``run(conn)`` in one explicit transaction on a pooled connection; returns its result.

        The one retry and "outcome unknown" policy of every insert path (``_enqueue_in`` stays
        out of it: a caller's transaction is theirs). COMMIT is sent only after ``run`` has read
        its results, so a failure is known to be before it or during it:

        - before COMMIT was sent, nothing was stored (the transaction dies with its connection):
          one retry on a fresh connection is safe;
        - a connection lost while committing may have committed: EnqueueOutcomeUnknown, never a
          retry here (it could insert the rows twice) nor "nothing was changed" (maybe false);
        - any other driver error (and a second failure) goes through wrap_error.

        ``run`` must read its results (fetch*), so that an error in its statements surfaces
        before COMMIT. With ``pipeline`` (not for COPY, which cannot run in one) BEGIN goes out
        with run's statements, in the flush that reading them sends, and COMMIT with the closing
        Sync: two round trips, where a toggled ``autocommit = False`` costs one more (psycopg
        syncs after its implicit BEGIN in a pipeline). The connection stays in autocommit mode:
        switching it back after a COMMIT that broke the connection raised "the connection is
        lost", hiding EnqueueOutcomeUnknown behind a "nothing was changed" error. On any
        error, the pool's context rolls an open transaction back.
        """
        retry = True
        while True:
            committing = False
            try:
                # the first try may skip the ping of a fresh connection; the retry pings (the
                # next idle connection may be as dead as the one that failed)
                with (insert_checkout() if retry else contextlib.nullcontext()), \
                        self._checkout() as conn:
                    if pipeline:
                        with conn.pipeline():
                            conn.execute("BEGIN")
                            self._settings(conn)
                            result = run(conn)
                            committing = True
                            conn.execute("COMMIT")
                    else:
                        if self.pooler:
                            with conn.pipeline():  # one round trip, as BEGIN alone
                                conn.execute("BEGIN")
                                self._settings(conn)
                        else:
                            conn.execute("BEGIN")
                        result = run(conn)
                        committing = True
                        conn.execute("COMMIT")
                return result
            except PoolTimeout as exc:  # an OperationalError, but the pool already waited
                raise wrap_error(exc, self.url, doing) from None
            except psycopg.Error as exc:
                decision = insert_failure(exc, committing, retried=not retry)
                if decision == "unknown":
                    raise outcome_unknown(doing, what, self.url) from exc
                if decision == "retry":
                    retry = False
                    log.info(
                        "%s: %s; nothing was stored, retrying on a fresh connection",
                        doing,
                        scrub((str(exc).strip() or type(exc).__name__).splitlines()[0], self.url),
                    )
                    continue
                raise wrap_error(exc, self.url, doing) from None

    def enqueue(
        self, job: NewJob, connection: psycopg.Connection[Any] | None = None
    ) -> tuple[int, bool]:
        """Insert one job: (id, created). With a unique_key (an idempotency key), a repeat of
        the same request returns the key's job (created False, even when that job has since
        been pruned) and a different request raises IdempotencyConflict."""
        query, params = enqueue_plan(job)
        if connection is not None:
            return self._enqueue_in(connection, query, params)
        doing = f"enqueue {job.task!r}"
        if job.unique_key is None:
            return self._enqueue_with_id(doing, params)

        def insert(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            row: tuple[Any, ...] | None = conn.execute(query, params).fetchone()
            return row

        for _ in range(ENQUEUE_TRIES):
            found: tuple[Any, ...] | None = self._insert_transaction(doing, "the job", insert)
            if found is not None:
                return _keyed_outcome(found, params)
        raise unread_key(doing)

    def _enqueue_with_id(self, doing: str, params: Mapping[str, Any]) -> tuple[int, bool]:
        """An unkeyed job in one round trip, under an id taken ahead (skiplock/job_ids.py):
        the INSERT alone, autocommit; a lost connection is sent again with the same id
        (OneTripEnqueue decides)."""
        job_id = self._ids.take()
        if job_id is None:  # the first enqueue of this Database: one round trip more
            self._ids.add(int(r["nextval"]) for r in self._rows(
                "reserve_job_ids", {"n": RESERVE}, doing))
            job_id = self._ids.take()
            assert job_id is not None
        trip = OneTripEnqueue(doing, self.url, job_id, self._ids)
        params = {**params, "id": job_id}
        while True:
            try:
                with (contextlib.nullcontext() if trip.tries else insert_checkout()), \
                        self._checkout() as conn:
                    more = None
                    refill = self._ids.running_out()  # the next block rides on this trip
                    # No BEGIN or COMMIT: what goes out before one Sync is one implicit
                    # transaction. A pipeline only when more than the insert goes out (the
                    # settings behind a pooler, the next block): it costs ~0.1 ms of waits.
                    if self.pooler or refill:
                        with conn.pipeline():
                            self._settings(conn)
                            if refill:
                                more = conn.execute(Q["reserve_job_ids"], {"n": RESERVE})
                            cur = conn.execute(Q["enqueue_with_id"], params)
                    else:
                        cur = conn.execute(Q["enqueue_with_id"], params)
                    row = cur.fetchone()
                    if more is not None:
                        self._ids.add(int(r[0]) for r in more.fetchall())
            except (psycopg.Error, PoolTimeout) as exc:
                trip.failed(exc)  # raises unless the job is to be sent again
                continue
            outcome = trip.answered(row)
            if outcome is not None:
                return outcome

    def _enqueue_in(
        self, conn: psycopg.Connection[Any], query: str, params: Mapping[str, Any]
    ) -> tuple[int, bool]:
        """Run inside the caller's transaction, with our schema only for this statement."""
        try:
            swapped = conn.execute(Q["search_path_swap"], schema_search_path(self.schema))
            previous = swapped.fetchone()
            try:
                row = conn.execute(query, params).fetchone()
            finally:
                conn.execute(Q["search_path_swap"], restored_search_path(previous))
        except psycopg.Error as exc:
            raise wrap_error(exc, self.url, "enqueue in caller's transaction") from None
        return caller_enqueue_outcome(row, params)

    def enqueue_copy(self, jobs: Sequence[NewJob] | CopyBatch) -> int:
        """Bulk insert with COPY (no unique keys, no schedule): the fastest path. ``jobs`` as
        a CopyBatch is prepared while it is sent (what a job's checks raise stops the COPY,
        and nothing is stored)."""
        batch = jobs if isinstance(jobs, CopyBatch) else CopyBatch.of(jobs)

        def copy_rows(conn: psycopg.Connection[Any]) -> int:
            # COPY ends with the server's count: an error in the data surfaces before COMMIT.
            texts = batch.texts()
            codec = conn.info.encoding
            with conn.cursor() as cur, cur.copy(Q["copy_jobs"]) as copy:
                while (block := next_block(texts, codec)) is not None:
                    copy.write(block)
            return batch.count

        try:
            count: int = self._insert_transaction(
                f"enqueue_many ({batch.total} jobs)", "the jobs", copy_rows, pipeline=False
            )
        except CopyRefused as refused:  # rolled back, never retried
            raise refused.cause from None
        return count

    def enqueue_unnest(self, jobs: Sequence[NewJob]) -> list[int]:
        """Bulk insert that honours run_at and unique keys; returns the ids created."""
        params, requests, hashes, keyed = unnest_params(jobs)

        def insert(conn: psycopg.Connection[Any]) -> list[int]:
            ids = [int(r[0]) for r in conn.execute(Q["enqueue_many_unnest"], params).fetchall()]
            if keyed:
                # A key stored before (or twice in this call) skipped its job: it must have
                # been the same request. Checked in the transaction, so a conflict stores
                # nothing at all.
                rows = conn.execute(Q["idempotency_keys"], {"keys": list(keyed)}).fetchall()
                check_unnest_keys(rows, jobs, hashes, requests, keyed)
            return ids

        ids: list[int] = self._insert_transaction(
            f"enqueue_many ({len(jobs)} jobs)", "the jobs", insert
        )
        return ids

    def enqueue_batch(self, jobs: Sequence[NewJob]) -> list[tuple[int, bool]]:
        """Insert jobs all-or-nothing in one transaction: (id, created) per job, in order.

        Unlike enqueue_unnest this returns the existing job's id for a repeated unique_key
        (the same request; a different one raises IdempotencyConflict and stores nothing),
        which is what an HTTP caller retrying a batch needs.
        """
        return self.enqueue_keyed_batch(jobs, None)[0]

    def enqueue_keyed_batch(
        self, jobs: Sequence[NewJob], key: str | None
    ) -> tuple[list[tuple[int, bool]], bool]:
        """enqueue_batch under one idempotency ``key`` for the whole batch (None: no key):
        (per job (id, created), replayed). A replay of the same batch returns its first
        answer's ids, all created False, replayed True; a different request with the key (a
        different batch, or a single job's key) raises IdempotencyConflict."""
        params = [_job_params(j) for j in jobs]
        doing = f"enqueue batch ({len(jobs)} jobs)"
        request = batch_request(jobs) if key is not None else None
        digest = request_hash(request) if request is not None else ""
        claim = ({"key": key, "request_hash": digest, "request": Jsonb(request)}
                 if key is not None else None)

        def insert(conn: psycopg.Connection[Any]) -> tuple[list[tuple[int, bool]], bool]:
            if (claim is not None and key is not None and request is not None
                    and conn.execute(Q["claim_idempotency_key"], claim).fetchone() is None):
                # Taken: this statement sees a claim committed while the claim waited.
                row = conn.execute(Q["idempotency_keys"], {"keys": [key]}).fetchone()
                if row is None:
                    raise DatabaseUnavailable(
                        f"{doing}: a request with the same Idempotency-Key was being "
                        "stored at the same time; nothing was stored, retry the batch")
                ids = _check_replay(key, row[1], row[2], row[3], request, digest)
                return [(i, False) for i in ids], True
            with conn.cursor() as cur:
                cur.executemany(Q["enqueue_keyed"], params, returning=True)
                out: list[tuple[int, bool]] = []
                for p in params:
                    row = cur.fetchone()
                    if row is None:  # a concurrent insert with the same key
                        raise DatabaseUnavailable(  # rolled back: the batch is all-or-nothing
                            f"{doing}: a job with the same unique_key is being inserted "
                            "concurrently; nothing was stored, retry the batch"
                        )
                    out.append(_keyed_outcome(row, p))
                    cur.nextset()
            if claim is not None:
                conn.execute(Q["set_idempotency_jobs"],
                             {"key": key, "job_ids": [i for i, _ in out]}).fetchall()
            return out, False

        done: tuple[list[tuple[int, bool]], bool] = self._insert_transaction(
            doing, "the jobs", insert)
        return done

    def lease_holders(self, limit: int = 200) -> list[Row]:
        """Running jobs per worker and queue: live and expired leases."""
        return self._rows("lease_holders", {"limit": limit}, "lease holders")

    def finished_counts(self, since: dt.datetime, bucket_seconds: int
                        ) -> list[tuple[dt.datetime, str, int, int]]:
        """(bucket start, queue, succeeded, dead) for every queue that finished jobs in the
        buckets from ``since`` on (sql/queries.sql finished_counts)."""
        rows = self._rows("finished_counts", {"since": since, "bucket_seconds": bucket_seconds},
                          "throughput")
        return [(r["bucket"], str(r["queue"]), int(r["succeeded"]), int(r["dead"]))
                for r in rows]

    def overview_queue_names(self, queues: Sequence[str], finished: Sequence[str],
                             after: str | None, limit: int) -> tuple[int, list[str]]:
        """How many queues the overview lists in all, and up to ``limit`` + 1 of them after
        ``after`` in name order (sql/queries.sql overview_queue_names): one more than the page
        says that another follows. ``finished`` names the queues that finished jobs within
        the window."""
        rows = self._rows("overview_queue_names", {
            "queues": list(queues), "finished": list(finished), "after": after,
            "limit": limit}, "list queues")
        total = int(rows[0]["total"]) if rows else 0
        return total, [str(r["queue"]) for r in rows if r["queue"] is not None]

    def worker_registry(self, limit: int = 500) -> list[Row]:
        """Registered workers, live first: health, outcomes waiting, last heartbeat."""
        return self._rows("worker_registry", {"limit": limit}, "worker registry")

    def list_tasks(self) -> dict[str, Row]:
        return {r["name"]: r for r in self._rows("list_tasks")}

    # -- inspection and admin ---------------------------------------------------------------

    def get_job(self, job_id: int) -> Row | None:
        rows = self._rows("get_job", {"id": job_id}, f"get job {job_id}")
        return rows[0] if rows else None

    def list_jobs(self, **filters: Any) -> list[Row]:
        """search_jobs with whole rows (args, errors, result); ``state`` is one state."""
        params = _job_filters(filters, "state")
        state = params.pop("state")
        found = self.search_jobs(states=[state] if state else None, **params)
        if not found:
            return []
        return self._rows("jobs_by_ids", {"ids": [r["id"] for r in found]}, "list jobs")

    def search_jobs(self, **filters: Any) -> list[Row]:
        """list_jobs for the HTTP API: ``states`` is a list, rows carry no args/errors/result."""
        return self._rows("search_jobs", _job_filters(filters, "states"), "search jobs")

    def queue_stats(
        self, queues: Sequence[str] = (), cap: int = 1_000_000, high_attempts: int = 3
    ) -> list[Row]:
        return self._rows(
            "queue_stats",
            {"queues": list(queues), "cap": cap, "high_attempts": high_attempts},
            "queue stats",
        )

    def stats_rows(
        self, queues: Sequence[str] = (), cap: int = 1_000_000, high_attempts: int = 3, *,
        next_firing: bool = False,
    ) -> StatsRows:
        """queue_stats, paused_queues and limit_stats in one round trip (inspection.queue_stats
        needs all three: the operator's poll, the API, the metrics), with ``next_firing`` that
        statement too (the operator's poll); under generic plans: the plan cache's own choice
        planned the two long ones afresh at every call, a third of the call's time at 1M rows
        (docs/benchmarks.md, "Session 29 (2026-12-04): the stats call")."""
        statements: list[tuple[str, Mapping[str, Any]]] = [
            ("queue_stats", {"queues": list(queues), "cap": cap,
                             "high_attempts": high_attempts}),
            ("paused_queues", {}),
            ("limit_stats", {"queues": list(queues), "cap": cap}),
        ]
        if next_firing:
            statements.append(("next_firing", {"queues": list(queues)}))
        counts, paused, limits, *firing = self._rows_of_each(
            statements, "queue stats", generic_plans=True)
        return StatsRows(counts, paused, limits, firing[0] if firing else [])

    def state_counts(self) -> list[Row]:
        return self._rows("state_counts")

    def busy_workers(self, queues: Sequence[str]) -> dict[str, int]:
        rows = self._rows("busy_workers", {"queues": list(queues)}, "busy workers")
        return {r["locked_by"]: int(r["running"]) for r in rows}

    def retry_job(self, job_id: int) -> Row | None:
        rows = self._rows("retry_job", {"id": job_id}, f"retry job {job_id}")
        if rows:
            self._rows(
                "notify_queue", {"channel": f"{self.schema}_jobs", "queue": rows[0]["queue"]}
            )
        return rows[0] if rows else None

    def retry_dead_matching(self, *, queue: str | None, task: str | None,
                            error_contains: str | None, limit: int) -> list[int]:
        """Queue again up to ``limit`` dead jobs matching the filters; returns their ids."""
        rows = self._rows("retry_dead_matching", {
            "queue": queue, "task": task, "error_contains": error_contains, "limit": limit,
        }, "retry dead jobs")
        for q in sorted({r["queue"] for r in rows}):
            self._rows("notify_queue", {"channel": f"{self.schema}_jobs", "queue": q})
        return [int(r["id"]) for r in rows]

    # -- bulk actions over a jobs filter (bulk.sql) ------------------------------------------

    def count_matching(self, cap: int = BULK_COUNT_CAP, **filters: Any) -> tuple[int, bool]:
        """How many jobs match search_jobs's ``filters``: (count, capped), counting stops at
        ``cap`` (then capped is True and there may be more)."""
        params = {**_job_filters(filters, "states"), "cap": cap}
        n = int(self._rows("count_matching", params, "count matching jobs")[0]["n"])
        return n, n >= cap

    def bulk_batch(self, action: str, *, cursor: int | None = None,
                   limit: int = BULK_DEFAULT_BATCH, reason: str = "a bulk cancel",
                   **filters: Any) -> BulkBatch:
        """One batch of ``action`` (cancel, retry or delete) on the jobs matching search_jobs's
        ``filters``: the next ``limit`` of them, newest first, below ``cursor`` (the previous
        batch's; None to start), in one transaction.

        cancel is cancel_jobs (``reason`` goes into each job's history); retry is retry_job's
        (dead or cancelled jobs only); delete never deletes a running job. Jobs another
        transaction holds at that instant are skipped, as are jobs the action does not apply
        to; loop while ``more``, passing ``cursor`` on."""
        if action not in BULK_ACTIONS:
            raise ValueError(f"bulk action {action!r}: use one of {', '.join(BULK_ACTIONS)}")
        if not 1 <= limit <= BULK_MAX_BATCH:
            raise ValueError(f"bulk batch size {limit}: use 1 to {BULK_MAX_BATCH}")
        if "before_id" in filters:
            raise TypeError("a bulk batch takes the list's cursor as cursor=, not before_id")
        params = _job_filters({**filters, "before_id": cursor, "limit": limit}, "states")
        acted: list[int] = []
        with self._conn(f"{action} jobs in bulk") as conn, conn.transaction(), \
                conn.cursor(row_factory=dict_row) as cur:
            self._settings(conn)
            picked = cur.execute(Q["bulk_pick"], params).fetchone()
            assert picked is not None  # an aggregate always answers one row
            ids = [int(i) for i in picked["ids"]]
            if ids and action == "cancel":
                acted = [int(r["id"]) for r in cur.execute(Q["cancel_jobs"], {
                    "ids": ids, "reason": reason[:1000], "channel": f"{self.schema}_control",
                }).fetchall()]
            elif ids and action == "retry":
                rows = cur.execute(Q["bulk_retry"], {"ids": ids}).fetchall()
                acted = [int(r["id"]) for r in rows]
                # Once per queue, not per job; delivered at COMMIT, so never for a rollback.
                for q in sorted({r["queue"] for r in rows}):
                    cur.execute(Q["notify_queue"], {"channel": f"{self.schema}_jobs", "queue": q})
            elif ids:
                acted = [int(r["id"]) for r in cur.execute(Q["bulk_delete"], {"ids": ids})]
        examined = int(picked["examined"])
        # Nothing examined: the cursor stays where it was (None would start over at the top).
        last = int(picked["last_id"]) if examined else cursor
        return BulkBatch(ids=sorted(acted, reverse=True), examined=examined, cursor=last,
                         more=examined == limit)

    def cancel_jobs(self, ids: Sequence[int], reason: str) -> dict[int, str]:
        """Cancel queued jobs at once and ask running ones' workers to stop them:
        {id: 'cancelled' | 'running' (requested)}; finished or already-asked jobs are absent."""
        rows = self._rows("cancel_jobs", {
            "ids": list(ids), "reason": reason[:1000], "channel": f"{self.schema}_control",
        }, f"cancel {len(ids)} job(s)")
        return {int(r["id"]): str(r["state"]) for r in rows}

    def cancel_job(self, job_id: int, reason: str = "a client") -> str | None:
        """'cancelled', 'running' (a request its worker acts on), or None (nothing to do)."""
        return self.cancel_jobs([job_id], reason).get(job_id)

    def pause_queue(self, queue: str, by: str) -> Row:
        """Stop claims from ``queue`` (running jobs finish); the first pause's row is kept."""
        return self._rows("pause_queue", {
            "queue": queue, "by": by[:1000], "channel": f"{self.schema}_control",
        }, f"pause queue {queue!r}")[0]

    def resume_queue(self, queue: str) -> bool:
        """Claims from ``queue`` again; False when it was not paused."""
        return bool(self._rows("resume_queue", {
            "queue": queue, "jobs_channel": f"{self.schema}_jobs",
        }, f"resume queue {queue!r}"))

    def paused_queues(self) -> list[Row]:
        return self._rows("paused_queues", {}, "paused queues")

    def job_state(self, job_id: int) -> str | None:
        rows = self._rows("job_state", {"id": job_id})
        return str(rows[0]["state"]) if rows else None

    def prune_finished(self, retention_seconds: float, limit: int = 10_000) -> int:
        total = 0
        while True:
            n = len(
                self._rows(
                    "prune_finished",
                    {"retention_seconds": retention_seconds, "limit": limit},
                    "prune",
                )
            )
            total += n
            if n < limit:
                return total

    def prune_idempotency_keys(self, retention_seconds: float, limit: int = 10_000) -> int:
        """Delete idempotency keys older than ``retention_seconds`` whose jobs are all gone;
        returns how many. A key whose job is still stored is kept."""
        total = 0
        while True:
            n = len(self._rows("prune_idempotency_keys",
                               {"retention_seconds": retention_seconds, "limit": limit},
                               "prune idempotency keys"))
            total += n
            if n < limit:
                return total

    def now(self) -> dt.datetime:
        return self._rows("database_now")[0]["now"]  # type: ignore[no-any-return]

    # -- issue 14: periodic jobs (skiplock/schedules.py) --
    def list_schedules(self, limit: int = 1000) -> list[Row]:
        """Every schedule with its last firing, its next one and how late that is."""
        return self._rows("list_schedules", {"limit": limit}, "list schedules")

    def upsert_crd_schedule(self, params: Mapping[str, Any]) -> Row | None:
        """Write a JobSchedule resource's schedule (``schedules.schedule_params`` plus
        ``source`` and ``next_fire_at``): its row (name, next_fire_at, last_fire_at), or None
        when the name belongs to another source (left alone)."""
        rows = self._rows("upsert_crd_schedule", {**params, "args": Jsonb(dict(params["args"]))},
                          f"write schedule {str(params['name'])[:80]!r}")
        return rows[0] if rows else None

    def schedule_owner(self, name: str) -> str | None:
        rows = self._rows("schedule_owner", {"name": name}, "read a schedule's owner")
        return str(rows[0]["source"]) if rows else None

    def remove_crd_schedules(self, prefix: str, keep: Sequence[str]) -> list[str]:
        """Delete rows whose source starts with ``prefix`` and is not in ``keep``."""
        rows = self._rows("remove_crd_schedules", {"prefix": prefix, "keep": list(keep)},
                          "remove schedules of deleted JobSchedules")
        return [str(r["name"]) for r in rows]


    # -- issue 14: concurrency and rate limits (sql/limits.sql) --
    def limit_stats(self, queues: Sequence[str] = (), cap: int = 1_000_000) -> list[Row]:
        """Per queue and limited task: runnable, startable (within the limits now), running
        and capacity (concurrency_limit; None: unbounded)."""
        return self._rows("limit_stats", {"queues": list(queues), "cap": cap}, "limit stats")

    def limited_tasks(self) -> dict[str, dict[str, Any]]:
        return {str(r["name"]): dict(r["limits"]) for r in self._rows("limited_tasks")}

    def next_firing(self, queues: Sequence[str]) -> float | None:
        """Seconds until the next firing of a schedule on ``queues`` (negative: overdue)."""
        return firing_seconds(self._rows("next_firing", {"queues": list(queues)},
                                         "next schedule firing"))

def _shut_down(conn: psycopg.AsyncConnection[Any] | None) -> None:
    """Shut the connection's socket down (both ways) without closing its descriptor, which the
    event loop may be watching: the pending read sees end-of-file and fails at once."""
    if conn is None or conn.closed:
        return
    with contextlib.suppress(Exception), socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
        s.shutdown(socket.SHUT_RDWR)


# The oldest migration whose schema this code's statements run on (what a worker needs
# applied before it claims): 0012's jobs.wake_on_finish, which the completions write since
# 0013 (on 0012 they work, each finish announced twice). Raise it when a statement starts
# to need a newer migration; test_worker_waits_for_the_migration_its_statements_need holds
# the worker to it. Not the newest migration: a worker image newer than the operator that
# migrates would then wait for a migration it does not need.
REQUIRED_MIGRATION = 12


class ListenUnavailable(SkiplockError):
    """LISTEN cannot work on this connection: it goes through a transaction pooler, which runs
    each transaction on any server connection and delivers no notification to us."""


class _SettingCursor(psycopg.AsyncCursor[Any]):
    """A cursor behind a transaction pooler: each statement goes out after the transaction's
    settings, in one pipeline, so both run in one implicit transaction (until the pipeline's
    Sync), on one server connection, in one round trip; the caller reads the results after."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], settings: Mapping[str, Any]) -> None:
        super().__init__(conn)
        self._settings = settings

    async def execute(  # type: ignore[override]  # the Template overload: never used here
        self, query: QueryNoTemplate, params: Params | None = None, *,
        prepare: bool | None = None, binary: bool | None = None,
    ) -> Self:
        async with self.connection.pipeline():
            await self.connection.execute(Q["transaction_settings"], self._settings,
                                          prepare=False)
            await super().execute(query, params, prepare=False, binary=binary)
        return self


class WorkerConnection:
    """One async connection a worker service owns; reconnects lazily after any failure."""

    def __init__(
        self,
        url: str,
        *,
        schema: str,
        connect_timeout: float,
        statement_timeout: float,
        application_name: str,
        synchronous_commit: bool = True,
        pooler: bool = False,
    ) -> None:
        """``pooler``: ``url`` is a transaction pooler's (see Database); also found out when
        the server refuses the startup options."""
        self.url = url
        self.schema = schema
        self.pooler = pooler
        self._connect_args = (url, schema, connect_timeout, statement_timeout, application_name,
                              synchronous_commit)
        self._conninfo = conninfo(*self._connect_args, pooler=pooler)
        self._settings = transaction_settings(schema, statement_timeout, synchronous_commit)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # Services sharing this connection take turns; the wait is outside the deadline, which
        # bounds the database's answer only.
        self._turn = asyncio.Lock()
        # A link that swallows bytes but stays open (a frozen server, a proxy or firewall that
        # keeps ACKing) trips neither keepalives nor tcp_user_timeout: bound every round trip.
        self.deadline = connect_timeout + statement_timeout

    async def _get(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await self._connect()
            except UnicodeError as exc:
                # psycopg resolves host names itself: one IDNA cannot encode (a piece of a
                # malformed URL) is as unreachable as one DNS does not know.
                raise wrap_error(OSError(str(exc)), self.url, "connect") from None
        return self._conn

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if not self.pooler:
            try:
                # Every statement prepared at once: the worker runs a dozen, thousands of times.
                return await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, prepare_threshold=0)
            except psycopg.OperationalError as exc:
                if not refuses_startup_options(exc):
                    raise
            self.pooler = True
            self._conninfo = conninfo(*self._connect_args, pooler=True)
            log_pooler_found(self.url)
        return await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, prepare_threshold=None)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    @contextlib.asynccontextmanager
    async def cursor(self, doing: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        async with self._turn, self._cursor(doing) as cur:
            yield cur

    @contextlib.asynccontextmanager
    async def _cursor(self, doing: str) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        # At the deadline the socket is shut down, which ends psycopg's wait at once: merely
        # cancelling the task makes psycopg send a cancel request over the same dead link
        # first, which overshot the deadline by ~10 s on a blackholed link. The timeout is
        # the backstop (a connect in progress has no socket to shut down yet).
        severed = False

        def sever() -> None:
            nonlocal severed
            severed = True
            _shut_down(self._conn)

        timer = asyncio.get_running_loop().call_later(self.deadline, sever)
        try:
            async with asyncio.timeout(self.deadline + 2):
                conn = await self._get()
                async with (_SettingCursor(conn, self._settings) if self.pooler
                            else conn.cursor()) as cur:
                    yield cur
        except (TimeoutError, psycopg.OperationalError, OSError) as exc:
            if severed or isinstance(exc, TimeoutError):
                await self.close()
                raise DatabaseUnavailable(
                    f"{doing}: database at {redact_url(self.url)} did not answer within "
                    f"{self.deadline:.0f}s (connect + statement timeout); dropped the "
                    "connection and will reconnect"
                ) from None
            error = wrap_error(exc, self.url, doing)
            if not isinstance(error, DataRefused):
                await self.close()
            raise error from None
        except psycopg.Error as exc:
            if needs_reconnect(exc):  # a read-only server: a new connection may find the primary
                await self.close()
            raise wrap_error(exc, self.url, doing) from None
        finally:
            timer.cancel()

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_seconds: float,
        skip_tasks: Collection[str] = (),
        skip_ids: Collection[int] = (),
    ) -> list[ClaimedJob]:
        async with self.cursor("claim jobs") as cur:
            await cur.execute(
                Q["claim"],
                {
                    "queues": list(queues),
                    "limit": limit,
                    "worker_id": worker_id,
                    "lease_seconds": lease_seconds,
                    "skip_tasks": list(skip_tasks),
                    "skip_ids": _int_array(skip_ids),
                },
            )
            return [
                ClaimedJob(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
                for r in await cur.fetchall()
            ]

    async def rescue_expired(
        self, queues: Sequence[str], limit: int = 1000
    ) -> list[tuple[int, str, int]]:
        async with self.cursor("rescue expired leases") as cur:
            await cur.execute(Q["rescue_expired"], {"queues": list(queues), "limit": limit})
            return [(int(r[0]), str(r[1]), int(r[2])) for r in await cur.fetchall()]

    async def renew_leases(
        self, owned: Sequence[tuple[int, int]], worker_id: str, lease_seconds: float
    ) -> dict[int, str | None]:
        """Extend the leases still ours: {job id: who asked to cancel it, or None}."""
        async with self.cursor("renew leases") as cur:
            await cur.execute(
                Q["renew_leases"],
                {
                    "ids": [i for i, _ in owned],
                    "attempts": [a for _, a in owned],
                    "worker_id": worker_id,
                    "lease_seconds": lease_seconds,
                },
            )
            return {int(r[0]): (str(r[1] or "?") if r[2] else None)
                    for r in await cur.fetchall()}

    async def complete_succeeded(
        self, done: Sequence[tuple[int, int, str]], worker_id: str
    ) -> dict[int, str]:
        """Fenced completions of (id, attempt, result as JSON text already checked):
        {id: 'succeeded', or 'cancelled' when a cancel request was stored first}."""
        async with self.cursor("record results") as cur:
            await cur.execute(
                Q["complete_succeeded"],
                {
                    "ids": _int_array([i for i, _, _ in done]),
                    "attempts": _int_array([a for _, a, _ in done]),
                    "results": "[" + ",".join(r for _, _, r in done) + "]",
                    "worker_id": worker_id,
                    "channel": f"{self.schema}_done",
                },
            )
            return {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def complete_failed(self, failures: Sequence[Failure], worker_id: str) -> dict[int, str]:
        async with self.cursor("record failures") as cur:
            await cur.execute(
                Q["complete_failed"],
                {
                    "ids": [f.id for f in failures],
                    "attempts": [f.attempt for f in failures],
                    "errors": [f.error for f in failures],
                    "delays": [f.delay for f in failures],
                    "permanent": [f.permanent for f in failures],
                    "worker_id": worker_id,
                    "channel": f"{self.schema}_done",
                },
            )
            return {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def release(
        self, owned: Sequence[tuple[int, int]], worker_id: str
    ) -> dict[int, str]:
        """Hand runs back: {id: 'queued', or 'cancelled' for a job whose cancel was asked}."""
        async with self.cursor("release jobs") as cur:
            await cur.execute(
                Q["release"],
                {
                    "ids": [i for i, _ in owned],
                    "attempts": [a for _, a in owned],
                    "worker_id": worker_id,
                },
            )
            return {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def snooze(
        self, snoozed: Sequence[tuple[int, int, float]], worker_id: str
    ) -> dict[int, str]:
        """(id, attempt, seconds) back to queued at database time + seconds, no attempt
        counted: {id: 'queued', or 'cancelled' for a job whose cancel was asked}."""
        async with self.cursor("snooze jobs") as cur:
            await cur.execute(
                Q["snooze"],
                {
                    "ids": [s[0] for s in snoozed],
                    "attempts": [s[1] for s in snoozed],
                    "delays": [s[2] for s in snoozed],
                    "worker_id": worker_id,
                },
            )
            return {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def cancel_requests(self, ids: Sequence[int], worker_id: str) -> dict[int, str]:
        """The cancel requests among runs this worker holds: {id: who asked}."""
        async with self.cursor("look for cancel requests") as cur:
            await cur.execute(Q["cancel_requests"], {"ids": list(ids), "worker_id": worker_id})
            return {int(r[0]): str(r[1] or "?") for r in await cur.fetchall()}

    async def require_schema(self) -> None:
        """SchemaMissing unless REQUIRED_MIGRATION is applied: the statements name what the
        migrations added (the completions write 0012's wake_on_finish), so a worker on an
        older schema would fail every completion instead."""
        needed = REQUIRED_MIGRATION
        async with self.cursor("check the schema") as cur:
            await cur.execute(Q["schema_version"])
            row = await cur.fetchone()
        found = int(row[0]) if row else 0
        if found < needed:
            raise SchemaMissing(
                f"check the schema: the Skiplock schema in the database at "
                f"{redact_url(self.url)} is at migration {found:04d}, this worker needs "
                f"{needed:04d}. Run `skiplock migrate` with this release (the operator "
                "migrates with its own release's migrations); the worker starts once it is "
                "applied.")

    async def register_tasks(
        self, tasks: Iterable[tuple[str, Mapping[str, Any], int, str]]
    ) -> None:
        async with self.cursor("register tasks") as cur:
            for name, params, max_attempts, queue in tasks:
                await cur.execute(
                    Q["register_task"],
                    {
                        "name": name,
                        "params": Jsonb(dict(params)),
                        "max_attempts": max_attempts,
                        "queue": queue,
                    },
                )

    async def defer_unrunnable(
        self, deferred: Sequence[tuple[int, int, str, float]], worker_id: str
    ) -> dict[int, str]:
        """Hand back (id, attempt, reason, delay) jobs no live worker can run yet."""
        async with self.cursor("defer jobs no worker can run") as cur:
            await cur.execute(
                Q["defer_unrunnable"],
                {
                    "ids": [d[0] for d in deferred],
                    "attempts": [d[1] for d in deferred],
                    "reasons": [d[2] for d in deferred],
                    "delays": [d[3] for d in deferred],
                    "worker_id": worker_id,
                },
            )
            return {int(r[0]): str(r[1]) for r in await cur.fetchall()}

    async def register_worker(
        self,
        worker_id: str,
        queues: Sequence[str],
        tasks: Mapping[str, Any],
        concurrency: int,
        lease_seconds: float,
    ) -> None:
        self._registered_worker = worker_id  # the declarer of register_limits
        async with self.cursor("register worker") as cur:
            await cur.execute(
                Q["register_worker"],
                {
                    "id": worker_id,
                    "queues": list(queues),
                    "tasks": Jsonb(dict(tasks)),
                    "concurrency": concurrency,
                    "lease_seconds": lease_seconds,
                },
            )

    async def worker_heartbeat(self, worker_id: str, report: Mapping[str, Any]) -> WorkerBeat:
        """Refresh this worker's registry row; returns what the other live workers run."""
        async with self.cursor("worker heartbeat") as cur:
            await cur.execute(Q["worker_heartbeat"], {"id": worker_id, **report})
            rows = await cur.fetchall()
        peers = {str(r[1]): Peer(frozenset(r[3]), dict(r[2])) for r in rows if not r[0]}
        return WorkerBeat(peers, registered=any(r[0] for r in rows))

    async def forget_worker(self, worker_id: str) -> None:
        async with self.cursor("unregister worker") as cur:
            await cur.execute(Q["forget_worker"], {"id": worker_id})

    async def prune_workers(self, keep_seconds: float) -> int:
        async with self.cursor("prune the worker registry") as cur:
            await cur.execute(Q["prune_workers"], {"keep_seconds": keep_seconds})
            return len(await cur.fetchall())

    async def listen(
        self, *channels: str, on_listening: Callable[[], None] | None = None
    ) -> AsyncIterator[tuple[str, str]]:
        """Yield (channel, payload) per notification; raises DatabaseUnavailable when the link
        dies. ``on_listening`` is called once every LISTEN is in place. ListenUnavailable
        when the connection goes through a transaction pooler (known or found on connecting):
        a LISTEN there would succeed and hear nothing."""
        try:
            conn = None if self.pooler else await self._get()
            if conn is None or self.pooler:
                await self.close()
                raise ListenUnavailable(
                    f"LISTEN is impossible through the transaction pooler at "
                    f"{redact_url(self.url)}")
            for channel in channels:
                await conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(channel)))
            if on_listening is not None:
                on_listening()
            async for note in conn.notifies():
                yield note.channel, note.payload
        except (psycopg.OperationalError, OSError) as exc:
            await self.close()
            raise wrap_error(exc, self.url, "listen for new jobs") from None

    # -- issue 14: periodic jobs (worker/scheduler.py) --
    async def schedule_now(self) -> dt.datetime:
        """The database's now(): the only clock schedules are computed with."""
        async with self.cursor("read the database time") as cur:
            await cur.execute(Q["schedule_now"])
            row = await cur.fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    async def register_app_schedules(self, schedules: Sequence[Mapping[str, Any]]) -> list[str]:
        """Declare this worker's app schedules; returns the names taken by another source."""
        taken = []
        async with self.cursor("register schedules") as cur:
            for params in schedules:
                await cur.execute(Q["register_app_schedule"],
                                  {**params, "args": Jsonb(dict(params["args"]))})
                if not await cur.fetchall():
                    taken.append(str(params["name"]))
        return taken

    async def touch_app_schedules(self, names: Sequence[str]) -> None:
        async with self.cursor("refresh schedules") as cur:
            await cur.execute(Q["touch_app_schedules"], {"names": list(names)})

    async def retire_app_schedules(self, keep_seconds: float) -> list[str]:
        async with self.cursor("retire schedules") as cur:
            await cur.execute(Q["retire_app_schedules"], {"keep_seconds": keep_seconds})
            return [str(r[0]) for r in await cur.fetchall()]

    async def due_schedules(self, stale_seconds: float, limit: int = 100) -> list[Row]:
        async with self.cursor("read due schedules") as cur:
            await cur.execute(Q["due_schedules"],
                              {"stale_seconds": stale_seconds, "limit": limit})
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]

    async def start_schedule(self, name: str, next_fire_at: dt.datetime) -> None:
        async with self.cursor("start a schedule") as cur:
            await cur.execute(Q["start_schedule"], {"name": name, "next_fire_at": next_fire_at})

    async def fire_schedule(self, name: str, expected: dt.datetime, next_fire_at: dt.datetime,
                            firings: Sequence[tuple[dt.datetime, dt.datetime, bool]],
                            missed: int, concurrency_key: str | None = None
                            ) -> tuple[bool, list[int]]:
        """Take a plan for one schedule: (whether this caller won the race, the jobs it
        enqueued). ``firings``: (fire time, run_at, late) each."""
        async with self.cursor("fire a schedule") as cur:
            await cur.execute(Q["fire_schedule"], {
                "name": name, "expected": expected, "next_fire_at": next_fire_at,
                "concurrency_key": concurrency_key,
                "last_fire_at": max((f[0] for f in firings), default=None),
                "missed": missed,
                "fire_ats": [f[0] for f in firings], "run_ats": [f[1] for f in firings],
                "lates": [f[2] for f in firings],
            })
            row = await cur.fetchone()
        assert row is not None
        return bool(row[0]), [int(i) for i in row[1]]

    async def prune_schedule_firings(self, keep_seconds: float) -> None:
        async with self.cursor("prune schedule firings") as cur:
            await cur.execute(Q["prune_schedule_firings"], {"keep_seconds": keep_seconds})

    # -- issue 14: concurrency and rate limits (sql/limits.sql) --
    # this connection's worker, once registered (declares its limits), and where the limited
    # claim's walk over each task's keys stopped (the next one starts after it)
    _registered_worker: str | None = None
    _key_cursor: Mapping[str, str] = {}  # replaced, never changed in place

    async def claim_limited(
        self,
        tasks: Sequence[str],
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_seconds: float,
        skip_ids: Collection[int] = (),
        *,
        locked: bool,
    ) -> LimitedClaim:
        """Claim jobs of limited tasks within their free slots (sql/limits.sql). Unlocked:
        one statement, claiming only where the room is far above what any concurrent claim
        could take. Locked: the tasks' advisory locks, then the claim in a statement of its
        own (a snapshot taken after the locks, which sees every claim committed before
        them), both in one pipeline: one round trip, one implicit transaction (behind a
        pooler, an explicit one). A lock is only tried: the tasks whose lock another claim
        holds are left to it this time (never a wait behind a stalled holder)."""
        params = {
            "tasks": list(tasks),
            "queues": list(queues),
            "limit": limit,
            "worker_id": worker_id,
            "lease_seconds": lease_seconds,
            "skip_ids": _int_array(skip_ids),
            "locked": locked,
            # where each task's walk over its keys stopped last time (fairness, bounded cost)
            "key_cursor": Jsonb(dict(self._key_cursor)),
        }
        # what each pass sends, whichever way it goes out
        statements: list[tuple[str, Mapping[str, Any]]] = (
            [(Q["lock_limited"], {"tasks": sorted(set(tasks))}), (Q["claim_limited"], params)]
            if locked else [(Q["claim_limited_unlocked"], params)])
        async with self.cursor("claim limited jobs") as cur:
            if self.pooler or not psycopg.Pipeline.is_supported():
                # behind a pooler nothing is prepared (no plan to keep): no generic_plans.
                # Each statement of a _SettingCursor syncs: an explicit transaction keeps the
                # locks (and the server connection) for the claim; likewise with a libpq
                # older than 14 (no pipeline mode), at one round trip more
                async with contextlib.AsyncExitStack() as stack:
                    if locked:
                        await stack.enter_async_context(cur.connection.transaction())
                    for query, args in statements:
                        await cur.execute(query, args)
            else:
                # one round trip, one implicit transaction (until the pipeline's Sync): the
                # claim's plan-cache setting and, locked, its locks hold for it alone
                async with cur.connection.pipeline():
                    await cur.execute(Q["generic_plans"])
                    for query, args in statements:
                        await cur.execute(query, args)
            rows = await cur.fetchall()
        # the last row is no job: the tasks the locked pass may find more of (claim_limited)
        # and where the key walks stopped
        jobs = [ClaimedJob(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
                for r in rows if r[0] is not None]
        lock_tasks = tuple(t for r in rows if r[10] is not None for t in r[10])
        for r in rows:
            if r[0] is None and r[11]:
                self._key_cursor = {**self._key_cursor,
                                    **{str(k): str(v) for k, v in dict(r[11]).items()}}
        return LimitedClaim(jobs, need_lock=bool(lock_tasks), lock_tasks=lock_tasks)

    async def register_limits(self, limits: Mapping[str, Mapping[str, Any] | None],
                              worker_id: str | None = None) -> list[str]:
        """Store this worker's {task: limits or None} (tasks already registered) as its
        declaration; returns the tasks whose stored limits changed (the newest-introduced
        definition a live worker declares wins, sql/limits.sql). ``worker_id``: the
        declaring worker, by default the one this connection last registered."""
        async with self.cursor("register task limits") as cur:
            await cur.execute(Q["register_limits"], {
                "names": list(limits),
                "limits": [Jsonb(dict(v)) if v is not None else None for v in limits.values()],
                "worker_id": worker_id or self._registered_worker,
            })
            return [str(r[0]) for r in await cur.fetchall()]

    async def limited_tasks(self) -> dict[str, dict[str, Any]]:
        """Every task with limits, after settling which registered definition wins (the
        registry heartbeat's read, sql/limits.sql `settle_limits`)."""
        async with self.cursor("read task limits") as cur:
            await cur.execute(Q["settle_limits"])
            return {str(r[0]): dict(r[1]) for r in await cur.fetchall()}

    async def adopt_unkeyed(self, limits: Mapping[str, Mapping[str, Any]],
                            queues: Sequence[str], limit: int = 1000) -> tuple[int, int]:
        """Give the queued jobs of the limited tasks ``limits`` that have no key the key
        their producer would have computed (limits.adoption_keys); those with none possible
        end dead. Returns (keyed, failed)."""
        async with self.cursor("key limited jobs") as cur, cur.connection.transaction():
            await cur.execute(Q["unkeyed_jobs"], {"tasks": list(limits), "queues": list(queues),
                                                  "limit": limit})
            rows = [(int(r[0]), str(r[1]), dict(r[2] or {})) for r in await cur.fetchall()]
            if not rows:
                return 0, 0
            keyed, refused = adoption_keys(limits, rows)
            await cur.execute(Q["set_keys"], {"ids": [i for i, _ in keyed],
                                              "keys": [k for _, k in keyed]})
            n_keyed = len(await cur.fetchall())
            await cur.execute(Q["fail_unkeyed"], {"ids": [i for i, _ in refused],
                                                  "errors": [e for _, e in refused]})
            return n_keyed, len(await cur.fetchall())

    async def unkey_unlimited(self, tasks: Sequence[str], limit: int = 1000) -> int:
        """Drop the keys of queued jobs of ``tasks`` that have no limits (any more), so the
        plain claim takes them; returns how many."""
        async with self.cursor("unkey unlimited jobs") as cur:
            await cur.execute(Q["unkey_unlimited"], {"tasks": list(tasks), "limit": limit})
            return len(await cur.fetchall())


# -- the insert paths' failure policy (Database and AsyncDatabase._insert_transaction) -------


def insert_failure(exc: BaseException, committing: bool, retried: bool) -> str:
    """What an insert transaction does about ``exc``: "retry" (once, on a fresh connection),
    "unknown" (EnqueueOutcomeUnknown) or "wrap" (wrap_error). ``committing``: COMMIT was
    sent; ``retried``: this is the retry already.

    A connection lost while committing may have committed: never a retry (it could insert the
    rows twice) nor "nothing was changed" (maybe false). Before COMMIT nothing was stored: a
    lost connection, or a read-only server (a standby, a demoted primary) whose fresh
    connection may find the primary, is retried once. Class 54 (a size or nesting limit) is an
    OperationalError no retry can cure; any other error is wrapped."""
    if not isinstance(exc, psycopg.OperationalError | psycopg.errors.ReadOnlySqlTransaction):
        return "wrap"
    if committing and isinstance(exc, psycopg.OperationalError):
        return "unknown"
    if not retried and (exc.sqlstate or "")[:2] not in _DATA_REFUSED_CLASSES:
        return "retry"
    return "wrap"


def outcome_unknown(doing: str, what: str, url: str,
                    job_id: int | None = None) -> EnqueueOutcomeUnknown:
    if job_id is None:
        return EnqueueOutcomeUnknown(
            f"{doing}: the connection to {redact_url(url)} died while committing, so {what} "
            "may or may not exist. Retry with unique keys (unique_key) to make the retry safe.")
    return EnqueueOutcomeUnknown(
        f"{doing}: the connection to {redact_url(url)} was lost after the job was sent with "
        f"its COMMIT, and sending it again failed too, so {what} may or may not exist: if it "
        f"does, its id is {job_id} (get_job({job_id}) finds it once the database answers; a "
        "try the server still holds may commit later). Retry with unique keys (unique_key) "
        "to make a retry safe.", job_id=job_id)


# Tries of a one-round-trip enqueue: the first and one more (as every insert path), and after
# a possible commit a third when the second found no connection (the pool waited its connect
# timeout): a blip of the network then resolves itself within the call. Each try is bounded
# by the connect and statement timeouts.
ONE_TRIP_TRIES = 2
ONE_TRIP_TRIES_AFTER_A_LOST_ANSWER = 3


def one_trip_failure(exc: BaseException, *, tries: int, maybe_stored: bool) -> str:
    """What the one-round-trip enqueue (Database._enqueue_with_id) does about ``exc``:
    "retry" (the same id on a fresh connection), "unknown" (EnqueueOutcomeUnknown) or "wrap"
    (wrap_error: nothing was stored). ``tries``: the tries that failed before this one.

    The INSERT went out with its commit (autocommit), so a lost connection (connection_lost)
    may have committed: it is sent again anyway, the id making a later try find the first try's
    row instead of adding one (``maybe_stored``, which the caller sets for the later tries).
    A read-only server (a standby, a demoted primary) and a statement the server cancelled (a
    statement timeout) are tried again too: rolled back, they stored nothing. ONE_TRIP_TRIES
    in all. The pool giving no connection sent nothing: after a possible commit it is tried
    once more (ONE_TRIP_TRIES_AFTER_A_LOST_ANSWER). Once the tries are spent, a possible
    commit (this try's lost connection or an earlier one's) leaves the outcome unknown. A
    refused statement (its data, class 22, 23, 54; any error that is not about the
    connection) was refused on every try: wrapped."""
    if isinstance(exc, PoolTimeout):  # nothing went out on this try; the pool has waited
        if not maybe_stored:
            return "wrap"
        return "retry" if tries + 1 < ONE_TRIP_TRIES_AFTER_A_LOST_ANSWER else "unknown"
    last = tries + 1 >= ONE_TRIP_TRIES
    retryable = isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate or "")[:2] not in _DATA_REFUSED_CLASSES
    if not retryable and not isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
        return "wrap"
    if not last:
        return "retry"
    return "unknown" if maybe_stored or connection_lost(exc) else "wrap"


def connection_lost(exc: BaseException) -> bool:
    """The connection went away under a statement, so what the server did with it is unknown:
    no SQLSTATE (the socket closed or reset), class 08, or the server ending the session
    (57P01-57P05: its answers to what was sent may have been lost with it). A statement the
    server answered with an error (a statement timeout, 57014; a read-only server) was rolled
    back: not lost."""
    if not isinstance(exc, psycopg.OperationalError) or isinstance(exc, PoolTimeout):
        return False
    state = exc.sqlstate or ""
    return not state or state[:2] == "08" or state.startswith("57P")


class OneTripEnqueue:
    """One one-round-trip enqueue across its tries: what each failure and answer means
    (Database and AsyncDatabase only do the I/O)."""

    def __init__(self, doing: str, url: str, job_id: int, ids: ReservedIds) -> None:
        self.doing, self.url, self.job_id, self._ids = doing, url, job_id, ids
        self.tries = 0  # failed so far; a later try pings its connection
        self.maybe_stored = False
        self._reads = 0

    def failed(self, exc: BaseException) -> None:
        """Returns when the job is to be sent again; raises the caller's error otherwise."""
        decision = one_trip_failure(exc, tries=self.tries, maybe_stored=self.maybe_stored)
        if decision == "unknown":
            raise outcome_unknown(self.doing, "the job", self.url, self.job_id) from exc
        if decision == "wrap":
            raise wrap_error(exc, self.url, self.doing) from None
        self.tries += 1
        if connection_lost(exc):
            self.maybe_stored = True
        if not isinstance(exc, PoolTimeout):  # perhaps a failover: take the next block afresh
            self._ids.drop()
        log.info("%s: %s; sending it again with the same id on a fresh connection", self.doing,
                 scrub((str(exc).strip() or type(exc).__name__).splitlines()[0], self.url))

    def answered(self, row: Sequence[Any] | None) -> tuple[int, bool] | None:
        """(id, created), or None: run the statement again."""
        try:
            outcome = one_trip_outcome(row, self.job_id, maybe_stored=self.maybe_stored)
            if outcome is None:
                self._reads += 1
                if self._reads >= ENQUEUE_TRIES:
                    raise id_unreadable(self.doing, self.job_id, maybe_stored=self.maybe_stored)
        except SkiplockError:
            self._ids.drop()  # the sequence was set back: the rest of the block may be taken
            raise
        return outcome


def one_trip_outcome(row: Sequence[Any] | None, job_id: int, *,
                     maybe_stored: bool) -> tuple[int, bool] | None:
    """(id, created) of an enqueue_with_id row; None: run the statement again (a first try's
    row committed after its snapshot, or the id holds another job). A row that was already
    there is this job stored by a try whose connection was lost (``maybe_stored``); on a
    first try it can only come from a sequence set back, and is refused."""
    if row is None:
        return None
    if bool(row[1]) or maybe_stored:
        return int(row[0]), True
    raise id_taken(job_id)


def id_taken(job_id: int) -> SkiplockError:
    return SkiplockError(
        f"enqueue: job id {job_id}, just taken from the sequence jobs_id_seq, is already "
        "stored: the sequence was set back (setval, a restore, a failover that lost its "
        "advance). Nothing was stored. Set it past the largest id (SELECT setval("
        "'<schema>.jobs_id_seq', (SELECT max(id) FROM <schema>.jobs)), the schema being "
        "SKIPLOCK_SCHEMA, skiplock by default) and retry.")


def id_unreadable(doing: str, job_id: int, *, maybe_stored: bool) -> SkiplockError:
    """The error when ENQUEUE_TRIES runs of enqueue_with_id returned no row: the id holds
    another job (on a first try), or a lost try's row could not be read back."""
    if not maybe_stored:
        return id_taken(job_id)
    return EnqueueOutcomeUnknown(
        f"{doing}: the job was sent again with its id {job_id} after its connection was "
        "lost, and that id's row could not be read back, so the job may or may not exist: "
        f"get_job({job_id}) tells. Retry with unique keys (unique_key) to make a retry safe.",
        job_id=job_id)
