"""Configuration from the environment (prefix ``SKIPLOCK_``); CLI flags override it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigurationError
from .names import schema_problem

# What every "no database URL" error says: how to give one, the way each entry point takes it.
NO_URL = ("no database URL: set SKIPLOCK_DATABASE_URL (the skiplock command also takes "
          "--database-url, the Python Client a database_url argument), e.g. "
          "postgresql://user:pass@localhost:5432/app")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="libpq URL or DSN; secret, never logged (see redact_url)",
        repr=False,  # a logged or printed Settings must not carry the password
    )
    # "transaction": database_url is a transaction pooler's (PgBouncer pool_mode=transaction):
    # settings are sent per transaction, no prepared statements (docs/postgres.md). Found out
    # on the first connection too, when the pooler refuses the startup options.
    pooler: Literal["none", "transaction"] = Field(default="none")
    listen_url: str | None = Field(
        default=None, repr=False,
        description="direct URL (not through a pooler) for the worker's LISTEN connection; "
        "secret, never logged. Unset behind a pooler: the worker polls",
    )
    schema_name: str = Field(default="skiplock", validation_alias="SKIPLOCK_SCHEMA")
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    lease_seconds: float = Field(default=30.0, ge=1, le=86400)
    concurrency: int = Field(default=10, ge=1, le=10000)
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    shutdown_grace: float = Field(default=30.0, ge=0, le=86400)
    retention_seconds: float = Field(default=7 * 86400, ge=0)
    # 24 h, as Stripe keeps its keys: long enough for any client's retry loop to outlast an
    # outage of a night, short enough that the key table stays a day of keyed enqueues. A key
    # also lives as long as its job (SKIPLOCK_RETENTION_SECONDS for a finished one).
    idempotency_retention: float = Field(
        default=86400.0, ge=0, le=366 * 86400,
        description="seconds an idempotency key (unique_key, Idempotency-Key) is kept after "
        "first use, even when its job was pruned; `skiplock prune` deletes older keys",
    )
    worker_name: str | None = Field(
        default=None, description="pod or host name recorded in locked_by; POD_NAME also works"
    )
    # uvloop when installed (a default dependency on Linux); "asyncio" turns it off. Read by
    # `skiplock worker` (skiplock/eventloop.py) and `skiplock api` (uvicorn's loop setting).
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        default="auto", description="the worker's asyncio event loop: auto (uvloop when "
        "installed), asyncio or uvloop")
    log_json: bool = False
    log_level: str = "INFO"
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serves /metrics and the /livez probe"
    )
    # Both at most 8 MiB: the database's own ceiling (jobs_args_size, results_result_size:
    # 64 MiB stored) then stays above anything these let through, whatever the JSON (stored
    # jsonb takes up to ~6x its text for a list of small numbers).
    max_result_bytes: int = Field(
        default=1024 * 1024, ge=1, le=8 * 1024 * 1024,
        description="a job result larger than this (as JSON) fails the job permanently",
    )
    max_args_bytes: int = Field(
        default=1024 * 1024, ge=1, le=8 * 1024 * 1024,
        description="job arguments larger than this (as JSON) are refused at enqueue",
    )
    cancel_grace: float = Field(
        default=10.0, ge=0, le=86400,
        description="how long a handler told to stop (cancel, deadline) has before the worker "
        "gives up on it: the job's outcome is written and a sync handler's thread abandoned",
    )
    unrunnable_grace: float = Field(
        default=120.0, ge=0, le=7 * 86400,
        description="how long a job no live worker can run waits for one before it is dead",
    )

    @field_validator("schema_name")
    @classmethod
    def _schema_is_identifier(cls, value: str) -> str:
        problem = schema_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def require_url(self) -> str:
        """The database URL, or ConfigurationError saying how to set one."""
        if not self.database_url:
            raise ConfigurationError(NO_URL)
        return self.database_url
