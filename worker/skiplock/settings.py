"""Configuration from the environment (prefix ``SKIPLOCK_``); CLI flags override it."""

from __future__ import annotations

import re

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="libpq URL or DSN; secret, never logged (see redact_url)"
    )
    schema_name: str = Field(default="skiplock", validation_alias="SKIPLOCK_SCHEMA")
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    statement_timeout: float = Field(default=30.0, gt=0, le=3600)
    lease_seconds: float = Field(default=30.0, ge=1, le=86400)
    concurrency: int = Field(default=10, ge=1, le=10000)
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    shutdown_grace: float = Field(default=30.0, ge=0, le=86400)
    retention_seconds: float = Field(default=7 * 86400, ge=0)
    worker_name: str | None = Field(
        default=None, description="pod or host name recorded in locked_by; POD_NAME also works"
    )
    log_json: bool = False
    log_level: str = "INFO"
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serves /metrics and the /livez probe"
    )
    max_result_bytes: int = Field(
        default=1024 * 1024, ge=1, le=256 * 1024 * 1024,
        description="a job result larger than this (as JSON) fails the job permanently",
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
        if not _IDENTIFIER.match(value):
            raise ValueError(
                f"schema name {value!r} must be a lower-case SQL identifier "
                "(letters, digits, underscore; at most 63 characters)"
            )
        return value
