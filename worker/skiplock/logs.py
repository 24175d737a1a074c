"""Logging setup: plain text for people, JSON lines for machines (SKIPLOCK_LOG_JSON=1)."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

_CONTEXT_FIELDS = ("job_id", "task", "attempt", "queue", "worker_id")


# Fields bound for the code running now (a job's handler, a worker's loops). asyncio tasks and
# run_in_executor copy the context, so a handler's own log lines carry its job's fields too.
_BOUND: contextvars.ContextVar[tuple[tuple[str, object], ...]] = contextvars.ContextVar(
    "skiplock_log_fields", default=()
)


class bind:
    """Add ``fields`` to every log record made inside the block (and tasks started in it).

    A class, not a @contextmanager: the executor enters one per job, and the generator
    machinery cost more than the binding itself."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: object) -> None:
        self._fields = fields
        self._token: contextvars.Token[tuple[tuple[str, object], ...]] | None = None

    def __enter__(self) -> None:
        if self._token is not None:
            raise RuntimeError("logs.bind(...) is entered once per block: make one per with")
        outer = _BOUND.get()
        fields = {**dict(outer), **self._fields} if outer else self._fields
        self._token = _BOUND.set(tuple(fields.items()))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _BOUND.reset(self._token)
            self._token = None


class ContextFilter(logging.Filter):
    """Copy the bound fields onto each record unless the call passed its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _BOUND.get():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = " ".join(
            f"{n}={getattr(record, n)}"
            for n in _CONTEXT_FIELDS
            if getattr(record, n, None) is not None
        )
        return f"{base} {extra}" if extra else base


def configure(level: str = "INFO", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
