"""The task registry: ``App`` and the ``@app.task`` decorator."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .catalogue import describe_params
from .retry import Backoff

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class JobContext:
    """What a handler knows about the job it runs."""

    job_id: int
    attempt: int
    max_attempts: int
    queue: str
    task: str
    worker_id: str


@dataclass(frozen=True)
class Task:
    name: str
    func: Callable[..., Any]
    queue: str
    max_attempts: int
    backoff: Backoff
    is_async: bool
    params: Mapping[str, Any] = field(default_factory=dict)


class App:
    """A set of tasks that workers can run and producers can validate against."""

    def __init__(self, *, default_queue: str = "default", default_max_attempts: int = 5) -> None:
        self.default_queue = default_queue
        self.default_max_attempts = default_max_attempts
        self.tasks: dict[str, Task] = {}

    @overload
    def task(self, func: F, /) -> F: ...

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
    ) -> Callable[[F], F]: ...

    def task(
        self,
        func: F | None = None,
        /,
        *,
        name: str | None = None,
        queue: str | None = None,
        max_attempts: int | None = None,
        backoff: Backoff | None = None,
    ) -> F | Callable[[F], F]:
        """Register a handler ``f(ctx, **args)``; usable bare or with options."""

        def register(f: F) -> F:
            task_name = name or f.__name__
            if task_name in self.tasks:
                raise ValueError(f"task {task_name!r} is registered twice")
            attempts = max_attempts if max_attempts is not None else self.default_max_attempts
            if attempts < 1:
                raise ValueError(f"task {task_name!r}: max_attempts must be >= 1")
            if not list(inspect.signature(f).parameters):
                raise TypeError(f"task {task_name!r} must take the JobContext as first parameter")
            self.tasks[task_name] = Task(
                name=task_name,
                func=f,
                queue=queue or self.default_queue,
                max_attempts=attempts,
                backoff=backoff or Backoff(),
                is_async=asyncio.iscoroutinefunction(f),
                params=describe_params(f),
            )
            return f

        if func is not None:
            return register(func)
        return register


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
