"""Settings of the API process (prefix ``SKIPLOCK_API_``); the database settings are the core's."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_API_", extra="ignore")

    token: SecretStr | None = Field(
        default=None,
        description="bearer token required by mutating endpoints; unset means no auth (secret)")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # The database is asked at most this often for the backlog chart, whatever the traffic.
    sample_interval: float = Field(default=10.0, gt=0, le=3600)
    history_size: int = Field(default=360, ge=2, le=100_000)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    retry_after: int = Field(default=5, ge=1, le=3600,
                             description="Retry-After seconds sent with a 503")
    pool_size: int = Field(default=8, ge=1, le=200)
    request_timeout: float = Field(
        default=10.0, gt=0, le=600,
        description="longest a request waits on the database before answering 503")
