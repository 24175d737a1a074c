"""Skiplock: a job queue on PostgreSQL with leases, fenced writes and idempotent results."""

from .app import App, JobContext, Task
from .async_client import AsyncClient
from .client import Client
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
from .handles import Call, TaskHandle, declare
from .limits import Rate
from .retry import Backoff
from .settings import Settings
from .waiting import JobDead, JobWasCancelled, WaitTimeout
from .worker import Worker

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
