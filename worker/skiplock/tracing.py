"""OpenTelemetry, when it is installed (``pip install skiplock[otel]``); nothing otherwise.

A producer's trace context (the current span's, as W3C ``traceparent``/``tracestate``, by the
globally configured propagator) is stored with each job it enqueues (jobs.trace_context). A
worker runs each attempt in a span of its own, named ``<task> process``, with the task, queue,
job id and attempt as attributes:

- the first attempt's span is a child of the producer's span, so the trace reads
  enqueue -> run;
- a retry's span starts a trace of its own with a link to the producer's span: a retry an
  hour later does not stretch the first trace over that hour, and is still found from it.

Without the package every function here is a no-op; with the package but no SDK configured
(no TracerProvider set), OpenTelemetry's own no-op API makes it cost next to nothing and
stores no context (there is no valid span to store).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import JobCancelled, Snooze

if TYPE_CHECKING:
    from types import ModuleType

# OpenTelemetry's API is imported on first need, not with this module (it is ~30 ms of a
# worker's start-up): a process can only have a TracerProvider or a current span once
# something imported ``opentelemetry.trace`` to set or start one, or when the environment
# names a provider for the API to load (OTEL_PYTHON_TRACER_PROVIDER). Until then tracing is
# off and nothing is imported (tests/unit/test_import_weight.py).
_PROVIDER_VARIABLE = "OTEL_PYTHON_TRACER_PROVIDER"
_api: tuple[ModuleType, ModuleType, type[Any]] | None = None
_missing = False  # the otel extra is not installed (its import failed once)

# The carrier a stored context may have (traceparent is ~55 characters; tracestate is capped
# by the W3C at 512): anything longer is not a context we wrote.
MAX_CONTEXT_CHARS = 2048
TRACER_NAME = "skiplock"


def _opentelemetry() -> tuple[ModuleType, ModuleType, type[Any]] | None:
    """(trace, propagate, Context) from OpenTelemetry's API, imported once; None when the
    otel extra is not installed."""
    global _api, _missing
    if _api is None and not _missing:
        try:
            from opentelemetry import propagate, trace
            from opentelemetry.context import Context
        except ImportError:  # the otel extra is not installed
            _missing = True
        else:
            _api = (trace, propagate, Context)
    return _api


def _in_use() -> bool:
    """Something in this process may have configured tracing or started a span."""
    return "opentelemetry.trace" in sys.modules or _provider_named()


@functools.cache
def _provider_named() -> bool:
    # Read once: the executor asks for every job, and a miss in os.environ costs a raised
    # KeyError (the API itself reads the variable once, at its first get_tracer_provider()).
    return _PROVIDER_VARIABLE in os.environ


def active() -> bool:
    """OpenTelemetry is installed and a TracerProvider was set (an SDK configured): the
    worker's spans would be recorded. Without one, the executor skips even the no-op span."""
    api = _opentelemetry() if _in_use() else None
    if api is None:
        return False
    trace = api[0]
    return not isinstance(trace.get_tracer_provider(),
                          trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def current_context() -> str | None:
    """The current span's context as JSON text to store with a job; None without a valid
    (sampled or not) current span, or without OpenTelemetry."""
    # No import before someone else's: without ``opentelemetry.trace`` loaded no span was
    # ever started, so none is current.
    api = _opentelemetry() if "opentelemetry.trace" in sys.modules else None
    if api is None:
        return None
    trace, propagate, _ = api
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    text = json.dumps(carrier, separators=(",", ":"), sort_keys=True) if carrier else None
    return text if text is not None and len(text) <= MAX_CONTEXT_CHARS else None


def _carrier(stored: Any) -> dict[str, str] | None:
    """A stored context back as a carrier (jsonb arrives as a dict, text as a string); None
    for anything else (a row written by hand, a column the claim does not return)."""
    if isinstance(stored, str):
        if len(stored) > MAX_CONTEXT_CHARS:
            return None
        try:
            stored = json.loads(stored)
        except ValueError:
            return None
    if isinstance(stored, dict) and all(isinstance(k, str) and isinstance(v, str)
                                        for k, v in stored.items()):
        return stored
    return None


@contextlib.contextmanager
def attempt_span(task: str, queue: str, job_id: int, attempt: int,
                 stored_context: Any = None) -> Iterator[None]:
    """The span one attempt of a job runs in (the current span inside, so the handler's own
    spans are its children; a sync handler's thread gets it with the copied contextvars). An
    exception leaving it is recorded on the span, which is marked as an error; a Snooze or a
    JobCancelled (a request and a cancel, not failures) only says so in ``skiplock.outcome``."""
    api = _opentelemetry()
    if api is None:
        yield
        return
    trace, propagate, Context = api
    carrier = _carrier(stored_context)
    parent = propagate.extract(carrier) if carrier else None
    producer = trace.get_current_span(parent).get_span_context() if parent else None
    links = []
    if producer is not None and producer.is_valid and attempt > 1:
        links.append(trace.Link(producer, {"skiplock.link": "enqueued by"}))
        parent = None  # a retry: a trace of its own, linked
    elif producer is None or not producer.is_valid:
        parent = None
    # An empty Context: a root span, whatever span the worker's loop happens to be in.
    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(
        f"{task} process",
        context=parent if parent is not None else Context(),
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes={
            "skiplock.task": task,
            "skiplock.queue": queue,
            "skiplock.job_id": job_id,
            "skiplock.attempt": attempt,
            "messaging.system": "skiplock",
            "messaging.operation.type": "process",
            "messaging.destination.name": queue,
            "messaging.message.id": str(job_id),
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except (Snooze, JobCancelled) as exc:
            span.set_attribute("skiplock.outcome",
                               "snoozed" if isinstance(exc, Snooze) else "cancelled")
            raise
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}"))
            raise
