"""``skiplock demo``: the whole life of a queue in about half a minute, on an embedded Postgres.

Starts worker processes, enqueues a mix of jobs, SIGKILLs the worker holding a slow job to show
lease recovery, prints live progress and ends with a summary table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

from .client import Client
from .errors import SkiplockError, UnknownTask

LEASE_SECONDS = 3.0
TASKS = "skiplock.demo_tasks:app"


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL from the ``pgserver`` wheel (pip install 'skiplock[embedded]')."""
    try:
        import pgserver
    except ImportError:
        raise SkiplockError(
            "no database URL and no embedded Postgres: pip install 'skiplock[embedded]' "
            "or set SKIPLOCK_DATABASE_URL"
        ) from None
    import logging

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    with tempfile.TemporaryDirectory(prefix="skiplock-demo-") as folder:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


def _spawn_worker(url: str, index: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SKIPLOCK_DATABASE_URL": url,
        "SKIPLOCK_WORKER_NAME": f"demo-worker-{index}",
        "SKIPLOCK_LOG_LEVEL": "ERROR",
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "skiplock",
            "worker",
            TASKS,
            "--concurrency",
            "4",
            "--lease-seconds",
            str(LEASE_SECONDS),
            "--poll-interval",
            "0.5",
        ],
        env=env,
    )


def _counts(client: Client) -> dict[str, int]:
    counts = {"queued": 0, "running": 0, "succeeded": 0, "dead": 0, "cancelled": 0}
    for row in client.db.state_counts():
        counts[row["state"]] += int(row["n"])
    return counts


def run_demo(database_url: str | None, workers: int = 2, jobs: int = 200) -> int:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if database_url is None:
            print("starting an embedded PostgreSQL (pgserver)...", flush=True)
            database_url = stack.enter_context(embedded_postgres())
        client = stack.enter_context(Client(database_url))
        client.migrate()
        procs = [_spawn_worker(database_url, i) for i in range(workers)]
        stack.callback(_stop_all, procs)
        _wait_for_catalogue(client)
        print(f"{workers} workers up; enqueueing {jobs} fast, 4 slow, 4 flaky, 2 poison jobs")
        client.enqueue_many({"task": "fast", "args": {"n": i}} for i in range(jobs))
        slow_ids = [client.enqueue("slow", {"seconds": 2.0}) for _ in range(4)]
        for _ in range(4):
            client.enqueue("flaky", {"fail_times": 2})
        for i in range(2):
            client.enqueue("poison", {"reason": f"bad input #{i}"})
        try:
            client.enqueue("resize_image", {"id": 1})
        except UnknownTask as exc:
            print(f"rejected at enqueue, nothing stored: {exc}")
        killed = _kill_worker_holding(client, slow_ids, procs)
        if killed is not None:
            procs.append(_spawn_worker(database_url, workers))
        expected = jobs + 4 + 4 + 2
        carriage, ending = ("\r", "") if sys.stdout.isatty() else ("", "\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            c = _counts(client)
            done = c["succeeded"] + c["dead"] + c["cancelled"]
            # One line redrawn in place on a terminal; a line per tick in a log.
            print(
                f"{carriage}  [{time.monotonic() - started:5.1f}s] queued={c['queued']:<4} "
                f"running={c['running']:<3} succeeded={c['succeeded']:<4} dead={c['dead']:<2} "
                f"({done}/{expected})",
                end=ending,
                flush=True,
            )
            if done >= expected:
                break
            time.sleep(0.5)
        if sys.stdout.isatty():
            print()
        c = _counts(client)
        rows = _summary(client)
    elapsed = time.monotonic() - started
    print("\nsummary")
    print(f"  {'state':<12}{'jobs':>6}")
    for state in ("succeeded", "dead", "queued", "running", "cancelled"):
        print(f"  {state:<12}{c[state]:>6}")
    print(
        f"  results written: {rows['results']} (one per succeeded job: "
        f"{'yes' if rows['results'] == c['succeeded'] else 'NO'})"
    )
    print(f"  slow jobs re-run after the SIGKILL: {rows['rerun']}")
    print(f"  time taken: {elapsed:.1f}s")
    ok = c["succeeded"] == expected - 2 and c["dead"] == 2 and rows["results"] == c["succeeded"]
    print("demo finished: every job is terminal" if ok else "demo finished with unexpected counts")
    return 0 if ok else 1


def _wait_for_catalogue(client: Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if {"fast", "slow", "flaky", "poison"} <= set(client.catalogue(refresh=True)):
            return
        time.sleep(0.2)
    raise SkiplockError("workers did not register their tasks within 30s")


def _kill_worker_holding(
    client: Client, job_ids: list[int], procs: list[subprocess.Popen[bytes]]
) -> int | None:
    """SIGKILL the worker process running one of ``job_ids``: its lease must bring it back."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for job_id in job_ids:
            job = client.get_job(job_id)
            if job and job["state"] == "running" and job["locked_by"]:
                pid = int(job["locked_by"].rsplit(":", 2)[1])
                for p in procs:
                    if p.pid == pid:
                        p.send_signal(signal.SIGKILL)
                        print(
                            f"SIGKILLed worker pid {pid} while it ran slow job {job_id}; "
                            f"its lease ({LEASE_SECONDS:.0f}s) will expire and another worker "
                            "re-runs it"
                        )
                        return pid
        time.sleep(0.1)
    return None


def _summary(client: Client) -> dict[str, int]:
    succeeded = client.db.list_jobs(state="succeeded", limit=100_000)
    reran = [j for j in succeeded if j["task"] == "slow" and j["attempts"] > 1]
    return {"results": sum(1 for j in succeeded if j["result"] is not None), "rerun": len(reran)}


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
