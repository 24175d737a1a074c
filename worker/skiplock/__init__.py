"""Skiplock: a job queue on PostgreSQL with leases, fenced writes and idempotent results."""

from .app import App, JobContext, Task
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
from .retry import Backoff
from .settings import Settings
from .worker import Worker

__all__ = [
    "App",
    "Backoff",
    "Client",
    "ConfigurationError",
    "DatabaseUnavailable",
    "EnqueueOutcomeUnknown",
    "IdempotencyConflict",
    "InvalidArguments",
    "InvalidTransition",
    "JobCancelled",
    "JobContext",
    "JobNotFound",
    "PermanentError",
    "Settings",
    "SkiplockError",
    "Snooze",
    "Task",
    "UnknownTask",
    "Worker",
]
__version__ = "0.1.0"
