"""Tracing (the otel extra) with the OpenTelemetry SDK's in-memory exporter: the producer's
trace context is stored with each job, the worker runs each attempt in a span with the task,
queue, job id and attempt, and a stored context makes the first attempt's span the producer's
child and a retry's span a linked root. Nothing is stored without a current span.

The scenario runs in a process of its own: a TracerProvider is global to a process and must
not trace the rest of the test session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = r'''
import asyncio, json, sys
import psycopg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from skiplock import AsyncClient, Client, tracing
from tests.integration.test_client_support import running_worker
from tests.tasks import app

url = sys.argv[1]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("test")
out = {}

paths = []


def spy(db):
    """Which insert path enqueue_many took (the real one runs)."""
    for name in ("enqueue_copy", "enqueue_unnest"):
        def call(jobs, _real=getattr(db, name), _name=name):
            paths.append(_name)
            return _real(jobs)
        setattr(db, name, call)


with Client(url) as client:
    spy(client.db)
    with tracer.start_as_current_span("request") as request:
        out["request"] = [format(request.get_span_context().trace_id, "032x"),
                          format(request.get_span_context().span_id, "016x")]
        out["add"] = client.enqueue("add", {"a": 1, "b": 2})
        out["flaky"] = client.enqueue("flaky", {"fail_times": 1})
        out["many"] = client.enqueue_many([{"task": "add", "args": {"a": 2, "b": 2}}])

        async def produce():
            async with AsyncClient(url) as ac:
                spy(ac.db)
                return (await ac.enqueue("add", {"a": 3, "b": 3}),
                        await ac.enqueue_many([{"task": "add", "args": {"a": 5, "b": 5}}]))

        out["async"], out["async_many"] = asyncio.run(produce())
        out["paths"] = paths
    out["untraced"] = client.enqueue("add", {"a": 4, "b": 4})
    with psycopg.connect(url, options="-c search_path=skiplock") as conn:
        out["stored"] = {str(i): tc for i, tc in conn.execute(
            "SELECT id, trace_context FROM jobs ORDER BY id")}
    exporter.clear()  # the producer's own span is done: only the worker's spans from here
    with running_worker(app, url):
        for name in ("add", "flaky", "async", "untraced"):
            client.wait(out[name], timeout=60)
    worker_spans = exporter.get_finished_spans()

    # What the executor does with a job's stored context (tracing.attempt_span), for the
    # first attempt and for a retry of the "add" job.
    exporter.clear()
    stored = out["stored"][str(out["add"])]
    for attempt in (1, 2):
        with tracing.attempt_span("add", "default", out["add"], attempt, stored):
            pass
    with tracing.attempt_span("add", "default", 1, 1, "not json"):
        pass
    linked_spans = exporter.get_finished_spans()
    # a snooze and a cancel leave the span as they do the job: not failed
    exporter.clear()
    from skiplock.errors import JobCancelled, Snooze
    for exc in (Snooze(60), JobCancelled("stop")):
        try:
            with tracing.attempt_span("add", "default", 1, 1):
                raise exc
        except type(exc):
            pass
    request_spans = exporter.get_finished_spans()


def describe(span):
    return {
        "name": span.name,
        "trace_id": format(span.context.trace_id, "032x"),
        "span_id": format(span.context.span_id, "016x"),
        "parent": format(span.parent.span_id, "016x") if span.parent else None,
        "links": [[format(l.context.trace_id, "032x"), format(l.context.span_id, "016x")]
                  for l in span.links],
        "attributes": dict(span.attributes),
        "status": span.status.status_code.name,
        "kind": span.kind.name,
    }

out["worker_spans"] = [describe(s) for s in worker_spans]
out["linked_spans"] = [describe(s) for s in linked_spans]
out["request_spans"] = [describe(s) for s in request_spans]
print(json.dumps(out))
'''


def _run(database_url: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    done = subprocess.run([sys.executable, "-c", SCENARIO, database_url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_trace_goes_from_producer_to_each_attempt(database_url: str) -> None:
    out = _run(database_url)
    trace_id, span_id = out["request"]
    stored = out["stored"]
    # the producer's context, stored with every job enqueued in its span (either client)
    for name in ("add", "flaky", "async"):
        assert stored[str(out[name])]["traceparent"].startswith(f"00-{trace_id}-{span_id}-"), name
    assert out["many"] == out["async_many"] == 1
    assert len([tc for tc in stored.values() if tc is not None]) == 5  # enqueue_many's too
    # ...and inside a span enqueue_many still takes COPY (the context is one of its columns)
    assert out["paths"] == ["enqueue_copy", "enqueue_copy"]
    assert stored[str(out["untraced"])] is None  # no current span, nothing stored

    # a span per attempt: add once, flaky twice (its first attempt failed)
    spans = out["worker_spans"]
    by_job: dict[int, list[dict[str, Any]]] = {}
    for s in spans:
        assert s["kind"] == "CONSUMER"
        by_job.setdefault(s["attributes"]["skiplock.job_id"], []).append(s)
    flaky = sorted(by_job[out["flaky"]], key=lambda s: s["attributes"]["skiplock.attempt"])
    assert [s["attributes"]["skiplock.attempt"] for s in flaky] == [1, 2]
    assert [s["status"] for s in flaky] == ["ERROR", "UNSET"]
    assert flaky[0]["name"] == "flaky process"
    assert flaky[0]["attributes"]["skiplock.task"] == "flaky"
    assert flaky[0]["attributes"]["skiplock.queue"] == "default"
    assert len(by_job[out["add"]]) == len(by_job[out["untraced"]]) == 1
    # the real worker's spans: the claim brings each job's stored context along
    for name in ("add", "async"):
        (run,) = by_job[out[name]]
        assert (run["trace_id"], run["parent"], run["links"]) == (trace_id, span_id, []), name
    assert (flaky[0]["trace_id"], flaky[0]["parent"]) == (trace_id, span_id)
    assert flaky[1]["parent"] is None and flaky[1]["links"] == [[trace_id, span_id]]
    (untraced,) = by_job[out["untraced"]]
    assert untraced["parent"] is None and untraced["links"] == []
    assert untraced["trace_id"] != trace_id

    # the executor's span from the stored context: attempt 1 a child of the producer's span,
    # a retry a root of its own linked to it; a context that is not one is ignored
    snoozed, cancelled = out["request_spans"]
    assert [snoozed["status"], cancelled["status"]] == ["UNSET", "UNSET"]
    assert snoozed["attributes"]["skiplock.outcome"] == "snoozed"
    assert cancelled["attributes"]["skiplock.outcome"] == "cancelled"
    first, retry, junk = out["linked_spans"]
    assert (first["trace_id"], first["parent"], first["links"]) == (trace_id, span_id, [])
    assert retry["parent"] is None and retry["trace_id"] != trace_id
    assert retry["links"] == [[trace_id, span_id]]
    assert junk["parent"] is None and junk["links"] == [] and junk["trace_id"] != trace_id
    assert first["attributes"] == {
        "skiplock.task": "add", "skiplock.queue": "default", "skiplock.job_id": out["add"],
        "skiplock.attempt": 1, "messaging.system": "skiplock",
        "messaging.operation.type": "process", "messaging.destination.name": "default",
        "messaging.message.id": str(out["add"]),
    }


def test_without_opentelemetry_nothing_happens(database_url: str) -> None:
    """The otel extra absent (its import fails): enqueue stores no context, a worker runs."""
    script = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def no_otel(name, *a, **k):\n"
        "    if name.startswith('opentelemetry'): raise ImportError(name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = no_otel\n"
        "from skiplock import Client, tracing\n"
        "from tests.integration.test_client_support import running_worker\n"
        "from tests.tasks import app\n"
        "assert not tracing.active() and tracing.current_context() is None\n"
        "with tracing.attempt_span('add', 'default', 1, 1, None):\n"
        "    pass\n"
        "with Client(sys.argv[1]) as c:\n"
        "    j = c.enqueue('add', {'a': 1, 'b': 2})\n"
        "    with running_worker(app, sys.argv[1]):\n"
        "        print(c.wait(j, timeout=60))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
    done = subprocess.run([sys.executable, "-c", script, database_url], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "{'sum': 3}"
