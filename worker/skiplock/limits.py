"""Concurrency and rate limits of a task: the declaration, its checks, and the key of a job.

A task's limits are stored with the task (``tasks.limits``, written by every worker that
registers it) so every worker, producer and the operator read the same numbers; the claim
enforces them in the database (sql/limits.sql). This module is pure: no I/O.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .outcomes import storable_text

# A key is an index entry and a lock name: long ones are a mistake (hash them yourself).
MAX_KEY_LENGTH = 200
# A day: a longer rate period is a schedule, not a rate.
MAX_RATE_PERIOD = 86_400.0
# What a stored limit may hold: far above any real limit, inside an int4 column's range.
MAX_LIMIT = 1_000_000

# Task name -> the function that computes its concurrency key, for every task of every App
# imported in this process: a producer that imports the task's module computes the key at
# enqueue (a producer without it cannot, see key_for).
KEY_FUNCTIONS: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class Rate:
    """At most ``limit`` starts per ``per`` seconds, for the task or (``per_key``) each key."""

    limit: int
    per: float
    per_key: bool = False


@dataclass(frozen=True)
class Limits:
    """What ``@app.task(concurrency_limit=..., concurrency_key=..., key_limit=...,
    rate_limit=...)`` declared; ``None`` fields are unlimited."""

    concurrency: int | None = None   # attempts running at once, all keys together
    key_limit: int | None = None     # attempts running at once per key
    key_arg: str | None = None       # the argument the key is (else key_func, or no key)
    key_func: Callable[..., Any] | None = None
    rate: Rate | None = None

    @property
    def keyed(self) -> bool:
        return self.key_arg is not None or self.key_func is not None

    @property
    def limited(self) -> bool:
        return self.concurrency is not None or self.key_limit is not None or self.rate is not None

    def as_json(self) -> dict[str, Any] | None:
        """What tasks.limits stores (the claim and the operator read these names)."""
        if not self.limited:
            return None
        return {
            "concurrency_limit": self.concurrency,
            "key_limit": self.key_limit,
            "key": (f"arg:{self.key_arg}" if self.key_arg is not None
                    else "function" if self.key_func is not None else None),
            "rate_limit": self.rate.limit if self.rate else None,
            "rate_period": self.rate.per if self.rate else None,
            "rate_per_key": bool(self.rate and self.rate.per_key),
        }


def _positive_int(task: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"task {task!r}: {name} must be an int from 1 to {MAX_LIMIT}, "
                         f"got {value!r}")
    return value


def _rate(task: str, value: object) -> Rate | None:
    if value is None:
        return None
    if isinstance(value, tuple) and len(value) == 2:
        value = Rate(*value)
    if not isinstance(value, Rate):
        raise ValueError(f"task {task!r}: rate_limit must be Rate(limit, per=seconds) or "
                         f"(limit, seconds), got {value!r}")
    _positive_int(task, "rate_limit's limit", value.limit)
    per = value.per
    if (isinstance(per, bool) or not isinstance(per, int | float) or not math.isfinite(per)
            or not 0 < per <= MAX_RATE_PERIOD):
        raise ValueError(f"task {task!r}: rate_limit's period must be > 0 seconds and at most "
                         f"{MAX_RATE_PERIOD:.0f}, got {per!r}")
    return Rate(value.limit, float(per), bool(value.per_key))


def declare(task: str, func: Callable[..., Any], *, concurrency_limit: object = None,
            concurrency_key: object = None, key_limit: object = None,
            rate_limit: object = None) -> Limits:
    """The checked limits of ``task`` (handler ``func``), or ValueError saying what is wrong:
    a mistake here is caught at import, not by a claim that never runs the job."""
    concurrency = _positive_int(task, "concurrency_limit", concurrency_limit)
    per_key = _positive_int(task, "key_limit", key_limit)
    rate = _rate(task, rate_limit)
    key_arg: str | None = None
    key_func: Callable[..., Any] | None = None
    if isinstance(concurrency_key, str):
        params = list(inspect.signature(func).parameters)[1:]  # the first is the JobContext
        if concurrency_key not in params:
            raise ValueError(f"task {task!r}: concurrency_key {concurrency_key!r} names no "
                             f"argument of the handler (it takes {params})")
        key_arg = concurrency_key
    elif callable(concurrency_key):
        key_func = concurrency_key
    elif concurrency_key is not None:
        raise ValueError(f"task {task!r}: concurrency_key must name an argument or be a "
                         f"function of the arguments, got {concurrency_key!r}")
    keyed = key_arg is not None or key_func is not None
    if per_key is not None and not keyed:
        raise ValueError(f"task {task!r}: key_limit needs a concurrency_key")
    if keyed and per_key is None and not (rate and rate.per_key):
        raise ValueError(f"task {task!r}: concurrency_key needs key_limit (or a per-key "
                         "rate_limit): a key alone limits nothing")
    if rate is not None and rate.per_key and not keyed:
        raise ValueError(f"task {task!r}: a per-key rate_limit needs a concurrency_key")
    if concurrency is not None and per_key is not None and per_key > concurrency:
        raise ValueError(f"task {task!r}: key_limit ({per_key}) is above concurrency_limit "
                         f"({concurrency}): no key could ever use it")
    return Limits(concurrency, per_key, key_arg, key_func, rate)


def key_text(value: object) -> str:
    """An argument as a key: a string as it is, anything else as canonical JSON (compact,
    sorted keys, non-ASCII as it is). The one definition: the producers key new jobs with
    it and the workers key the jobs enqueued without one with it too (``adoption_keys``;
    SQL's ``args->>`` would spell 1e20, an object's key order and non-ASCII otherwise)."""
    if isinstance(value, str):
        return value
    return _canonical(value)


def _canonical(value: object) -> str:
    """Compact JSON with sorted keys, non-ASCII as it is, and numbers as PostgreSQL's jsonb
    stores them (numeric: 1e20 is 100000000000000000000): the arguments a worker reads back
    went through jsonb, so the producer's spelling of a number must not change the key."""
    if value is None or isinstance(value, bool | str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return json.dumps(value)  # not JSON: the enqueue refuses the arguments anyway
        # numeric has no negative zero: jsonb stores -0.0 as 0.0 (hypothesis found it)
        return format(Decimal(repr(value if value else 0.0)), "f")
    if isinstance(value, Mapping):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + _canonical(v)
                              for k, v in sorted(value.items(), key=lambda kv: str(kv[0])))\
            + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)  # TypeError: not JSON, as for the args


