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
    # one EXISTS per state, each served by its partial index: `state IN (...)` matches
    # neither predicate, and its sequential scan took ~1 s over 10M finished jobs (H3's
    # history benchmark), run every 10 ms at the end of each round
    "skiplock": "SELECT EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'queued') "
                "OR EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'running')",
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


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the ")" of comm (so field 3, state, is index 0), or
    None once the process is gone (a zombie's is still there, with its final times)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process so far (0 once it is gone)."""
    fields = _stat(pid)
    # utime (field 14) is index 11, stime (15) index 12
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """Client backends of this database other than ours: the workers' connections."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchall()
    return [int(r[0]) for r in rows]


def wait_or_kill(p: subprocess.Popen[Any], grace: float) -> None:
    """Wait ``grace`` seconds for a process told to stop, then SIGKILL it."""
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


@dataclass
class BackendCpu:
    """The CPU of a server's backends at one moment, read twice a round (at its start and its
    end) instead of polled: a backend that exits between two polls took its last CPU with
    it, and polling /proc ten times a second cost CPU of its own on a small machine.

    ``live``: each client backend of the database (other than ours) by (pid, start time, so
    a reused pid is another backend), with its CPU so far. ``reaped``: the CPU of every
    child the postmaster has waited for (its cutime + cstime): a backend that exits hands
    its whole CPU there. Between two snapshots, then, a backend's CPU in the round is its
    end reading (alive at the end) or its total (exited: in the reaped delta), minus its
    start reading (alive at the start): exact for every backend however short its life."""

    live: dict[tuple[int, int], float]
    reaped: float
    # autovacuum + autoanalyze runs on the database's tables so far: their workers are the
    # postmaster's children too, so the reaped delta holds theirs (the one other kind of
    # child that exits on its own on the benchmark's server; parallel query workers are
    # the workers' statements' own)
    autovacuums: int

    @classmethod
    def read(cls, conn: psycopg.Connection[Any]) -> BackendCpu:
        me = _stat(int(conn.execute("SELECT pg_backend_pid()").fetchone()[0]))  # type: ignore[index]
        if me is None:
            raise RuntimeError("the benchmark's server is not on this machine: no /proc")
        postmaster = int(me[1])  # our backend's parent
        live: dict[tuple[int, int], float] = {}
        for pid in backend_pids(conn):
            fields = _stat(pid)
            if fields:  # index 19: start time (field 22)
                live[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        pm = _stat(postmaster)
        if pm is None:
            raise RuntimeError(f"the postmaster (pid {postmaster}) has gone")
        reaped = (int(pm[13]) + int(pm[14])) / CLK_TCK  # cutime, cstime (fields 16, 17)
        # one that exited and was reaped between its reading and the postmaster's is in
        # `reaped` already: its live reading would count it twice. (One reaped just after
        # the postmaster's reading is lost: a window of microseconds; none at the snapshots
        # in practice, taken before the workers start and while they idle at the end.)
        live = {k: v for k, v in live.items()
                if (fields := _stat(k[0])) is not None and int(fields[19]) == k[1]}
        row = conn.execute("SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) "
                           "FROM pg_stat_user_tables").fetchone()
        return cls(live, reaped, int(row[0]) if row else 0)

    def since(self, start: BackendCpu) -> float:
        """CPU seconds the backends spent from ``start`` to this snapshot."""
        return (sum(self.live.values()) + self.reaped
                - sum(start.live.values()) - start.reaped)


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
        """Terminate every worker and wait for it (SIGKILL after 30 s); the logs closed
        whatever happens on the way."""
        try:
            for p in self.procs:
                if p.poll() is None:
                    p.terminate()
            for p in self.procs:
                wait_or_kill(p, 30)
        finally:
            for p in self.procs:
                if p.poll() is None:  # only after a failure above
                    p.kill()
            for f in self.logs:
                f.close()


def spawn(cmds: list[list[str]], env: dict[str, str], cwd: Path, logdir: Path,
          tag: str) -> Spawned:
    """The workers started; if one cannot be, those already started are stopped."""
    spawned = Spawned([], [])
    logdir.mkdir(parents=True, exist_ok=True)  # a fresh clone has no artifacts/bench yet
    try:
        for i, cmd in enumerate(cmds):
            f = open(logdir / f"{tag}-cli-worker-{i}.log", "wb")  # noqa: SIM115
            spawned.logs.append(f)
            spawned.procs.append(subprocess.Popen(cmd, cwd=cwd, env=env,
                                                  stdin=subprocess.DEVNULL, stdout=f,
                                                  stderr=subprocess.STDOUT))
    except BaseException:
        spawned.stop()
        raise
    return spawned


def run_once(system: str, dsn: str, cmds: list[list[str]], env: dict[str, str], cwd: Path,
             logdir: Path, jobs: int, timeout: float, poll: float = 0.1) -> dict[str, Any]:
    """Spawn the workers, wait until no job is left, and report the spawn→last-finish rate,
    its parts, and CPU per job of the workers and of their Postgres backends."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # the harness's own polling stays out of the per-statement figures
        conn.execute("SET pg_stat_statements.track = 'none'")
        conn.execute("SELECT pg_stat_statements_reset()")
        before = BackendCpu.read(conn)  # before the spawn: none of the workers' yet
        spawned_at = time.time()
        w = spawn(cmds, env, cwd, logdir, system)
        try:
            deadline = time.monotonic() + timeout
            done = False
            while time.monotonic() < deadline:
                w.sample()
                row = conn.execute(LEFT_SQL[system]).fetchone()
                if row is not None and not row[0]:
                    done = True
                    break
                if any(p.poll() is not None for p in w.procs):
                    raise RuntimeError(f"{system} worker exited early; see {logdir}")
                time.sleep(poll)
            w.sample()
            after = BackendCpu.read(conn)  # the workers still connected (idle)
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
        "backend_cpu_us_per_job": after.since(before) / max(1, finished) * 1e6,
        # of that, backends that exited in the round (whole lives), and whether autovacuum
        # workers are among them (0: the figure is the workers' backends' alone)
        "backend_cpu_exited_s": after.reaped - before.reaped,
        "autovacuum_runs": after.autovacuums - before.autovacuums,
        "statements": [{"calls": int(c), "total_ms": float(t), "rows": int(r), "query": q}
                       for c, t, r, q in stmts],
        "db_exec_us_per_job": sum(float(s[1]) for s in stmts) * 1000 / max(1, finished),
    }
