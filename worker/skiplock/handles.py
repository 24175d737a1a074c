"""Typed task handles: what ``@app.task`` and ``skiplock.declare`` return.

A handle carries the handler's parameters as a ParamSpec, so a producer's
``send_email.enqueue(client, to="a@b.c")`` is checked by mypy against the handler's own
signature (a wrong name or type is an error at the call site, not a dead job). It stays
callable exactly like the function it wraps (workers and tests call handlers directly).

A producer in another service need not import the handler (nor its heavy dependencies):
``@skiplock.declare("send_email")`` on a stub with the same signature and ``...`` as its body
gives the same typed handle, without registering anything or running any code of the worker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

from .catalogue import describe_params, validate_args
from .errors import InvalidArguments
from .names import queue_problem, task_problem

if TYPE_CHECKING:
    from .async_client import AsyncClient
    from .client import Client

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclasses.dataclass(frozen=True)
class JobOptions:
    """How a handle's jobs are stored (everything but the arguments); None: the default."""

    queue: str | None = None
    priority: int = 0
    run_at: dt.datetime | None = None
    delay: float | dt.timedelta | None = None
    max_attempts: int | None = None
    unique_key: str | None = None
    timeout: float | dt.timedelta | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class Call(Generic[P]):
    """One job's arguments, bound to a handle (``handle.call(...)``), for ``enqueue_many``:
    typed by the handle's ParamSpec, so a list of them cannot mix up two tasks' arguments."""

    __slots__ = ("args", "options", "task")

    def __init__(self, task: str, args: dict[str, Any], options: JobOptions) -> None:
        self.task = task
        self.args = args
        self.options = options

    def as_job(self) -> dict[str, Any]:
        """The item ``Client.enqueue_many`` takes (delay is not one of its fields)."""
        spec = {k: v for k, v in self.options.as_kwargs().items() if k != "delay"}
        return {"task": self.task, "args": self.args, **spec}


