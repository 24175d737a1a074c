"""Skiplock: a job queue on PostgreSQL with leases, fenced writes and idempotent results.

The names below are imported on first use (PEP 562), not with the package: an app module's
``from skiplock import App`` then loads the app half only, and a worker started by
``skiplock worker`` never imports the clients (the async one and its pool), the producer's
tracing, or the waiting machinery it does not run. tests/unit/test_import_weight.py holds it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
    DatabaseUnavailable,
    EnqueueOutcomeUnknown,
    IdempotencyConflict,
    InvalidArguments,
    InvalidTransition,
    JobCancelled,
    JobNotFound,
    PermanentError,
    SkiplockError,
    Snooze,
    UnknownTask,
)

if TYPE_CHECKING:
    from .app import App, JobContext, Task
    from .async_client import AsyncClient
    from .client import Client
    from .handles import Call, TaskHandle, declare
    from .limits import Rate
    from .retry import Backoff
    from .settings import Settings
    from .waiting import JobDead, JobWasCancelled, WaitTimeout
    from .worker import Worker

# exported name -> the submodule that defines it
_LAZY = {
    "App": "app", "JobContext": "app", "Task": "app",
    "AsyncClient": "async_client",
    "Client": "client",
    "Call": "handles", "TaskHandle": "handles", "declare": "handles",
    "Rate": "limits",
    "Backoff": "retry",
    "Settings": "settings",
    "JobDead": "waiting", "JobWasCancelled": "waiting", "WaitTimeout": "waiting",
    "Worker": "worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # AttributeError (not KeyError): `from skiplock import tracing` then falls back to
        # importing the submodule, and hasattr() answers False.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "App",
    "AsyncClient",
    "Backoff",
    "Call",
    "Client",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EnqueueOutcomeUnknown",
    "IdempotencyConflict",
    "InvalidArguments",
    "InvalidTransition",
    "JobCancelled",
    "JobContext",
    "JobDead",
    "JobNotFound",
    "JobWasCancelled",
    "PermanentError",
    "Rate",
    "Settings",
    "SkiplockError",
    "Snooze",
    "Task",
    "TaskHandle",
    "UnknownTask",
    "WaitTimeout",
    "Worker",
    "declare",
]
__version__ = "0.1.0"