class KeyProblem(ValueError):
    """The key of a job cannot be computed (the producer gets it as InvalidArguments)."""


def key_for(task: str, limits: Mapping[str, Any] | None, args: Mapping[str, Any]) -> str | None:
    """The concurrency_key column of a new job of ``task`` whose stored limits are ``limits``
    (tasks.limits): None for an unlimited task (the claim's plain path), '' for one limited as
    a whole, else the key. KeyProblem when it cannot be computed."""
    if not limits:
        return None
    spec = limits.get("key")
    if spec is None:
        return ""
    if isinstance(spec, str) and spec.startswith("arg:"):
        value = args.get(spec[4:])
        key = "" if value is None else key_text(value)
    else:
        func = KEY_FUNCTIONS.get(task)
        if func is None:
            raise KeyProblem(
                f"task {task!r} computes its concurrency key with a function: enqueue it from "
                "a process that imports the task's module (or key it by an argument name)")
        try:
            value = func(**args)
        except Exception as exc:  # the user's function: its failure is the producer's error
            raise KeyProblem(f"task {task!r}: the concurrency key function failed: "
                             f"{type(exc).__name__}: {exc}") from None
        if value is None or not isinstance(value, str | int):
            raise KeyProblem(f"task {task!r}: the concurrency key function must return a str "
                             f"or int, got {type(value).__name__}")
        key = str(value)
    if len(key) > MAX_KEY_LENGTH:
        raise KeyProblem(f"task {task!r}: concurrency key is {len(key)} characters, over "
                         f"{MAX_KEY_LENGTH} (hash it)")
    if storable_text(key, MAX_KEY_LENGTH) != key:  # NUL or a lone surrogate: text refuses it
        raise KeyProblem(f"task {task!r}: the concurrency key holds a NUL character or a lone "
                         "surrogate, which PostgreSQL cannot store; key by another value")
    return key


def adoption_keys(limits: Mapping[str, Mapping[str, Any]],
                  jobs: Sequence[tuple[int, str, Mapping[str, Any]]]
                  ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Keys for queued jobs of limited tasks enqueued without one: ([(id, key)], [(id, why
    no key can be computed)]), by key_for, so a job gets the key its producer would have
    given it. A job with no key possible (too long, a key function this process lacks or
    that fails) is not left queued for ever: the caller fails it with the reason."""
    keyed: list[tuple[int, str]] = []
    refused: list[tuple[int, str]] = []
    for job_id, task, args in jobs:
        try:
            key = key_for(task, limits.get(task), args)
        except KeyProblem as exc:
            refused.append((job_id, str(exc)))
            continue
        keyed.append((job_id, "" if key is None else key))
    return keyed, refused
