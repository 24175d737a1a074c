"""`skiplock retry` and `skiplock cancel` of one job against a real PostgreSQL: what each does,
the words and exit code for a job that does not exist or is in the wrong state (the same words
the HTTP API answers with: skiplock.transitions), and settings errors that say how to fix them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import ROOT

Sql = Callable[..., list[tuple[Any, ...]]]
ENV = {"PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}", "PATH": "/usr/bin:/bin"}


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", *args], capture_output=True,
                          text=True, timeout=60, env={**ENV, **env},
                          stdin=subprocess.DEVNULL)


def job(sql: Sql, state: str, **columns: Any) -> int:
    names = ["queue", "task", "state", "attempts", "max_attempts", "finished_at", "locked_by",
             "locked_until", *columns]
    running = state == "running"
    values = ["q", "t", state, 1, 1, None if state in ("queued", "running") else "now",
              "pod-x:1:w" if running else None, "2999-01-01" if running else None,
              *columns.values()]
    marks = ", ".join(["%s::job_state" if n == "state" else "%s" for n in names])
    return int(sql(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({marks}) RETURNING id",
                   *values)[0][0])


def state(sql: Sql, job_id: int) -> tuple[Any, ...]:
    return sql("SELECT state::text, cancel_reason FROM jobs WHERE id = %s", job_id)[0]


def test_retry_queues_a_dead_job_again(database_url: str, sql: Sql) -> None:
    dead = job(sql, "dead")
    done = cli("--database-url", database_url, "retry", str(dead))
    assert (done.returncode, done.stdout, done.stderr) == (0, f"job {dead} queued again\n", "")
    assert state(sql, dead)[0] == "queued"


@pytest.mark.parametrize("current", ["queued", "running", "succeeded"])
def test_retry_of_a_job_that_is_not_finished_badly_changes_nothing(
        database_url: str, sql: Sql, current: str) -> None:
    j = job(sql, current)
    done = cli("--database-url", database_url, "retry", str(j))
    assert done.returncode == 2, done
    assert done.stderr == (f"skiplock: error: job {j} is {current}; only dead or cancelled "
                           "jobs can be retried\n")
    assert state(sql, j) == (current, None)


@pytest.mark.parametrize("action", ["retry", "cancel"])
def test_a_job_that_does_not_exist(database_url: str, sql: Sql, action: str) -> None:
    done = cli("--database-url", database_url, action, "999999")
    assert done.returncode == 2, done
    assert done.stderr == ("skiplock: error: job 999999 does not exist (it may have been "
                           "pruned)\n")
    assert done.stdout == ""


def test_cancel_a_queued_job_then_again(database_url: str, sql: Sql) -> None:
    j = job(sql, "queued")
    done = cli("--database-url", database_url, "cancel", str(j), "--reason", "wrong order")
    assert (done.returncode, done.stdout) == (0, f"job {j} cancelled\n"), done
    assert state(sql, j)[0] == "cancelled"
    again = cli("--database-url", database_url, "cancel", str(j))
    assert again.returncode == 2
    assert again.stderr == (f"skiplock: error: job {j} is cancelled; only queued or running "
                            "jobs can be cancelled\n")


def test_cancel_a_running_job_asks_its_worker_once(database_url: str, sql: Sql) -> None:
    j = job(sql, "running")
    done = cli("--database-url", database_url, "cancel", str(j), "--reason", "stuck on io")
    assert done.returncode == 0, done
    assert done.stdout.startswith(f"job {j} is running: cancel requested")
    current, reason = state(sql, j)
    # Who asked (cli user@host) and why, in the job's record.
    assert current == "running" and reason.startswith("cli ") and reason.endswith(
        " (stuck on io)")
    again = cli("--database-url", database_url, "cancel", str(j))
    assert again.returncode == 2
    assert again.stderr == (f"skiplock: error: job {j}: a cancel was already requested "
                            f"({reason}); its worker is stopping it\n")
    assert state(sql, j) == ("running", reason)  # the first request is kept


def test_no_database_url_says_how_to_give_one() -> None:
    done = cli("stats")
    assert done.returncode == 2
    assert "no database URL: set SKIPLOCK_DATABASE_URL" in done.stderr
    assert "--database-url" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("flag", "value", "named"), [
    ("--port", "70000", "SKIPLOCK_API_PORT (--port): Input should be less than or equal to "
                        "65535"),
    ("--port", "-1", "SKIPLOCK_API_PORT (--port): Input should be greater than or equal to 0"),
])
def test_skiplock_api_refuses_a_bad_flag_by_name(database_url: str, flag: str, value: str,
                                                 named: str) -> None:
    done = cli("--database-url", database_url, "api", flag, value)
    assert done.returncode == 2, done
    assert done.stderr == f"skiplock: error: {named}\n"


def test_skiplock_api_names_a_bad_environment_setting_and_its_flag(database_url: str) -> None:
    done = cli("--database-url", database_url, "api", SKIPLOCK_API_PORT="http")
    assert done.returncode == 2, done
    assert done.stderr.startswith("skiplock: error: SKIPLOCK_API_PORT (--port): ")
    assert "http" not in done.stderr.removeprefix("skiplock: error: SKIPLOCK_API_PORT")


def test_skiplock_api_with_a_bad_schema_names_it(database_url: str) -> None:
    done = cli("--database-url", database_url, "--schema", "x -c statement_timeout=0", "api")
    assert done.returncode == 2, done
    assert done.stderr.startswith("skiplock: error: SKIPLOCK_SCHEMA (--schema): ")
