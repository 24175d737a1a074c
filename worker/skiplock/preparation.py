"""Job preparation: every check a job passes before it is stored, and the task catalogue it
is checked against. One code path for the Python Client and the HTTP API, so an HTTP producer
is held to exactly the rules a Python one is."""

from __future__ import annotations

import datetime as dt
import json
import math
import operator
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from .catalogue import check_known, validate_args
from .copy_data import CopyBatch
from .db import NewJob
from .errors import InvalidArguments, UnknownTask
from .idempotency import check_key
from .limits import KeyProblem, key_for
from .names import queue_problem, task_problem
from .tracing import current_context as current_trace_context

# Strict (no default=): what it cannot encode is an error for the producer, not a string.
# No NaN or Infinity either: jsonb refuses them, and a refused COPY line lands in the
# server's log with every argument of the job.
_to_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


# max_attempts is an integer column: past it the insert fails (the API's models say the same).
MAX_ATTEMPTS = 2_147_483_647

# One year: a longer deadline is a typo, and the database refuses it (jobs_timeout_positive).
MAX_TIMEOUT = 31_536_000.0


def check_timeout(timeout: float | dt.timedelta | None) -> float | None:
    """A job deadline in seconds, or InvalidArguments saying what is wrong with it."""
    if timeout is None:
        return None
    if isinstance(timeout, dt.timedelta):
        timeout = timeout.total_seconds()
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArguments(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise InvalidArguments(
            f"timeout must be > 0 and at most {MAX_TIMEOUT:.0f} seconds (one year), got {timeout}"
        )
    return float(timeout)


def check_args_size(task: str, args_json: str, max_bytes: int) -> None:
    """InvalidArguments when a job's arguments (as JSON) are over ``max_bytes``: every claim
    loads them into a worker, ``concurrency`` at a time, so one huge job is an out-of-memory."""
    # _to_json escapes non-ASCII (ensure_ascii), so characters are bytes.
    size = len(args_json)
    if size > max_bytes:
        raise InvalidArguments(
            f"arguments for {task!r} are {_mib(size)} as JSON, over the {_mib(max_bytes)} limit "
            "(SKIPLOCK_MAX_ARGS_BYTES): store large data elsewhere (a table, object storage) "
            "and pass its key"
        )


# Nesting of job arguments: far more than real arguments need, well inside what every reader
# copes with (pydantic, which the API answers with, gives up serialising at 255 levels; a
# worker thread decodes with less stack than the producer had).
MAX_ARGS_DEPTH = 128


def _too_deep(args: Mapping[str, Any], args_json: str) -> bool:
    """Nested deeper than MAX_ARGS_DEPTH (``args`` itself is level 1)."""
    if args_json.count("[") + args_json.count("{") <= MAX_ARGS_DEPTH:
        return False  # the common case: too few brackets to be that deep, no walk
    stack: list[tuple[Any, int]] = [(args, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Iterable[Any] = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth > MAX_ARGS_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n} bytes"


# Long enough that a burst of enqueues reads the catalogue once, short enough that a task a
# new worker registered is known within seconds (an unknown name refreshes at once anyway).
CATALOGUE_TTL = 5.0


class Catalogue:
    """The tasks workers registered (``Database.list_tasks``), cached for ``ttl`` seconds.

    Thread-safe: a Client or an API serves many threads, and two of them refreshing at once
    only read the table twice."""

    def __init__(self, load: Callable[[], dict[str, dict[str, Any]]],
                 ttl: float = CATALOGUE_TTL) -> None:
        self._load = load
        self._ttl = ttl
        self._lock = threading.Lock()
        self._tasks: dict[str, dict[str, Any]] = {}
        self._at = float("-inf")

    def tasks(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        with self._lock:
            tasks, at = self._tasks, self._at
        if refresh or time.monotonic() - at > self._ttl:
            tasks = self._load()
            with self._lock:
                self._tasks, self._at = tasks, time.monotonic()
        return tasks

    def entry(self, task: str) -> Mapping[str, Any] | None:
        """``task``'s entry (its parameters, queue, max_attempts), re-read once when the name
        is not in the cached copy (a worker may have just registered it); None when no worker
        registered any task yet (nothing to check against); UnknownTask otherwise."""
        tasks = self.tasks()
        if tasks and task not in tasks:
            tasks = self.tasks(refresh=True)
        return CatalogueSnapshot(tasks).entry(task)

    def snapshot(self, names: Iterable[Any]) -> CatalogueSnapshot:
        """The catalogue for preparing jobs of tasks ``names``, read before any of them is
        prepared (re-read once when one of them is not in the cached copy, as entry() does):
        enqueue_many prepares its blocks while its COPY holds a pooled connection, so the
        preparation must not need another one."""
        tasks = self.tasks()
        if tasks and not _wanted(names) <= tasks.keys():
            tasks = self.tasks(refresh=True)
        return CatalogueSnapshot(tasks)


def _wanted(names: Iterable[Any]) -> set[str]:
    """The task names a catalogue is read for: those that are valid task names (others are
    refused by prepare_job first, and need no lookup)."""
    distinct = {n for n in names if type(n) is str}
    return {n for n in distinct if not task_problem(n)}


class EntrySource(Protocol):
    """What prepare_job checks a task against: a Catalogue, or a CatalogueSnapshot."""

    def entry(self, task: str) -> Mapping[str, Any] | None: ...


class CatalogueSnapshot:
    """The catalogue as read once: entry() without any database read. The AsyncClient reads
    the catalogue with await (AsyncCatalogue.snapshot) and then prepares jobs exactly as the
    Client does, through the same prepare_job."""

    def __init__(self, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        self._tasks = tasks

    def entry(self, task: str) -> Mapping[str, Any] | None:
        return check_known(task, self._tasks) if self._tasks else None


class AsyncCatalogue:
    """Catalogue's cache for an async loader (one event loop: no lock needed)."""

    def __init__(self, load: Callable[[], Awaitable[dict[str, dict[str, Any]]]],
                 ttl: float = CATALOGUE_TTL) -> None:
        self._load = load
        self._ttl = ttl
        self._tasks: dict[str, dict[str, Any]] = {}
        self._at = float("-inf")

    async def tasks(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        if refresh or time.monotonic() - self._at > self._ttl:
            self._tasks, self._at = await self._load(), time.monotonic()
        return self._tasks

    async def snapshot(self, names: Iterable[Any]) -> CatalogueSnapshot:
        """The catalogue for preparing jobs of tasks ``names``: re-read once when one of them
        is not in the cached copy, as Catalogue.entry does. Names that are not valid task
        names (or not text) are not looked up: prepare_job refuses them first."""
        tasks = await self.tasks()
        if tasks and not _wanted(names) <= tasks.keys():
            tasks = await self.tasks(refresh=True)
        return CatalogueSnapshot(tasks)


class _Checks:
    """What one call checks once rather than once per job: a task's name with its queue's,
    the task's catalogue entry, and the producer's trace context (the same for every job of
    the call; read when the call starts, before any span of the call's own is current)."""

    __slots__ = ("_catalogue", "_entries", "_names", "trace_context")

    def __init__(self, catalogue: EntrySource | None) -> None:
        self._catalogue = catalogue
        self._names: set[tuple[str, str | None]] = set()
        self._entries: dict[str, Mapping[str, Any] | None] = {}
        self.trace_context = current_trace_context()

    def names(self, task: Any, queue: Any) -> None:
        """InvalidArguments when the task or queue name is not allowed (names.py)."""
        key = (task, queue) if type(task) is str and (queue is None or type(queue) is str) \
            else None
        if key is not None and key in self._names:
            return
        problem = task_problem(task) or (queue_problem(queue) if queue is not None else None)
        if problem:
            raise InvalidArguments(problem)
        if key is not None:
            self._names.add(key)

    def entry(self, task: str) -> Mapping[str, Any] | None:
        """The task's catalogue entry (None: not checked); UnknownTask as the catalogue says."""
        if self._catalogue is None:
            return None
        try:
            return self._entries[task]
        except KeyError:
            entry = self._entries[task] = self._catalogue.entry(task)
            return entry


def _integer(name: str, value: Any) -> int:
    """An integer argument (a bool or a float is a mistake, not a number to round)."""
    if isinstance(value, bool):
        raise InvalidArguments(f"{name} must be an integer, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArguments(f"{name} must be an integer, got {type(value).__name__}") from None


def prepare_job(
    task: str,
    args: Mapping[str, Any] | None = None,
    *,
    queue: str | None = None,
    priority: int = 0,
    max_attempts: int | None = None,
    run_at: dt.datetime | None = None,
    delay: float | dt.timedelta | None = None,
    unique_key: str | None = None,
    timeout: float | dt.timedelta | None = None,
    max_args_bytes: int,
    catalogue: EntrySource | None,
) -> NewJob:
    """A job ready to store, or InvalidArguments / UnknownTask saying what is wrong.

    ``catalogue`` None skips the task check (``validate=False``); otherwise a known task's
    arguments are checked against its signature and its queue and max_attempts are the
    defaults. ``max_args_bytes`` is SKIPLOCK_MAX_ARGS_BYTES."""
    return _prepare(task, args, queue, priority, max_attempts, run_at, delay, unique_key,
                    timeout, max_args_bytes, _Checks(catalogue))


def _prepare(
    task: str, args: Mapping[str, Any] | None, queue: str | None, priority: int,
    max_attempts: int | None, run_at: dt.datetime | None, delay: float | dt.timedelta | None,
    unique_key: str | None, timeout: float | dt.timedelta | None, max_args_bytes: int,
    checks: _Checks,
) -> NewJob:
    """prepare_job, with what ``checks`` already checked for an earlier job of the call."""
    # Names are bounded (see names.py): every queue costs a stats subquery, a metrics
    # series and a dashboard line, so free-form names are a way to run the API out of room.
    checks.names(task, queue)
    arguments = dict(args) if args else {}
    if arguments:
        if not all(isinstance(k, str) for k in arguments):
            raise InvalidArguments("argument names must be strings")
        try:
            args_json = _to_json(arguments)
        except (TypeError, ValueError) as exc:
            raise InvalidArguments(
                f"arguments for {task!r} must be JSON-serialisable: {exc}"
            ) from None
        except RecursionError:
            args_json = ""  # deeper than Python's recursion limit (a cycle is a ValueError)
        if not args_json or _too_deep(arguments, args_json):
            raise InvalidArguments(
                f"arguments for {task!r} are nested more than {MAX_ARGS_DEPTH} levels deep: "
                "send flatter JSON"
            )
    else:
        args_json = "{}"
    check_args_size(task, args_json, max_args_bytes)
    if run_at is not None and delay is not None:
        raise InvalidArguments("pass run_at or delay, not both")
    if run_at is not None and run_at.tzinfo is None:
        raise InvalidArguments(
            "run_at must be timezone-aware (e.g. datetime.now(timezone.utc))"
        )
    if isinstance(delay, dt.timedelta):
        delay = delay.total_seconds()
    if delay is not None and delay < 0:
        raise InvalidArguments("delay must be >= 0 seconds")
    if type(priority) is not int:
        priority = _integer("priority", priority)
    if not -32768 <= priority <= 32767:
        raise InvalidArguments(
            "priority must fit in a smallint (-32768..32767); lower runs first"
        )
    if max_attempts is not None:
        if type(max_attempts) is not int:
            max_attempts = _integer("max_attempts", max_attempts)
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise InvalidArguments(f"max_attempts must be from 1 to {MAX_ATTEMPTS}")
    checked_timeout = None if timeout is None else check_timeout(timeout)
    entry = checks.entry(task)
    if entry is None:
        # unchecked (validate=False) or nothing registered yet: no limits, no defaults
        concurrency_key = None
        queue = queue if queue is not None else "default"
        max_attempts = max_attempts or 5
    else:
        validate_args(task, entry["params"], arguments)
        # a limited task's key (limits.py): the claim counts its slots per key
        try:
            concurrency_key = key_for(task, entry.get("limits"), arguments)
        except KeyProblem as exc:
            raise InvalidArguments(str(exc)) from None
        queue = queue if queue is not None else entry["queue"]
        max_attempts = max_attempts or int(entry["max_attempts"])
    # positional: NewJob's keyword constructor was a fifth of a bulk job's preparation
    return NewJob(task, arguments, args_json, queue, priority, max_attempts, run_at, delay,
                  None if unique_key is None else check_key(unique_key), checked_timeout,
                  concurrency_key, checks.trace_context)


def prepare_many(
    jobs: Iterable[Mapping[str, Any]], *, max_args_bytes: int, catalogue: EntrySource | None
) -> list[NewJob]:
    """Every job of an enqueue_many, prepared by prepare_job; an error names the job's index.

    Each item: ``{"task": ..., "args": {...}, "queue"?, "priority"?, "max_attempts"?,
    "run_at"?, "unique_key"?, "timeout"?}``."""
    specs = job_specs(jobs)
    return [job for block in prepare_blocks(specs, max_args_bytes=max_args_bytes,
                                            catalogue=catalogue, size=max(len(specs), 1))
            for job in block]


# Jobs per block of enqueue_many's COPY: a block is sent as soon as it is prepared, and the
# server stores it while the next is prepared. Big enough that a block is one write of tens
# of kB (a no-op job's row is ~60 bytes), small enough that the server starts early.
COPY_BLOCK = 1_000


def prepare_blocks(
    specs: Sequence[Mapping[str, Any]], *, max_args_bytes: int, catalogue: EntrySource | None,
    size: int = COPY_BLOCK,
) -> Iterator[list[NewJob]]:
    """prepare_many's jobs, ``size`` at a time, prepared as the iterator is read: the COPY
    path sends each block while the next is prepared. Raises (from the iterator) at the
    first job that fails its checks, naming its index. ``specs`` as job_specs returns them.
    The checks of the call (its trace context among them) are taken when this is called."""
    return _blocks(specs, max_args_bytes, _Checks(catalogue), size)


def _blocks(specs: Sequence[Mapping[str, Any]], max_args_bytes: int, checks: _Checks,
            size: int) -> Iterator[list[NewJob]]:
    for start in range(0, len(specs), size):
        block = []
        for i in range(start, min(start + size, len(specs))):
            spec = specs[i]
            try:
                block.append(_prepare(
                    spec["task"], spec.get("args"), spec.get("queue"), spec.get("priority", 0),
                    spec.get("max_attempts"), spec.get("run_at"), None, spec.get("unique_key"),
                    spec.get("timeout"), max_args_bytes, checks))
            except KeyError:
                raise InvalidArguments(f"job #{i} has no 'task'") from None
            except (InvalidArguments, UnknownTask) as exc:
                raise type(exc)(f"job #{i}: {exc}") from None
        yield block


def job_specs(jobs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """enqueue_many's items as a list, each a mapping, or InvalidArguments naming the first
    that is not (both clients: the AsyncClient reads the task names before preparing)."""
    if isinstance(jobs, str | bytes | Mapping) or not isinstance(jobs, Iterable):
        raise InvalidArguments(
            f"jobs must be an iterable of mappings, got {type(jobs).__name__}")
    specs = list(jobs)
    for i, spec in enumerate(specs):
        # a dict first: the ABC check alone was ~0.35 us per job of a bulk enqueue
        if type(spec) is not dict and not isinstance(spec, Mapping):
            raise InvalidArguments(
                f"job #{i} must be a mapping ({{'task': ..., 'args': {{...}}}}), "
                f"got {type(spec).__name__}")
    return specs


def bulk_plan(
    specs: Sequence[Mapping[str, Any]], *, max_args_bytes: int, catalogue: EntrySource | None
) -> CopyBatch | list[NewJob]:
    """How both clients' enqueue_many stores ``specs`` (as job_specs returns them): a
    CopyBatch with its first block prepared, the rest prepared while the COPY sends the
    blocks before; or, when a job has a schedule, a unique key or a deadline (which COPY's
    columns cannot carry), every job prepared for the unnest insert."""
    if copyable_specs(specs):
        blocks = prepare_blocks(specs, max_args_bytes=max_args_bytes, catalogue=catalogue)
        return CopyBatch(blocks, len(specs)).prime()
    return prepare_many(specs, max_args_bytes=max_args_bytes, catalogue=catalogue)


def copyable_specs(specs: Sequence[Mapping[str, Any]]) -> bool:
    """The jobs ``specs`` prepare into can go in by COPY (no schedule, unique key or deadline:
    COPY's columns cannot carry them), known before they are prepared (so the COPY can start
    with the first block): preparation keeps each of these None or not."""
    return all(s.get("run_at") is None and s.get("unique_key") is None
               and s.get("timeout") is None for s in specs)
