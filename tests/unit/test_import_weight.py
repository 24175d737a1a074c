"""What `skiplock worker MODULE:APP` imports before its first claim: only the worker's own
parts. The clients (the async one with its pool), the producer's tracing (OpenTelemetry), the
waiting machinery, the inspection queries, the probes server, the demo and the HTTP API's
FastAPI/uvicorn are each a few to a few hundred milliseconds of CPU per worker process
started, and none of them runs in a worker that does not use them.

A fact test (which modules are loaded), not a timing one; each check runs in a fresh
interpreter, since this test session has imported everything already."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# What cmd_worker does up to `eventloop.run(worker.run(...))`, without a database (nothing
# here connects): parse the command line, the settings, the app module (which imports
# `skiplock` for App), the Worker, the loop choice.
WORKER_START = """
import json, sys
from skiplock.cli import build_parser
from skiplock.cli_settings import settings_from_args
from skiplock.app import load_app
from skiplock.worker import Worker
from skiplock import eventloop
args = build_parser().parse_args(["worker", "tests.tasks:app", "--concurrency", "200"])
settings = settings_from_args(args)
Worker.from_settings(load_app(args.app), settings, concurrency=args.concurrency)
eventloop.loop_factory(settings.event_loop)
print(json.dumps(sorted(sys.modules)))
"""

# Kept off the worker's start (a prefix also matches its submodules).
NOT_LOADED = (
    "opentelemetry",
    "skiplock.async_client",
    "skiplock.adb",
    "skiplock.client",
    "skiplock.preparation",
    "skiplock.waiting",
    "skiplock.inspection",
    "skiplock.transitions",
    "skiplock.demo",
    "skiplock.demo_tasks",
    "skiplock.worker.probes",
    "skiplock.api.app",
    "fastapi",
    "uvicorn",
    "starlette",
)


def loaded(script: str, **env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("SKIPLOCK_", "OTEL_"))}
    environment.update(PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'worker'}",
                       SKIPLOCK_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", **env)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    modules: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return modules


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules
            if any(m == name or m.startswith(name + ".") for name in NOT_LOADED)]


def test_worker_start_imports_only_the_worker() -> None:
    modules = loaded(WORKER_START)
    assert heavy(modules) == []
    # the check sees what it should: the worker itself and the database driver are loaded
    assert {"skiplock.worker.core", "skiplock.db", "psycopg", "skiplock.tracing"} <= set(modules)


def test_importing_skiplock_for_app_loads_the_app_half_only() -> None:
    """An app module's `from skiplock import App` (what every worker imports first)."""
    modules = loaded("import json, sys\nfrom skiplock import App\n"
                     "print(json.dumps(sorted(sys.modules)))")
    assert heavy(modules) == []
    assert "skiplock.worker" not in modules and "skiplock.settings" not in modules


@pytest.mark.parametrize("name", ["Client", "AsyncClient", "Worker", "WaitTimeout", "Settings"])
def test_the_lazy_names_still_import(name: str) -> None:
    """`skiplock.X` and `from skiplock import X` work for every exported name, loading X's
    module on first use."""
    import skiplock

    assert name in dir(skiplock)
    assert getattr(skiplock, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        skiplock.Nope


def test_every_exported_name_resolves() -> None:
    import skiplock

    for name in skiplock.__all__:
        assert getattr(skiplock, name) is not None, name


def test_tracing_imports_opentelemetry_once_something_else_did() -> None:
    """A process whose code imported OpenTelemetry (to set a TracerProvider) has tracing
    working as before: active() then sees the provider."""
    script = (
        "import json, sys\n"
        "from skiplock import tracing\n"
        "assert not tracing.active() and 'opentelemetry' not in sys.modules\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "assert not tracing.active()\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "assert tracing.active()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert "opentelemetry.propagate" in loaded(script)
