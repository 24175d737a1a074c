"""Invalid payload / task not found: rejected at enqueue when the catalogue knows the task;
a job that still reaches a worker that cannot run it goes dead at once, with its error message,
without retries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from skiplock import Client
from skiplock.errors import InvalidArguments, UnknownTask
from tests.conftest import ROOT
from tests.integration.failures.conftest import WORKER_ARGS, wait_workers_ready
from tests.support.chaos import audit, state_of
from tests.support.invariants import assert_invariants
from tests.support.waits import wait_until


def test_bad_task_name_and_bad_payload_are_rejected_at_enqueue(database_url, sql,
                                                               spawn_worker) -> None:
    spawn_worker("tests.tasks:app", *WORKER_ARGS, name="catalogue")
    wait_workers_ready(sql, 1)  # the worker has registered its tasks: the catalogue exists
    with Client(database_url) as c:
        with pytest.raises(UnknownTask, match=r"unknown task 'no_such_task'.*registered .*add"):
            c.enqueue("no_such_task", {})
        with pytest.raises(InvalidArguments, match=r"'a' must be integer, got string"):
            c.enqueue("add", {"a": "one", "b": 2})
        with pytest.raises(InvalidArguments, match=r"missing required 'b'"):
            c.enqueue("add", {"a": 1})
        with pytest.raises(InvalidArguments, match=r"unexpected 'c'"):
            c.enqueue("add", {"a": 1, "b": 2, "c": 3})
        with pytest.raises(InvalidArguments, match=r"JSON-serialisable"):
            c.enqueue("add", {"a": object(), "b": 2})
        with pytest.raises(InvalidArguments, match=r"job #1: .*missing required 'b'"):
            c.enqueue_many([{"task": "add", "args": {"a": 1, "b": 2}},
                            {"task": "add", "args": {"a": 1}}])
    # The command line says the same, and exits non-zero.
    cli = subprocess.run([sys.executable, "-m", "skiplock", "--database-url", database_url,
                          "enqueue", "no_such_task"], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", "PATH": "/usr/bin:/bin"})
    assert cli.returncode == 2 and "unknown task 'no_such_task'" in cli.stderr, cli
    assert sql("SELECT count(*) FROM jobs") == [(0,)], "a rejected job was inserted"


def test_job_unknown_to_the_worker_goes_dead_at_once(database_url, audited, spawn_worker) -> None:
    sql = audited
    # No grace: no other live worker can run these, so they are dead at once.
    w = spawn_worker("tests.tasks:app", *WORKER_ARGS, "--unrunnable-grace", "0", name="runner")
    wait_workers_ready(sql, 1)
    with Client(database_url, validate=False) as c:  # a producer that skips the catalogue
        unknown = c.enqueue("no_such_task", {"x": 1})
        bad_args = c.enqueue("add", {"a": 1})
        wrong_type = c.enqueue("add", {"a": 1, "b": 2, "c": 3})
        ids = [unknown, bad_args, wrong_type]
        wait_until(lambda: all(state_of(sql, i)[0] == "dead" for i in ids), 30, "all three dead")
        rows = {i: c.get_job(i) for i in ids}
    assert rows[unknown]["last_error"].startswith("unknown task 'no_such_task': this worker runs")
    assert "arguments do not fit task 'add'" in rows[bad_args]["last_error"]
    assert "b" in rows[bad_args]["last_error"]
    assert "arguments do not fit task 'add'" in rows[wrong_type]["last_error"]
    for i in ids:
        r = rows[i]
        assert r["attempts"] == 1 and r["max_attempts"] == 5, r   # attempts were left: no retry
        assert len(r["errors"]) == 1
        assert [t[1] for t in audit(sql, i)] == ["queued", "running", "dead"]
    # The worker goes on with other work and never picks the dead jobs up again.
    with Client(database_url) as c:
        later = c.enqueue("add", {"a": 1, "b": 2})
    wait_until(lambda: state_of(sql, later)[0] == "succeeded", 30, "a valid job to run")
    for i in ids:
        assert [t[1] for t in audit(sql, i)] == ["queued", "running", "dead"]
    assert_invariants(sql, [*ids, later],
                      expected_states={unknown: "dead", bad_args: "dead", wrong_type: "dead",
                                       later: "succeeded"})
    w.terminate()
