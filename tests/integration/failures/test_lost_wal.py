"""WAL lost for real: acknowledged commits that never reached the disk, as after a power cut.

A power cut loses what the server acknowledged but had not flushed. Here the server runs with
``wal_writer_flush_after = 0`` (the WAL writer flushes whatever it writes, so every byte of WAL
is either flushed or still in shared memory, never written-but-unflushed) and
``wal_writer_delay = 10s`` (it wakes rarely); then every server process is frozen and
SIGKILLed at once. What is lost is then exactly what a power cut at that instant would lose:
the WAL still in shared memory, i.e. the commits made with ``synchronous_commit=off`` since
the last flush. Data pages need no simulating: recovery rebuilds them from the WAL (full-page
writes cover the torn ones a real cut could leave). No FUSE filesystem or device-mapper target
is needed, and none is available here (LazyFS is not packaged; /dev/mapper is absent).

The commits at risk are the workers' claims (and registry beats): the claim connection does not
wait for the flush (skiplock.worker.core). Enqueues, outcomes and lease renewals do, and an
enqueue that returned an id must survive. The workers are frozen (SIGSTOP) while their
handlers run, so no durable write of theirs flushes the claims before the cut; after the
restart the test looks before they go on, then lets them finish: each lost claim's job is
claimed and run again, the first run's outcome is fenced off, one result per job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from skiplock import Client
from tests.conftest import WorkerProcess
from tests.support.chaos import executions, read_marker
from tests.support.invariants import assert_invariants
from tests.support.pgserver import PgServer
from tests.support.waits import wait_until

JOBS = 8
TRIES = 3
# long lease: no renewal (a durable write, flushing the claims) while the handlers run
WORKER_ARGS = ("--lease-seconds", "60", "--poll-interval", "0.2", "--shutdown-grace", "5",
               "--concurrency", "4")


@pytest.fixture
def server() -> Iterator[PgServer]:
    srv = PgServer()
    srv.init()
    with open(srv.datadir / "postgresql.conf", "a") as conf:
        conf.write("\nwal_writer_delay = 10s\nwal_writer_flush_after = 0\nautovacuum = off\n")
    srv.start()
    try:
        with srv.admin() as admin:
            admin.execute("CREATE DATABASE app")
        yield srv
    finally:
        srv.destroy()


def power_cut(srv: PgServer) -> None:
    """Freeze every server process, then SIGKILL them all: none writes anything after the
    instant of the cut (one killed first could make another flush on its way out)."""
    pid = srv.postmaster_pid()
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                              check=False).stdout.split()
    pids = [pid, *map(int, children)]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGSTOP)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    wait_until(lambda: not _alive(pid), 30, "the postmaster gone and reaped")
    with contextlib.suppress(FileNotFoundError):
        (srv.datadir / "postmaster.pid").unlink()


def _alive(pid: int) -> bool:
    # a zombie counts: the new postmaster takes one for a live owner of the old lock files,
    # so wait until init has reaped it
    return Path(f"/proc/{pid}").exists()


def _sql(url: str) -> Any:
    def run(query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True, connect_timeout=5,
                             options="-c search_path=skiplock,public") as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []
    return run


def test_claims_lost_with_the_wal_are_run_again_and_nothing_acknowledged_is_lost(
        server: PgServer, tmp_path: Path) -> None:
    url = server.url("app")
    sql = _sql(url)
    with Client(url) as c:
        c.migrate()
    workers = [WorkerProcess(url, "tests.tasks:app", *WORKER_ARGS, name=f"walloss-{i}")
               for i in range(2)]
    report: list[str] = []
    try:
        wait_until(lambda: sql("SELECT count(*) FROM workers")[0][0] == 2, 60,
                   "2 workers registered")
        for attempt in range(1, TRIES + 1):
            marker = tmp_path / f"runs-{attempt}.txt"
            # one statement, one durable commit: every claim of these jobs comes after it (one
            # enqueue each would flush the claims made between them)
            with Client(url, validate=False) as c:
                assert c.enqueue_many(
                    {"task": "tracked", "args": {"marker": str(marker), "seconds": 1.5}}
                    for _ in range(JOBS)) == JOBS
            # a read-only statement: no commit record, nothing flushed
            ids = [r[0] for r in sql("SELECT id FROM jobs WHERE args->>'marker' = %s",
                                     str(marker))]
            assert len(ids) == JOBS
            wait_until(lambda m=marker: len(read_marker(m)) == JOBS, 30,
                       "every job's handler started")
            for w in workers:
                os.kill(w.pid, signal.SIGSTOP)
            power_cut(server)
            server.start()
            kept = {r[0]: (r[1], r[2]) for r in sql(
                "SELECT id, state::text, attempts FROM jobs WHERE id = ANY(%s)", ids)}
            assert sorted(kept) == sorted(ids), (
                f"acknowledged enqueues lost: {sorted(set(ids) - set(kept))}")
            # claimed (the handlers ran: the marker file says so) but not in the database
            lost = sorted(i for i, (state, tries) in kept.items()
                          if state == "queued" and tries == 0)
            report.append(f"try {attempt}: {len(lost)} of {JOBS} claims lost")
            for w in workers:
                os.kill(w.pid, signal.SIGCONT)
            wait_until(lambda i=ids: sql(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND state = 'succeeded'",
                i)[0][0] == JOBS, 120, "every job succeeded after the cut")
            runs = executions(marker)
            # a lost claim's job ran twice (the first run's outcome fenced off), a kept one once
            assert {j: runs[j] for j in ids} == {j: 2 if j in lost else 1 for j in ids}, (
                runs, lost, [w.output()[-2000:] for w in workers])
            assert_invariants(sql, ids)
            if lost:
                break
        print(f"\n[lost WAL] {'; '.join(report)}")
        for w in workers:
            assert w.terminate() == 0, w.output()[-3000:]
        assert lost, (f"no claim was lost in {TRIES} power cuts ({report}): the test did not "
                      "exercise what it is for (a durable write flushed the claims first)")
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGCONT)
            w.close()
