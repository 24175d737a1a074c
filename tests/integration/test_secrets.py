"""No password in any output of the CLI or a worker, whatever the database URL looks like: a
table of malformed URLs and DSNs run through real processes against a real server, and random
hostile passwords through the CLI (hypothesis)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, WorkerProcess
from tests.integration.secret_urls import MARK, Case, assert_no_password, cases
from tests.support.pgserver import PgServer, free_port
from tests.support.waits import wait_until

ENV = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'worker'}"}
# What each outcome makes the CLI say, exactly at the start of its error line.
SAYS = {
    "malformed": "skiplock: error: the database URL (",
    "unreachable": "skiplock: error: queue stats: database at ",
}


def table(pg: PgServer) -> list[Case]:
    # the template database is migrated and never written to by these reads
    return cases(pg.port, "skiplock_template")


def case_ids() -> list[str]:
    return [c.name for c in cases(1, "x")]


def cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "skiplock", *args],
                          env={**ENV, "SKIPLOCK_DATABASE_URL": url, "SKIPLOCK_CONNECT_TIMEOUT":
                               "1", **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("index", range(len(case_ids())), ids=case_ids())
def test_cli_prints_no_password(pg: PgServer, index: int) -> None:
    case = table(pg)[index]
    out = cli(case.url, "--log-level", "DEBUG", "stats")
    assert_no_password(case, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    if case.outcome == "ok":
        assert out.returncode == 0, out
        assert out.stdout.split()[0] == "queue", out.stdout
    else:
        assert out.returncode == 2, out
        # the error is the last line (psycopg_pool's scrubbed warnings may come first)
        assert out.stderr.splitlines()[-1].startswith(SAYS[case.outcome]), out.stderr
        assert ("is malformed" if case.outcome == "malformed" else "unreachable") in out.stderr
    # the same URL as a flag, not the environment
    # (the same 1 s connect timeout: the default 5 s would only make an unreachable case wait)
    flag = subprocess.run([sys.executable, "-m", "skiplock", "--database-url", case.url,
                           "stats"], env={**ENV, "SKIPLOCK_CONNECT_TIMEOUT": "1"},
                          capture_output=True, text=True, timeout=60)
    assert flag.returncode == out.returncode, flag
    assert_no_password(case, flag.stdout, flag.stderr)


@pytest.mark.parametrize("index", range(len(case_ids())), ids=case_ids())
def test_worker_logs_no_password(pg: PgServer, database_url: str, index: int) -> None:
    # its own copy of the template: a worker that starts registers its tasks, and databases
    # made from the template later must not inherit them
    case = cases(pg.port, database_url.rsplit("/", 1)[1])[index]
    worker = WorkerProcess(case.url, "tests.tasks:app", "--concurrency", "1",
                           env={"SKIPLOCK_CONNECT_TIMEOUT": "1", "SKIPLOCK_LOG_LEVEL": "DEBUG"})
    try:
        if case.outcome == "malformed":
            assert worker.proc.wait(timeout=30) == 2
            assert "skiplock: error: the database URL (" in worker.output()
        else:
            # unreachable: it keeps retrying and says so; ok: it runs
            word = "unreachable" if case.outcome == "unreachable" else "starting"
            wait_until(lambda: word in worker.output(), timeout=30,
                       message=f"the worker to say {word!r}")
            time.sleep(1.5)  # a few retries, and psycopg_pool's own warnings
            assert worker.terminate() == 0
        assert_no_password(case, worker.output())
        assert "Traceback" not in worker.output()
    finally:
        worker.close()


HOSTILE = st.text(alphabet=st.sampled_from("%@/: ?#&='\"\\[]abcXYZ019é中"), min_size=1,
                  max_size=20)


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=HOSTILE, encoded=st.booleans(), as_dsn=st.booleans())
def test_random_hostile_passwords_never_reach_the_cli_output(pg: PgServer, prefix: str,
                                                             encoded: bool,
                                                             as_dsn: bool) -> None:
    password = prefix + MARK
    if as_dsn:
        quoted = password.replace("\\", "\\\\").replace("'", "\\'")
        url = (f"host=127.0.0.1 port={free_port()} user=postgres password="
               + (f"'{quoted}'" if encoded else password))
    else:
        url = (f"postgresql://postgres:{quote(password, safe='') if encoded else password}"
               f"@127.0.0.1:{free_port()}/skiplock_template")
    # every URL here is malformed or points at a closed port: the pool's wait for a
    # connection is all the timeout changes, and no output depends on its length
    out = cli(url, "stats", SKIPLOCK_CONNECT_TIMEOUT="0.5")
    assert out.returncode == 2, out
    case = Case("random", url, password, "?")
    assert_no_password(case, out.stdout, out.stderr)
    assert out.stderr.splitlines()[-1].startswith("skiplock: error: "), out.stderr
