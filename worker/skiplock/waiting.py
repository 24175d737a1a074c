"""Waiting for a job's outcome: ``client.wait(job_id)`` and ``await aclient.wait(job_id)``.

One WaitHub per client serves every waiter of that client, on ONE connection of its own,
from one thread: it LISTENs on ``<schema>_done`` (every job that becomes finished is named
there: by the worker's completion statement, a list of ids per statement, since
migrations/0013_completion_notifies.sql; by the row trigger for any other finish) and reads
the outcomes of the jobs named there that someone waits for, in one query per wake-up (every
notification that arrived by then). New waiters' jobs are flagged (one statement for all of
them: 0012's flag, which the trigger no longer reads since 0013, where every finish is
announced); those it did not flag, finished already or gone, are read at once. Every waited job is
read every ``poll_interval`` seconds: the fallback when a notification was missed (the hub's
connection was down, the database restarted, a transaction pooler delivers none, a waiter of
a version before the flag). A thousand waiters cost one connection and one query per
wake-up, not a thousand of either.

A waiter is bounded by its timeout (at most MAX_WAIT_TIMEOUT); the hub by MAX_WAITERS
distinct jobs waited for (many waiters of one job share its entry and its read).

Behind a transaction pooler (SKIPLOCK_POOLER=transaction, or found out by the client's
database or by the hub's own first connection being refused its startup options) the hub
sends no startup options and LISTENs on nothing: it polls only, unless SKIPLOCK_LISTEN_URL
gives it a direct connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import selectors
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql as pgsql

from .db import Q, conninfo, refuses_startup_options, transaction_settings, wrap_error
from .errors import InvalidArguments, JobNotFound, SkiplockError
from .redact import redact_url

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("skiplock.wait")

# A day: a producer that waits longer is better served by reading the job later.
MAX_WAIT_TIMEOUT = 86_400.0
# Distinct jobs one client may wait for at once (each is a few hundred bytes in the hub;
# waiters of the same job share its entry, and each is bounded by its timeout).
MAX_WAITERS = 100_000
# Seconds between reads of every waited job (the fallback for a missed notification).
POLL_INTERVAL = 2.0
# One outcomes query reads at most this many ids.
_BATCH = 1000
# Longest pause between attempts to reconnect (a restarted database is found within it).
_MAX_BACKOFF = 2.0

Row = Mapping[str, Any]
# A finished job's row, or the error its waiters raise (the client closed, an unreadable id).
Delivery = Row | BaseException
Deliver = Callable[[Delivery], None]


class JobDead(SkiplockError):
    """The job waited for is dead: it failed on its last attempt (or permanently)."""

    def __init__(self, job_id: int, error: str | None) -> None:
        super().__init__(f"job {job_id} is dead: {error or 'no error recorded'}")
        self.job_id = job_id
        self.error = error


class JobWasCancelled(SkiplockError):
    """The job waited for was cancelled."""

    def __init__(self, job_id: int, reason: str | None) -> None:
        super().__init__(f"job {job_id} was cancelled" + (f" ({reason})" if reason else ""))
        self.job_id = job_id
        self.reason = reason


class WaitTimeout(SkiplockError, TimeoutError):
    """The job did not finish within the wait's timeout (it may still finish later)."""

    def __init__(self, job_id: int, timeout: float) -> None:
        super().__init__(f"job {job_id} did not finish within {timeout:g} s; it may still "
                         "finish: wait again, or read it with get_job")
        self.job_id = job_id
        self.timeout = timeout


def check_wait_timeout(timeout: float) -> float:
    """A wait's timeout in seconds, or InvalidArguments (a wait is always bounded)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArguments(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_WAIT_TIMEOUT:
        raise InvalidArguments(
            f"timeout must be > 0 and at most {MAX_WAIT_TIMEOUT:.0f} seconds, got {timeout}")
    return float(timeout)


def outcome(job_id: int, row: Delivery) -> Any:
    """What a wait returns for a finished job's row (the result), or the error it raises."""
    if isinstance(row, BaseException):
        raise row
    state = row["state"]
    if state == "succeeded":
        return row["result"]
    if state == "dead":
        raise JobDead(job_id, row["last_error"])
    if state == "cancelled":
        raise JobWasCancelled(job_id, row["cancel_reason"])
    if state is None:
        raise JobNotFound(f"job {job_id} does not exist (it may have been pruned)")
    raise AssertionError(f"job {job_id}: not finished ({state})")


