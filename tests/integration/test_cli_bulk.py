"""`skiplock jobs cancel|retry|delete`: the count, the confirmation (asked on a terminal, refused
without --yes elsewhere), batches with progress and a summary, against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from tests.conftest import ROOT

Sql = Callable[..., list[tuple[Any, ...]]]
ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", "PATH": "/usr/bin:/bin"}


def cli(database_url: str, *args: str, stdin: Any = subprocess.DEVNULL,
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", "--database-url", database_url,
                           *args], capture_output=True, text=True, timeout=60, env=ENV,
                          stdin=stdin)


def seed(sql: Sql) -> dict[str, set[int]]:
    def insert(queue: str, state: str, n: int) -> set[int]:
        return {int(r[0]) for r in sql(
            "INSERT INTO jobs (queue, task, state, attempts, max_attempts, finished_at,"
            " locked_by, locked_until) SELECT %s, 'poison', %s::job_state, 1, 1,"
            " CASE WHEN %s IN ('dead', 'succeeded', 'cancelled') THEN now() END,"
            " CASE WHEN %s = 'running' THEN 'pod-x:1:w' END,"
            " CASE WHEN %s = 'running' THEN now() + interval '1 hour' END"
            " FROM generate_series(1, %s) RETURNING id", queue, state, state, state, state, n)}

    return {"dead": insert("q", "dead", 30), "dead other": insert("other", "dead", 4),
            "queued": insert("q", "queued", 5), "running": insert("q", "running", 2)}


def states(sql: Sql) -> dict[int, str]:
    return {int(r[0]): str(r[1]) for r in sql("SELECT id, state::text FROM jobs")}


def test_delete_dead_jobs_with_yes_in_batches(database_url: str, sql: Sql) -> None:
    s = seed(sql)
    out = cli(database_url, "jobs", "delete", "--state", "dead", "--queue", "q", "--yes",
              "--batch", "7")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "30 job(s) match --state=dead --queue=q"
    progress = [line for line in lines if line.startswith("  ")]
    assert len(progress) == 5  # ceil(30 / 7) batches, each reporting done so far / matched
    assert progress[0].strip() == "7/30: 7 deleted, 0 skipped"
    assert progress[-1].strip() == "30/30: 30 deleted, 0 skipped"
    assert lines[-1] == "30 job(s) deleted"
    left = states(sql)
    assert not set(left) & s["dead"]
    assert set(left) == s["dead other"] | s["queued"] | s["running"]


def test_the_filters_may_come_before_the_action(database_url: str, sql: Sql) -> None:
    s = seed(sql)
    out = cli(database_url, "jobs", "--state", "dead", "--queue", "other", "retry", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "4 job(s) queued again"
    assert {i for i, st in states(sql).items() if st == "queued"} == s["dead other"] | s[
        "queued"]


def test_without_a_terminal_it_refuses_unless_yes(database_url: str, sql: Sql) -> None:
    seed(sql)
    before = states(sql)
    for stdin in (subprocess.DEVNULL, subprocess.PIPE):
        out = cli(database_url, "jobs", "delete", "--state", "dead", stdin=stdin)
        assert out.returncode == 2, out.stdout
        assert "34 job(s) match" in out.stdout
        assert "not a terminal" in out.stderr and "--yes" in out.stderr, out.stderr
    assert states(sql) == before


def test_on_a_terminal_it_asks_and_only_yes_acts(database_url: str, sql: Sql) -> None:
    s = seed(sql)

    def answering(answer: str) -> tuple[int, str]:
        controller, terminal = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "skiplock", "--database-url", database_url, "jobs",
                 "cancel", "--queue", "q", "--state", "queued"],
                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=ENV)
            os.write(controller, answer.encode() + b"\n")
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            os.close(controller)
            os.close(terminal)
        return proc.returncode, stdout + stderr

    code, said = answering("n")
    assert code == 1 and "cancel 5 job(s)? [y/N]" in said and "nothing changed" in said, said
    assert {i for i, st in states(sql).items() if st == "queued"} == s["queued"]
    code, said = answering("y")
    assert code == 0 and "5 job(s) cancelled or asked to stop" in said, said
    assert {i for i, st in states(sql).items() if st == "cancelled"} == s["queued"]
    reasons = {str(r[0]) for r in sql("SELECT DISTINCT cancel_reason FROM jobs"
                                      " WHERE cancel_reason IS NOT NULL")}
    assert len(reasons) == 1 and reasons.pop().startswith("cli "), reasons


def test_cancel_reports_running_jobs_asked_and_skips_finished(database_url: str,
                                                              sql: Sql) -> None:
    s = seed(sql)
    out = cli(database_url, "jobs", "cancel", "--queue", "q", "--yes")
    assert out.returncode == 0, out.stderr
    # 5 queued cancelled, 2 running asked to stop; the 30 dead ones cannot be cancelled
    assert out.stdout.splitlines()[-1].startswith(
        "7 job(s) cancelled or asked to stop; 30 skipped (already finished or asked to stop")
    running = {int(r[0]) for r in sql("SELECT id FROM jobs WHERE state = 'running'"
                                      " AND cancel_requested_at IS NOT NULL")}
    assert running == s["running"]


def test_no_filter_needs_all_and_bad_batches_are_refused(database_url: str, sql: Sql) -> None:
    s = seed(sql)
    before = states(sql)
    out = cli(database_url, "jobs", "delete", "--yes")
    assert out.returncode == 2 and "needs a filter" in out.stderr and "--all" in out.stderr
    out = cli(database_url, "jobs", "delete", "--all", "--queue", "q", "--yes")
    assert out.returncode == 2 and "--all means every job" in out.stderr
    for bad in ("0", "1001", "many"):
        out = cli(database_url, "jobs", "delete", "--state", "dead", "--yes", "--batch", bad)
        assert out.returncode == 2 and "--batch" in out.stderr, out.stderr
    out = cli(database_url, "jobs", "retry", "--queue", "nowhere", "--yes")
    assert out.returncode == 0 and out.stdout.splitlines() == [
        "0 job(s) match --queue=nowhere", "nothing to do"]
    assert states(sql) == before
    out = cli(database_url, "jobs", "delete", "--all", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "41 job(s) match (every job)"
    assert set(states(sql)) == s["running"]  # never a running job


def test_listing_jobs_keeps_its_filters(database_url: str, sql: Sql) -> None:
    s = seed(sql)
    out = cli(database_url, "jobs", "--state", "dead", "--queue", "other", "--json")
    assert out.returncode == 0, out.stderr
    assert {j["id"] for j in json.loads(out.stdout)} == s["dead other"]
