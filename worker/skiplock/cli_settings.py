"""Settings for the ``skiplock`` commands: the environment, overridden by flags, validated
alike. Its own module so that a subcommand that lives elsewhere (``skiplock api``) takes its
settings from here, not from skiplock.cli, which imports the subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from .db import Database
from .errors import ConfigurationError
from .settings import Settings

# A setting's flag, named in its error (the environment variable alone would not tell a person
# who typed the flag what was wrong).
FLAGS = {"SKIPLOCK_SCHEMA": "--schema", "SKIPLOCK_DATABASE_URL": "--database-url"}

S = TypeVar("S", bound=BaseSettings)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment with the global flags (--database-url, --schema) over it."""
    overrides: dict[str, Any] = {}
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    if getattr(args, "schema", None):
        overrides["SKIPLOCK_SCHEMA"] = args.schema  # the field's alias
    # Validated like the environment: model_copy(update=...) skips validation, and an
    # unchecked --schema "x -c statement_timeout=0" reached libpq's options.
    return validated(Settings, overrides)


def validated(cls: Callable[..., S], overrides: Mapping[str, Any], *, prefix: str = "SKIPLOCK_",
              flags: Mapping[str, str] = FLAGS) -> S:
    """``cls(**overrides)`` (environment, then the overrides), or ConfigurationError naming
    each bad setting as ``prefix`` + field and its flag from ``flags``."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise settings_error(exc, prefix=prefix, flags=flags) from None


def settings_error(exc: ValidationError, *, prefix: str = "SKIPLOCK_",
                   flags: Mapping[str, str] = FLAGS) -> ConfigurationError:
    """Which setting is wrong and why, named as a person sets it (never its value: the URL
    and the tokens are secrets)."""
    problems = []
    for e in exc.errors():
        field = str(e["loc"][0]) if e["loc"] else "settings"
        name = field if field.startswith(prefix) else f"{prefix}{field.upper()}"
        flag = f" ({flags[name]})" if name in flags else ""
        message = str(e["msg"]).removeprefix("Value error, ")
        problems.append(f"{name}{flag}: {message}")
    return ConfigurationError("; ".join(problems))


def cli_database(settings: Settings) -> Database:
    """The database a command works on (ConfigurationError saying how to set the URL)."""
    return Database.from_settings(settings, application_name="skiplock-cli")
