"""The task registry: ``App`` and the ``@app.task`` decorator."""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

from .catalogue import describe_params, validate_args
from .errors import InvalidArguments, JobCancelled
from .handles import TaskHandle
from .limits import KEY_FUNCTIONS, Limits, Rate, declare
from .names import queue_problem, task_problem
from .retry import Backoff
from .schedules import Schedule, ScheduleError, make_schedule

F = TypeVar("F", bound=Callable[..., Any])
# a handler's own parameters (after the JobContext) and result, for its typed TaskHandle
P = ParamSpec("P")
R = TypeVar("R")


_EVENT_LOCK = threading.Lock()


class StopSignal:
    """Set (from the worker's event loop) when the run must stop: its job was cancelled or its
    deadline passed. Thread-safe, so a sync handler can look at it from its own thread.

    The threading.Event is made only when a handler waits on it: one per job would cost more
    than the rest of a no-op job's context."""

    __slots__ = ("_event", "_set", "reason")

    def __init__(self) -> None:
        self._event: threading.Event | None = None
        self._set = False
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._set = True
        with _EVENT_LOCK:
            if self._event is not None:
                self._event.set()

    def is_set(self) -> bool:
        return self._set

    def wait(self, timeout: float | None = None) -> bool:
        with _EVENT_LOCK:
            if self._event is None:
                self._event = threading.Event()
                if self._set:
                    self._event.set()
            event = self._event
        return event.wait(timeout)