class TaskHandle(Generic[P, R_co]):
    """A task by name with its handler's signature; see the module docstring."""

    __name__: str  # the handler's (functools.update_wrapper), as a function's

    def __init__(
        self,
        name: str,
        signature_of: Callable[..., Any],
        *,
        func: Callable[..., Any] | None = None,
        queue: str | None = None,
        options: JobOptions | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self._func = func
        self._signature_of = signature_of
        self._options = options or JobOptions(queue=queue)
        self._signature = _without_context(signature_of, name)
        # The parameters as the catalogue records them: a producer checks values against
        # the declaration locally, before any database round trip.
        self.params = describe_params(signature_of)
        functools.update_wrapper(self, signature_of)
        if asyncio.iscoroutinefunction(signature_of):
            _mark_coroutine_function(self)

    def __repr__(self) -> str:
        kind = "task" if self._func is not None else "declared task"
        return f"<{kind} {self.name!r}>"

    def __call__(self, ctx: Any, /, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Run the handler itself (what a worker does), e.g. in a test."""
        if self._func is None:
            raise TypeError(
                f"{self.name!r} is only declared here (skiplock.declare): enqueue it; a "
                "worker that registered the real handler runs it")
        result: R_co = self._func(ctx, *args, **kwargs)
        return result

    # -- arguments and options ------------------------------------------------------------

    def options(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: dt.datetime | None = None,
        delay: float | dt.timedelta | None = None,
        max_attempts: int | None = None,
        unique_key: str | None = None,
        timeout: float | dt.timedelta | None = None,
    ) -> TaskHandle[P, R_co]:
        """This handle with other job options (the handler's own parameters take every other
        name, so options are set here): ``task.options(delay=60).enqueue(client, ...)``."""
        o = self._options
        new = JobOptions(
            queue=queue if queue is not None else o.queue,
            priority=priority if priority is not None else o.priority,
            run_at=run_at if run_at is not None else o.run_at,
            delay=delay if delay is not None else o.delay,
            max_attempts=max_attempts if max_attempts is not None else o.max_attempts,
            unique_key=unique_key if unique_key is not None else o.unique_key,
            timeout=timeout if timeout is not None else o.timeout,
        )
        return TaskHandle(self.name, self._signature_of, func=self._func, queue=self.queue,
                          options=new)

    def arguments(self, *args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        """The job's arguments by name, as the worker passes them to the handler; positional
        ones are named here. InvalidArguments for what the signature does not take."""
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"{self.name}: {exc}") from None
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = self._signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise InvalidArguments(
                        f"{self.name}: job arguments go by name; *{name} cannot be sent")
            elif kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        validate_args(self.name, self.params, out)
        return out

    def call(self, *args: P.args, **kwargs: P.kwargs) -> Call[P]:
        """One job for ``enqueue_many``, with this handle's options."""
        return Call(self.name, self.arguments(*args, **kwargs), self._options)

    # -- enqueueing -------------------------------------------------------------------------

    def enqueue(self, client: Client, /, *args: P.args, **kwargs: P.kwargs) -> int:
        """Store a job running this task with these arguments; its id."""
        job_id: int = client.enqueue(self.name, self.arguments(*args, **kwargs),
                                     **self._options.as_kwargs())
        return job_id

    async def enqueue_async(
        self, client: AsyncClient, /, *args: P.args, **kwargs: P.kwargs
    ) -> int:
        """``enqueue`` on an AsyncClient."""
        job_id: int = await client.enqueue(self.name, self.arguments(*args, **kwargs),
                                           **self._options.as_kwargs())
        return job_id

    def enqueue_many(self, client: Client, calls: Iterable[Call[P]]) -> int:
        """Store many jobs of this task at once (``[task.call(...), ...]``)."""
        return client.enqueue_many(self._jobs(calls))

    async def enqueue_many_async(self, client: AsyncClient, calls: Iterable[Call[P]]) -> int:
        return await client.enqueue_many(self._jobs(calls))

    def _jobs(self, calls: Iterable[Call[P]]) -> list[dict[str, Any]]:
        jobs = []
        for c in calls:
            if c.task != self.name:  # only an untyped caller gets here
                raise InvalidArguments(f"a call of {c.task!r} in {self.name!r}.enqueue_many")
            if c.options.delay is not None:
                raise InvalidArguments("enqueue_many takes run_at, not delay, per job")
            jobs.append(c.as_job())
        return jobs


def _without_context(f: Callable[..., Any], name: str) -> inspect.Signature:
    """``f``'s signature without its first parameter (the JobContext a worker passes)."""
    sig = inspect.signature(f)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                            inspect.Parameter.POSITIONAL_OR_KEYWORD):
        return sig  # (ctx in *args): App.task refused a handler with no parameter at all
    return sig.replace(parameters=params[1:])


def declare(
    name: str | None = None, *, queue: str | None = None
) -> Callable[[Callable[Concatenate[Any, P], R]], TaskHandle[P, R]]:
    """A typed handle for a task another service runs, from a stub with its signature::

        @skiplock.declare("send_email")
        def send_email(ctx: JobContext, to: str, subject: str) -> None: ...

    Nothing is registered and the stub never runs: the producer imports only the stub (and
    skiplock), not the worker's module with its dependencies. ``queue``: the declared
    task's queue when the producer knows it (otherwise the catalogue's, or "default")."""

    def make(stub: Callable[Concatenate[Any, P], R]) -> TaskHandle[P, R]:
        task_name = name or stub.__name__
        problem = task_problem(task_name) or (queue_problem(queue) if queue is not None else None)
        if problem:
            raise ValueError(f"task {task_name[:60]!r}: {problem}")
        return TaskHandle(task_name, stub, queue=queue)

    return make


def task_name(task: str | TaskHandle[Any, Any]) -> str:
    """The name to enqueue: a handle's, or the string itself."""
    return task.name if isinstance(task, TaskHandle) else task


def _mark_coroutine_function(obj: object) -> None:
    """Make (asyncio.|inspect.)iscoroutinefunction(obj) true for a handle of an async handler:
    the public inspect.markcoroutinefunction where there is one (3.12+); on 3.11 asyncio's own
    marker, which asyncio.iscoroutinefunction reads (looked up, so its removal is no crash)."""
    mark = getattr(inspect, "markcoroutinefunction", None)
    if mark is not None:
        mark(obj)
        return
    marker = getattr(asyncio.coroutines, "_is_coroutine", None)
    if marker is not None:
        obj._is_coroutine = marker  # type: ignore[attr-defined]