def parse_ids(payload: str) -> list[int]:
    """The job ids of a completion notification ("12,13,14"); junk is ignored."""
    return [int(p) for p in payload.split(",") if p.isdigit()]


class WaitHub:
    """The waiters of one client and the thread and connection that wake them."""

    def __init__(self, info: str, channel: str | None, *, url: str,
                 settings: Mapping[str, Any] | None = None,
                 poll_interval: float = POLL_INTERVAL, connect_timeout: float = 5.0,
                 on_refused: Callable[[], tuple[str, Mapping[str, Any]]] | None = None) -> None:
        """``info``: conninfo of the hub's connection; ``channel``: the completion channel
        (None: no LISTEN, poll only); ``settings``: transaction_settings to send with each
        read (behind a transaction pooler); ``on_refused``: the pooler-mode conninfo and
        transaction settings, used when the server refuses ``info``'s startup options."""
        self._info = info
        self._on_refused = on_refused
        self._channel = channel
        self._url = url
        self._tx_settings = settings
        self.poll_interval = poll_interval
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._watchers: dict[int, list[Deliver]] = {}
        self._fresh: set[int] = set()
        self._unflagged: set[int] = set()  # a flag refused by the lock timeout: next poll
        self._stopping = False
        self._stopped = threading.Event()  # the reconnect backoff sleeps on it
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.connected = threading.Event()  # tests and the benchmark look at it
        self._unflagged_logged = False
        self.reads = 0  # outcome and flag queries run (a test's proof of batching)
        self.flagged = 0  # jobs this hub set wake_on_finish on (tests look at it)
        self.attempts = 0  # connections tried (a test's proof of the reconnect backoff)

    @classmethod
    def for_url(cls, url: str, schema: str, settings: Settings, *,
                connect_timeout: float, pooler: bool = False) -> WaitHub:
        """A hub for a client of ``url``: LISTEN on SKIPLOCK_LISTEN_URL when set (direct,
        past a pooler), else on ``url``; behind a pooler without one, poll only.
        ``pooler``: the client's database found out it is behind one (SKIPLOCK_POOLER
        unset); a pooler that refuses the hub's own first connection switches it too."""
        direct = settings.listen_url
        behind_pooler = (settings.pooler == "transaction" or pooler) and not direct
        target = direct or url

        def pooled() -> tuple[str, Mapping[str, Any]]:
            return (conninfo(target, schema, connect_timeout, settings.statement_timeout,
                             "skiplock-wait", pooler=True),
                    transaction_settings(schema, settings.statement_timeout))

        if behind_pooler:
            info, tx = pooled()
            return cls(info, None, url=target, settings=tx,
                       poll_interval=min(POLL_INTERVAL, settings.poll_interval * 2),
                       connect_timeout=connect_timeout)
        info = conninfo(target, schema, connect_timeout, settings.statement_timeout,
                        "skiplock-wait")
        return cls(info, f"{schema}_done", url=target,
                   poll_interval=min(POLL_INTERVAL, settings.poll_interval * 2),
                   connect_timeout=connect_timeout, on_refused=pooled)

    # -- waiters ----------------------------------------------------------------------------

    def watch(self, job_id: int, deliver: Deliver) -> None:
        """Call ``deliver(row)`` (from the hub's thread) once job ``job_id`` is finished;
        ``deliver(error)`` when the client closes first, or the id cannot be read."""
        with self._lock:
            if self._stopping:
                raise SkiplockError("client closed: it cannot wait for jobs any more")
            if len(self._watchers) >= MAX_WAITERS and job_id not in self._watchers:
                raise SkiplockError(f"more than {MAX_WAITERS} jobs waited for at once")
            self._watchers.setdefault(job_id, []).append(deliver)
            self._fresh.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="skiplock-wait",
                                                daemon=True)
                self._thread.start()
        self._wake()

    def unwatch(self, job_id: int, deliver: Deliver) -> None:
        with self._lock:
            found = self._watchers.get(job_id)
            if found is not None:
                with contextlib.suppress(ValueError):
                    found.remove(deliver)
                if not found:
                    del self._watchers[job_id]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(v) for v in self._watchers.values())

    def wait(self, job_id: int, timeout: float) -> Any:
        """Block this thread until the job finished: its result, or the error outcome()
        raises; WaitTimeout after ``timeout`` seconds."""
        done = threading.Event()
        box: list[Delivery] = []

        def deliver(row: Delivery) -> None:
            box.append(row)
            done.set()

        self.watch(job_id, deliver)
        try:
            if not done.wait(timeout):
                raise WaitTimeout(job_id, timeout)
        finally:
            self.unwatch(job_id, deliver)
        return outcome(job_id, box[0])

    async def wait_async(self, job_id: int, timeout: float) -> Any:  # noqa: ASYNC109 (AsyncClient.wait's)
        """``wait`` for asyncio: the event loop is never blocked."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivery] = loop.create_future()

        def settle(row: Delivery) -> None:
            if not future.done():
                future.set_result(row)

        def deliver(row: Delivery) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, row)

        self.watch(job_id, deliver)
        try:
            async with asyncio.timeout(timeout):
                row = await future
        except TimeoutError:
            raise WaitTimeout(job_id, timeout) from None
        finally:
            self.unwatch(job_id, deliver)
        return outcome(job_id, row)

    def close(self) -> None:
        """Stop the hub: every pending waiter raises SkiplockError("client closed ...") at
        once (not after its own timeout), and no new one is taken."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            pending = [d for ds in self._watchers.values() for d in ds]
            self._watchers.clear()
        self._stopped.set()
        self._wake()
        for deliver in pending:
            deliver(SkiplockError("client closed while waiting for the job"))
        if thread is not None:
            thread.join(self.connect_timeout + 5)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # -- the hub's thread -------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                self.attempts += 1
                with psycopg.connect(self._info, autocommit=True,
                                     prepare_threshold=None) as conn:
                    self._serve(conn)
                    return
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stopping:
                    return
                if self._on_refused is not None and refuses_startup_options(exc):
                    self._pooler_mode(self._on_refused)
                    continue
                log.info("waiting for jobs: %s; reconnecting in %.1f s",
                         wrap_error(exc, self._url, "wait for jobs"), backoff)
            except Exception:  # a bug here must not leave waiters hanging silently
                self.connected.clear()
                log.exception("waiting for jobs: unexpected error; reconnecting")
            self._sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        notified: set[int] = set()
        if self._channel is not None:
            conn.execute(pgsql.SQL("LISTEN {}").format(pgsql.Identifier(self._channel)))
        self.connected.set()
        log.debug("waiting for jobs on %s", redact_url(self._url))
        # Listening now: whatever finished before (or while the link was down) is read here.
        with self._lock:
            self._fresh.update(self._watchers)
        last_poll = time.monotonic()
        with selectors.DefaultSelector() as sel:
            if self._channel is not None:  # poll only: nothing to hear on the socket
                sel.register(conn.fileno(), selectors.EVENT_READ, "db")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            while not self._stopping:
                with self._lock:
                    fresh = self._fresh & self._watchers.keys()
                    self._fresh.clear()
                    ids = notified & self._watchers.keys()
                    if time.monotonic() >= last_poll + self.poll_interval:
                        ids |= self._watchers.keys()
                        fresh |= self._unflagged & self._watchers.keys()
                        self._unflagged.clear()
                        last_poll = time.monotonic()
                notified.clear()
                if fresh and self._channel is not None:
                    # No wake-up lost: LISTEN is in place (above) before the flag is set, and
                    # the flag before the state is read. A job the flag statement sets it on
                    # was not finished then, and its finish (a later update of the row, which
                    # carries the flag) notifies us, after LISTEN. A job it finds finished, or
                    # whose finish it waited for (the row was locked), is left unflagged and
                    # read here, in a statement after that finish committed. Poll only (no
                    # channel): no notify to ask for, no flag written.
                    fresh -= self._flag(conn, sorted(fresh))
                ids |= fresh
                if ids:
                    self._read(conn, sorted(ids))
                    continue  # deliveries may have taken a while: look again at once
                if self._channel is not None:
                    # what came while the flag or the read ran: psycopg took it off the
                    # socket already, so the select below would not see it (it would wait
                    # for the poll)
                    for note in conn.notifies(timeout=0):
                        notified.update(parse_ids(note.payload))
                    if notified:
                        continue
                timeout = max(0.0, last_poll + self.poll_interval - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                if self._channel is not None:
                    # What arrived, and what came during the last read (psycopg keeps those
                    # for notifies()); raises when the connection died.
                    for note in conn.notifies(timeout=0):
                        notified.update(parse_ids(note.payload))
                elif conn.closed or conn.broken:
                    raise psycopg.OperationalError("the connection was lost")

    def _pooler_mode(self, pooled: Callable[[], tuple[str, Mapping[str, Any]]]) -> None:
        """The server refused the startup options: a transaction pooler. No options, the
        settings in each read, no LISTEN (a pooler delivers no notifications): poll only."""
        self._info, self._tx_settings = pooled()
        self._channel = None
        self._on_refused = None
        log.info("waiting for jobs: %s refused startup options (a transaction pooler); "
                 "polling every %.1f s", redact_url(self._url), self.poll_interval)

    def _read(self, conn: psycopg.Connection[Any], ids: list[int]) -> None:
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            try:
                rows = self._outcomes(conn, chunk)
            except psycopg.DataError:
                # A value the query cannot take: this read's waiters' error, not a lost
                # connection (reconnecting would loop on it, starving every other waiter).
                rows = self._one_by_one(conn, chunk)
            self.reads += 1
            for row in rows:
                with self._lock:
                    delivers = list(self._watchers.get(int(row["id"]), ()))
                for deliver in delivers:
                    deliver(row)

    def _flag(self, conn: psycopg.Connection[Any], ids: list[int]) -> set[int]:
        """Set wake_on_finish on the unfinished jobs among ``ids``: the ids it was set on
        (the trigger will notify their finish); the others are to be read now."""
        flagged: set[int] = set()
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            try:
                rows = self._query(conn, "wake_on_finish", chunk)
            except (psycopg.errors.UndefinedColumn, psycopg.errors.InsufficientPrivilege,
                    psycopg.errors.ReadOnlySqlTransaction) as exc:
                # A schema before 0012 (the migration not run yet), or a producer's role that
                # may not update jobs (or only reads): no flag. Every finish is notified
                # anyway (the trigger reads no flag; since 0013 the worker's completions send
                # their own); the read below goes on either way (a reconnect would not help).
                # Asked again for the next new waiters: the hub takes to the flag once it can.
                if not self._unflagged_logged:
                    self._unflagged_logged = True
                    log.warning("waiting for jobs: cannot flag jobs for their finish notify "
                                "(%s); woken by the notify of every job, or by the poll",
                                type(exc).__name__)
                return flagged
            except psycopg.errors.LockNotAvailable:
                # a row held past the hub's lock timeout (not a lost connection): read now,
                # flagged again at the next poll, which covers the job until then
                with self._lock:
                    self._unflagged.update(chunk)
                continue
            except psycopg.DataError:
                # an id the query cannot take: the others are flagged alone; that one is
                # read, and its waiter gets the read's error (_one_by_one)
                rows = []
                for job_id in chunk:
                    try:
                        rows.extend(self._query(conn, "wake_on_finish", [job_id]))
                    except psycopg.errors.LockNotAvailable:
                        with self._lock:
                            self._unflagged.add(job_id)
                    except psycopg.DataError:
                        pass
            self.reads += 1
            flagged.update(int(r["id"]) for r in rows)
        self.flagged += len(flagged)
        return flagged

    def _outcomes(self, conn: psycopg.Connection[Any], ids: list[int]) -> list[dict[str, Any]]:
        return self._query(conn, "wait_outcomes", ids)

    def _query(self, conn: psycopg.Connection[Any], name: str, ids: list[int]
               ) -> list[dict[str, Any]]:
        # settings local to the statement's transaction: the flag's lock timeout, or behind
        # a pooler the session's settings (the flag is never written there: no LISTEN)
        first: tuple[str, Mapping[str, Any] | None] | None = (
            (Q["wait_lock_timeout"], None) if name == "wake_on_finish"
            else (Q["transaction_settings"], self._tx_settings)
            if self._tx_settings is not None else None)
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            if first is None:
                cur.execute(Q[name], {"ids": ids})
            else:
                with conn.pipeline():  # one implicit transaction, one round trip
                    conn.execute(first[0], first[1])
                    cur.execute(Q[name], {"ids": ids})
            return cur.fetchall()

    def _one_by_one(self, conn: psycopg.Connection[Any], ids: list[int]) -> list[dict[str, Any]]:
        """The rows of a chunk that failed as a whole; an id that fails alone gets its
        error delivered and is dropped."""
        rows: list[dict[str, Any]] = []
        for job_id in ids:
            try:
                rows.extend(self._outcomes(conn, [job_id]))
            except psycopg.DataError as exc:
                with self._lock:
                    delivers = self._watchers.pop(job_id, [])
                for deliver in delivers:
                    deliver(InvalidArguments(f"job id {job_id!r} cannot be read: "
                                             f"{str(exc).strip().splitlines()[0]}"))
        return rows

    def _sleep(self, seconds: float) -> None:
        # An Event, not the wake pipe: a new waiter's wake-up (left unread while the link is
        # down) must not cut every backoff short (it made a connect loop during an outage).
        self._stopped.wait(seconds)