@dataclass(slots=True)
class JobContext:
    """What a handler knows about the job it runs, and whether it should stop. (Not frozen:
    one is made per job, and a frozen dataclass's constructor costs several times more.)"""

    job_id: int
    attempt: int
    max_attempts: int
    queue: str
    task: str
    worker_id: str
    # the attempt's deadline in seconds (None: no deadline)
    timeout: float | None = None
    snoozes: int = 0
    stop: StopSignal = field(default_factory=StopSignal, repr=False, compare=False)

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled or its deadline passed: stop soon. Async handlers
        are also cancelled (CancelledError at their next await)."""
        return self.stop.is_set()

    @property
    def stop_reason(self) -> str:
        """Why the run must stop ("cancelled: ...", "timed out after N s"); empty until then."""
        return self.stop.reason

    def raise_if_cancelled(self) -> None:
        """Raise JobCancelled when the run must stop: call it between steps of long work."""
        if self.stop.is_set():
            raise JobCancelled(self.stop.reason)

    def sleep(self, seconds: float) -> bool:
        """Sleep in a sync handler, waking at once when the run must stop; True if it must."""
        return self.stop.wait(seconds)


@dataclass(frozen=True)
class Task:
    name: str
    func: Callable[..., Any]
    queue: str
    max_attempts: int
    backoff: Backoff
    is_async: bool
    params: Mapping[str, Any] = field(default_factory=dict)
    # each attempt's deadline (seconds); enqueue(timeout=...) overrides it per job
    timeout: float | None = None
    # how many times a job may Snooze before it is dead (a snooze loop must end)
    max_snoozes: int = 100
    # concurrency and rate limits (limits.py), enforced by the claim
    limits: Limits = field(default_factory=Limits)


class App:
    """A set of tasks that workers can run and producers can validate against."""

    def __init__(self, *, default_queue: str = "default", default_max_attempts: int = 5) -> None:
        self.default_queue = default_queue
        self.default_max_attempts = default_max_attempts
        self.tasks: dict[str, Task] = {}
        # periodic jobs (``periodic``), registered in the schedules table by each worker
        self.schedules: dict[str, Schedule] = {}

    @overload
    def task(self, func: Callable[Concatenate[JobContext, P], R], /) -> TaskHandle[P, R]: ...

    @overload
    def task(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        max_snoozes: int = 100,
        concurrency_limit: int | None = None,
        concurrency_key: str | Callable[..., Any] | None = None,
        key_limit: int | None = None,
        rate_limit: Rate | tuple[int, float] | None = None,
    ) -> Callable[[Callable[Concatenate[JobContext, P], R]], TaskHandle[P, R]]: ...

    def task(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
        timeout: float | None = None,
        max_snoozes: int = 100,
        concurrency_limit: int | None = None,
        concurrency_key: str | Callable[..., Any] | None = None,
        key_limit: int | None = None,
        rate_limit: Rate | tuple[int, float] | None = None,
    ) -> TaskHandle[Any, Any] | Callable[[F], TaskHandle[Any, Any]]:
        """Register a handler ``f(ctx, **args)``; usable bare or with options.

        ``timeout``: each attempt's deadline in seconds. Past it the handler is told to stop
        (``ctx.cancelled``; async handlers are cancelled) and the attempt fails as "timed out
        after N s", retried per the task's policy. ``max_snoozes``: how many times a job may
        ``raise Snooze(...)`` before it is dead.

        Limits (docs/limits.md), enforced by the claim across all workers:
        ``concurrency_limit``: attempts running at once; ``concurrency_key`` (an argument's
        name, or a function of the arguments) with ``key_limit``: attempts running at once
        per key; ``rate_limit=Rate(n, per=seconds, per_key=False)`` or ``(n, seconds)``: at
        most n starts per period."""

        def register(f: F) -> TaskHandle[Any, Any]:
            task_name = name or f.__name__
            if task_name in self.tasks:
                raise ValueError(f"task {task_name!r} is registered twice")
            # A name no producer could enqueue (names.py) is a mistake to catch at import.
            problem = task_problem(task_name) or queue_problem(queue or self.default_queue)
            if problem:
                raise ValueError(f"task {task_name[:60]!r}: {problem}")
            attempts = max_attempts if max_attempts is not None else self.default_max_attempts
            if attempts < 1:
                raise ValueError(f"task {task_name!r}: max_attempts must be >= 1")
            if not list(inspect.signature(f).parameters):
                raise TypeError(f"task {task_name!r} must take the JobContext as first parameter")
            if timeout is not None and (
                isinstance(timeout, bool) or not isinstance(timeout, int | float)
                or not math.isfinite(timeout) or not 0 < timeout <= 31_536_000
            ):
                raise ValueError(f"task {task_name!r}: timeout must be > 0 seconds (at most a "
                                 f"year), got {timeout!r}")
            if isinstance(max_snoozes, bool) or not isinstance(max_snoozes, int) or max_snoozes < 0:
                raise ValueError(f"task {task_name!r}: max_snoozes must be an int >= 0")
            limits = declare(task_name, f, concurrency_limit=concurrency_limit,
                             concurrency_key=concurrency_key, key_limit=key_limit,
                             rate_limit=rate_limit)
            self.tasks[task_name] = Task(
                name=task_name,
                func=f,
                queue=queue or self.default_queue,
                max_attempts=attempts,
                backoff=backoff or Backoff(),
                is_async=asyncio.iscoroutinefunction(f),
                params=describe_params(f),
                timeout=float(timeout) if timeout is not None else None,
                max_snoozes=max_snoozes,
                limits=limits,
            )
            if limits.key_func is not None:  # producers importing this module compute keys
                KEY_FUNCTIONS[task_name] = limits.key_func
            # a typed handle (skiplock/handles.py), callable exactly like ``f``
            return TaskHandle(task_name, f, func=f, queue=queue or self.default_queue)

        if func is not None:
            return register(func)
        return register

    # -- issue 14: periodic jobs (docs/schedules.md) --
    def periodic(
        self,
        cron: str | None = None,
        *,
        every: int | None = None,
        timezone: str = "UTC",
        args: Mapping[str, Any] | None = None,
        name: str | None = None,
        missed: str = "once",
        backfill: int | None = None,
        grace: float = 60.0,
        jitter: float = 0.0,
        priority: int = 0,
        queue: str | None = None,
    ) -> _Periodic:
        """Run a task on a schedule: ``cron`` (5 fields, evaluated in ``timezone``, DST
        included) or ``every`` N seconds. Stack it on ``@app.task`` (above it), or put it on a
        plain handler, which is then registered as a task with the defaults. A task may have
        several schedules (give each its own ``name``; the default is the task's name).

        ``args``: the job's arguments. ``missed``: what firings found more than ``grace``
        seconds late get: "skip", "once" (one job for all of them) or "backfill" with
        ``backfill=N`` (the latest N, one job each). ``jitter``: each job's run_at is its fire
        time plus up to this many seconds. ``queue``: default the task's.

        Returns the task's TaskHandle (a plain handler is registered, and a handler registered
        already gets a handle too). ``args`` must fit the task's parameters, as an enqueue's
        would: a mistake is a ScheduleError at import, not a failed job at every firing."""

        def attach(target: Any) -> TaskHandle[Any, Any]:
            registered = self._registered_name(target)
            if registered is None:
                self.task(target)
                registered = self._registered_name(target)
                assert registered is not None
            task = self.tasks[registered]
            schedule = make_schedule(
                name=name or registered, task=registered, queue=queue or task.queue,
                cron=cron, every=every, timezone=timezone, args=args, missed=missed,
                backfill=backfill, grace=grace, jitter=jitter, priority=priority)
            try:
                validate_args(registered, task.params, schedule.args)
            except InvalidArguments as exc:
                raise ScheduleError(f"schedule {schedule.name[:80]!r}: {exc}") from None
            if schedule.name in self.schedules:
                raise ValueError(f"schedule {schedule.name!r} is declared twice (give each "
                                 "schedule of a task its own name=)")
            self.schedules[schedule.name] = schedule
            if isinstance(target, TaskHandle):
                return target
            return TaskHandle(task.name, task.func, func=task.func, queue=task.queue)

        return cast(_Periodic, attach)

    def _registered_name(self, target: Any) -> str | None:
        """The task a handle or handler is registered as here, if it is."""
        if isinstance(target, TaskHandle) and target.name in self.tasks:
            return str(target.name)
        for task in self.tasks.values():
            if task.func is target:
                return task.name
        return None


class _Periodic(Protocol):
    """What ``App.periodic(...)`` returns: a decorator giving back the task's typed handle."""

    @overload
    def __call__(self, target: TaskHandle[P, R], /) -> TaskHandle[P, R]: ...

    @overload
    def __call__(self, target: Callable[Concatenate[JobContext, P], R], /
                 ) -> TaskHandle[P, R]: ...

    def __call__(self, target: Any, /) -> Any: ...


def load_app(spec: str) -> App:
    """Import ``module:attribute`` and return the App it names."""
    import importlib

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"expected MODULE:APP (e.g. myproject.tasks:app), got {spec!r}")
    module = importlib.import_module(module_name)
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ValueError(f"{spec!r} is not a skiplock.App (found {type(app).__name__})")
    return app
