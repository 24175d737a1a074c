"""Settings of the API process (prefix ``SKIPLOCK_API_``); the database settings are the core's."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ApiSettings(BaseSettings):
    # hide_input_in_errors: a rejected token must not be echoed in the error message.
    model_config = SettingsConfigDict(env_prefix="SKIPLOCK_API_", extra="ignore",
                                      hide_input_in_errors=True)

    token: SecretStr | None = Field(
        default=None,
        description="write token: may read and change; with it or read_token set, every read "
                    "of job data and every change needs a token (secret)")
    read_token: SecretStr | None = Field(
        default=None,
        description="read token: may read jobs, queues and workers but change nothing (secret)")
    trusted_hosts: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Host header names answered, comma-separated ('*.example.com' matches "
                    "subdomains, '*' any); unset: the bind host and localhost, 127.0.0.1, ::1 "
                    "on a loopback bind, any name otherwise")
    insecure_no_token: bool = Field(
        default=False,
        description="allow a non-loopback bind without any token (everyone may read and change)")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # The database is asked at most this often for the backlog chart, whatever the traffic.
    sample_interval: float = Field(default=10.0, gt=0, le=3600)
    history_size: int = Field(default=360, ge=2, le=100_000)
    max_batch: int = Field(default=1000, ge=1, le=100_000)
    retry_after: int = Field(default=5, ge=1, le=3600,
                             description="Retry-After seconds sent with a 503")
    pool_size: int = Field(default=8, ge=1, le=200,
                           description="connections for writes (enqueue, retry, cancel, ...)")
    read_pool_size: int = Field(
        default=8, ge=1, le=200,
        description="connections for reads, a pool of their own: slow searches cannot take the "
                    "connections enqueue needs")
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024,
        description="a request body over this answers 413 before it is read whole or parsed")
    request_timeout: float = Field(
        default=10.0, gt=0, le=600,
        description="longest a request waits on the database before answering 503; its "
                    "queries are then cancelled (the API's statement timeout is at most this)")

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        # From the environment: "api.example.com, localhost"; an empty value means unset.
        if isinstance(value, str):
            value = [h.strip() for h in value.split(",") if h.strip()] or None
        return value

    @field_validator("trusted_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str] | None) -> list[str] | None:
        for h in value or ():
            bad_colon = ":" in h and not _is_ip(h.strip("[]"))  # a port, or a URL
            if not h or any(c in h for c in " /@") or bad_colon:
                raise ValueError(f"trusted host {h!r}: give a host name like api.example.com "
                                 "(no scheme, port or path), '*.example.com' or '*'")
        return value

    @field_validator("token", "read_token")
    @classmethod
    def _check_token(cls, value: SecretStr | None) -> SecretStr | None:
        text = value.get_secret_value() if value is not None else ""
        # An empty or short token is a guessable one; spaces and control characters would be
        # mangled in the header.
        if value is not None and (len(text) < 16 or not text.isprintable()
                                  or any(c.isspace() for c in text)):
            raise ValueError("a token must be at least 16 printable characters without spaces "
                             "(e.g. openssl rand -hex 32)")
        return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
