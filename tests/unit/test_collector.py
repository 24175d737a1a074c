"""The collector settings `skiplock worker` runs with (skiplock/collector.py), in a process of
their own: a test must not change the collector of the test run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import gc, json
from skiplock import collector
before = (gc.get_freeze_count(), gc.get_threshold())
collector.settle_for_work()
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "threshold": gc.get_threshold()}))
"""


def test_settle_for_work_freezes_start_up_and_spaces_young_passes() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout
    got = json.loads(out)
    assert got["before"][0] == 0
    assert got["frozen"] > 1000  # the interpreter's and skiplock's own objects, at least
    default_young, middle, old = got["before"][1]
    assert got["threshold"] == [10_000, middle, old]
    assert default_young < 10_000


CLI_SCRIPT = """
import gc, os, sys
from skiplock import cli, eventloop
print("imported", gc.get_freeze_count(), gc.get_threshold()[0], flush=True)

def stop_here(main, choice):
    main.close()  # the worker's coroutine, never started
    print("running", gc.get_freeze_count(), gc.get_threshold()[0], flush=True)
    os._exit(0)

eventloop.run = stop_here
sys.argv = ["skiplock", "worker", "skiplock.demo_tasks:app"]
cli.main()
"""


def test_the_cli_worker_settles_the_collector_before_it_runs() -> None:
    """`skiplock worker` settles it once start-up is done, before its loop runs; importing
    skiplock does not (a program that embeds a Worker keeps its own settings)."""
    env = {**os.environ, "SKIPLOCK_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    out = subprocess.run([sys.executable, "-c", CLI_SCRIPT], capture_output=True, text=True,
                         env=env, timeout=60)
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines.get("imported") is not None, out.stderr
    frozen, young = map(int, lines["imported"].split())
    assert frozen == 0 and young < 10_000
    frozen, young = map(int, lines["running"].split())
    assert frozen > 1000 and young == 10_000
