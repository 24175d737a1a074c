"""End-to-end measured from *spawning* the worker processes, as a user starts them, to the last
job's finish time in the database; with the CPU the workers and their Postgres backends spent.

The harness's own end-to-end figure (benchmarks.run, `e2e`) starts the clock once every worker
is connected and idle, and stops it when the harness sees no job left. This one starts it
before `skiplock worker MODULE:APP` (or pgqueuer's `run("module:factory")` on uvloop, what
`pgq run` does) is exec'd, and stops it at the newest finish time the database holds, so it
includes interpreter start, imports, connecting, registering, and the last completion batch.

Pure process and /proc plumbing; benchmarks.run prepares the databases and calls `run_once`.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Polled while the run is on (cheap: partial index / status index probes).
LEFT_SQL = {
    "skiplock": "SELECT EXISTS (SELECT 1 FROM skiplock.jobs "
                "WHERE state IN ('queued', 'running'))",
    "pgqueuer": "SELECT EXISTS (SELECT 1 FROM pgqueuer WHERE status IN ('queued', 'picked'))",
}
# Read once at the end: (first start, last finish, jobs finished), as epoch seconds.
# pgqueuer deletes a finished job and logs it: one pgqueuer_log row per status change.
TIMES_SQL = {
    "skiplock": """
        SELECT extract(epoch FROM min(started_at))::float8,
               extract(epoch FROM max(finished_at))::float8,
               count(*) FILTER (WHERE state = 'succeeded')
        FROM skiplock.jobs""",
    "pgqueuer": """
        SELECT extract(epoch FROM (SELECT min(created) FROM pgqueuer_log
                                   WHERE status = 'picked'))::float8,
               extract(epoch FROM (SELECT max(created) FROM pgqueuer_log
                                   WHERE status = 'successful'))::float8,
               (SELECT count(*) FROM pgqueuer_log WHERE status = 'successful')""",
}


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # after the ")" of comm: field 3 (state) is index 0, so utime (14) is 11 and stime (15) 12
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """Client backends of this database other than ours: the workers' connections."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()
    return [int(r[0]) for r in rows]


def interpolate(samples: list[tuple[float, float]], at: float) -> float:
    """The CPU total at wall time ``at`` from (time, cpu) samples, linearly between two."""
    if not samples:
        return 0.0
    before = [s for s in samples if s[0] <= at]
    after = [s for s in samples if s[0] > at]
    if not before:
        return samples[0][1]
    if not after:
        return before[-1][1]
    (t0, c0), (t1, c1) = before[-1], after[0]
    return c0 + (c1 - c0) * (at - t0) / (t1 - t0)


@dataclass
class Spawned:
    procs: list[subprocess.Popen[bytes]]
    logs: list[Any]
    samples: list[tuple[float, float]] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append((time.time(), sum(cpu_seconds(p.pid) for p in self.procs)))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        for f in self.logs:
            f.close()


def spawn(cmds: list[list[str]], env: dict[str, str], cwd: Path, logdir: Path,
          tag: str) -> Spawned:
    logs, procs = [], []
    for i, cmd in enumerate(cmds):
        f = open(logdir / f"{tag}-cli-worker-{i}.log", "wb")  # noqa: SIM115
        logs.append(f)
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                      stdout=f, stderr=subprocess.STDOUT))
    return Spawned(procs, logs)


def run_once(system: str, dsn: str, cmds: list[list[str]], env: dict[str, str], cwd: Path,
             logdir: Path, jobs: int, timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Spawn the workers, wait until no job is left, and report the spawn→last-finish rate,
    its parts, and CPU per job of the workers and of their Postgres backends."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the harness's own polling stays out of the per-statement figures
        conn.execute("SET pg_stat_statements.track = 'none'")
        conn.execute("SELECT pg_stat_statements_reset()")
        spawned_at = time.time()
        w = spawn(cmds, env, cwd, logdir, system)
        try:
            deadline = time.monotonic() + timeout
            done = False
            backends: dict[int, float] = {}
            while time.monotonic() < deadline:
                w.sample()
                for pid in backend_pids(conn):
                    backends[pid] = cpu_seconds(pid)  # the last reading of each backend
                row = conn.execute(LEFT_SQL[system]).fetchone()
                if row is not None and not row[0]:
                    done = True
                    break
                if any(p.poll() is not None for p in w.procs):
                    raise RuntimeError(f"{system} worker exited early; see {logdir}")
                time.sleep(poll)
            w.sample()
            for pid in backend_pids(conn):
                backends[pid] = cpu_seconds(pid)
            first, last, finished = conn.execute(TIMES_SQL[system]).fetchone()  # type: ignore[misc]
            stmts = conn.execute("""
                SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ',
                       'g'), 120)
                FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database
                                                      WHERE datname = current_database())
                ORDER BY total_exec_time DESC LIMIT 8""").fetchall()
        finally:
            w.stop()
    worker_cpu = w.samples[-1][1]
    startup_cpu = interpolate(w.samples, first) if first else 0.0
    total = (last or time.time()) - spawned_at
    steady = (last - first) if first and last else float("nan")
    return {
        "finished": done, "jobs": int(finished),
        "jobs_per_s": (jobs if done else finished) / total,
        "seconds": total,
        "startup_s": (first - spawned_at) if first else float("nan"),
        "steady_jobs_per_s": (finished / steady) if steady == steady and steady > 0 else 0.0,
        "worker_cpu_us_per_job": worker_cpu / max(1, finished) * 1e6,
        "worker_cpu_startup_s": startup_cpu,
        "worker_cpu_us_per_job_after_start": (worker_cpu - startup_cpu) / max(1, finished) * 1e6,
        "backend_cpu_us_per_job": sum(backends.values()) / max(1, finished) * 1e6,
        "statements": [{"calls": int(c), "total_ms": float(t), "rows": int(r), "query": q}
                       for c, t, r, q in stmts],
        "db_exec_us_per_job": sum(float(s[1]) for s in stmts) * 1000 / max(1, finished),
    }
