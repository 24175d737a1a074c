"""Skiplock vs procrastinate vs pgqueuer vs the raw SQL limit, on one Postgres, in one run.

    .venv/bin/python -m benchmarks.run            # full: 100k enqueue, 200k end-to-end, 1M backlog
    .venv/bin/python -m benchmarks.run --quick    # 20k jobs, fewer rows: a few minutes

Starts its own PostgreSQL (fsync on), installs the peers into their own virtualenv, runs every
workload for every system one after another, prints one table and writes
artifacts/bench/results.json, results.md and results.png. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from tests.support.pgserver import PgServer

from benchmarks.e2e_cli import LEFT_SQL, backend_pids, cpu_seconds, run_once
from skiplock_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "artifacts" / "bench"
PEER_PINS = {"procrastinate": "3.10.0", "pgqueuer": "1.6.0"}
PEER_EXTRAS = ["asyncpg==0.32.0", "uvloop>=0.21", "psycopg[binary,pool]>=3.2"]
SYSTEMS = ("skiplock", "pgqueuer", "procrastinate")

# Each system's best settings for 2 cores and no-op async jobs (see docs/benchmarks.md).
SETTINGS: dict[str, dict[str, Any]] = {
    "skiplock": {"concurrency": 200, "batch": 200, "chunk": 10_000,
                 "note": "concurrency 200 per process (claims sized to free slots), batched "
                         "fenced completions, COPY enqueue_many in chunks of 10k"},
    "pgqueuer": {"concurrency": 0, "batch": 200, "chunk": 10_000,
                 "note": "asyncpg driver, uvloop, batch_size 200, no concurrency cap, "
                         "enqueue lists of 10k (unnest)"},
    "procrastinate": {"concurrency": 10, "batch": 1, "chunk": 10_000,
                      "note": "PsycopgConnector pool, uvloop, concurrency 10 per process "
                              "(beat 4 and 40 here), listen_notify, batch_defer_async in "
                              "chunks of 10k"},
}
# Enqueue -> start latency: a light, steady rate with idle workers woken by LISTEN/NOTIFY.
LATENCY_SETTINGS: dict[str, dict[str, Any]] = {
    "skiplock": {"concurrency": 10, "batch": 10},
    "pgqueuer": {"concurrency": 0, "batch": 10},
    "procrastinate": {"concurrency": 10, "batch": 1},
}
REMAINING_SQL = {
    **LEFT_SQL,
    "procrastinate": "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs "
                     "WHERE status IN ('todo', 'doing'))",
}
# Applied to the benchmark server for every system alike: fewer forced checkpoints while
# loading a million rows; durability (fsync, full_page_writes, synchronous_commit) stays on.
SERVER_SETTINGS = {"max_wal_size": "4GB", "checkpoint_timeout": "15min"}


@dataclass
class Profile:
    enqueue_jobs: int
    e2e_jobs: int
    latency_jobs: int
    latency_rate: float
    backlog_rows: tuple[int, ...]
    repeats: int
    e2e_timeout: float


FULL = Profile(100_000, 200_000, 400, 50.0, (10_000, 100_000, 1_000_000), 3, 240.0)
QUICK = Profile(20_000, 20_000, 150, 50.0, (10_000, 100_000), 3, 240.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- environment ------------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("SKIPLOCK_CACHE_DIR", "/var/cache/skiplock"))


def peer_python() -> Path:
    """The peers' own virtualenv (never the project's), made once per pinned version set."""
    tag = "-".join(f"{k}{v}" for k, v in sorted(PEER_PINS.items()))
    venv = cache_dir() / f"bench-venv-{tag}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists() and python.exists():
        return python
    log(f"creating the peers' virtualenv {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pins = [f"{k}=={v}" for k, v in PEER_PINS.items()]
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *pins, *PEER_EXTRAS], check=True, timeout=900)
    stamp.write_text(" ".join(pins + PEER_EXTRAS) + "\n")
    return python


def runner_cmd(system: str, peer_py: Path) -> list[str]:
    python = sys.executable if system == "skiplock" else str(peer_py)
    return [python, "-m", f"benchmarks.runners.{system}_runner"]


def runner_env() -> dict[str, str]:
    paths = [str(ROOT), str(ROOT / "worker")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def pgbench_path(server: PgServer) -> Path:
    found = server.bindir / "pgbench"
    if found.exists():
        return found
    which = shutil.which("pgbench")
    if not which:
        raise SystemExit("pgbench not found: apt-get install postgresql-contrib (or postgresql)")
    return Path(which)


# -- helpers ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, server: PgServer, peer_py: Path, profile: Profile) -> None:
        self.server = server
        self.peer_py = peer_py
        self.p = profile
        self._n = 0

    def fresh_db(self, system: str, setup: bool = True) -> str:
        self._n += 1
        name = f"b_{system}_{self._n}"
        with self.server.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        dsn = self.server.url(name)
        if setup:
            self.run_runner(system, "setup", "--dsn", dsn)
        return dsn

    def drop_db(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with self.server.admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def run_runner(self, system: str, *args: str, timeout: float = 600) -> dict[str, Any]:
        proc = subprocess.run([*runner_cmd(system, self.peer_py), *args], cwd=ROOT,
                              env=runner_env(), capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{system} {args[0]} failed:\n{proc.stdout[-2000:]}"
                               f"\n{proc.stderr[-4000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])  # type: ignore[no-any-return]
        return {}

    def vacuum(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")

    @contextlib.contextmanager
    def workers(self, system: str, dsn: str, n: int, cfg: dict[str, Any],
                latency: bool = False) -> Iterator[list[WorkerProc]]:
        procs = []
        for i in range(n):
            out = OUT / f"{system}-worker-{i}.json"
            out.unlink(missing_ok=True)
            Path(str(out) + ".progress").unlink(missing_ok=True)
            args = ["worker", "--dsn", dsn, "--out", str(out),
                    "--concurrency", str(cfg["concurrency"]), "--batch", str(cfg["batch"])]
            if latency:
                args.append("--latency")
            err = open(OUT / f"{system}-worker-{i}.log", "w")  # noqa: SIM115
            proc = subprocess.Popen([*runner_cmd(system, self.peer_py), *args], cwd=ROOT,
                                    env=runner_env(), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            procs.append(WorkerProc(proc, out, err))
        try:
            for w in procs:
                line = w.proc.stdout.readline() if w.proc.stdout else ""
                if "READY" not in line:
                    raise RuntimeError(f"{system} worker did not start; see {w.err.name}")
            yield procs
        finally:
            for w in procs:
                w.stop()

    def wait_done(self, system: str, dsn: str, timeout: float, every: float,
                  tick: Callable[[], None], progress: list[Path] | None = None,
                  expect: int = 0) -> tuple[float, bool]:
        """Poll until no job is queued or running; returns (time.time() when seen, finished).

        With progress files, the database is only polled once the workers' handler counts are
        close to `expect`: polling a busy queue table every few ms would itself be a load.
        """
        deadline = time.monotonic() + timeout
        while progress and time.monotonic() < deadline:
            seen = 0
            for f in progress:
                with contextlib.suppress(OSError, ValueError):
                    seen += int(f.read_text() or 0)
            if seen >= expect - 500 * len(progress):
                break
            tick()
            time.sleep(every)
        with psycopg.connect(dsn, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute(REMAINING_SQL[system]).fetchone()
                if row is not None and not row[0]:
                    return time.time(), True
                tick()
                time.sleep(every)
        return time.time(), False


@dataclass
class WorkerProc:
    proc: subprocess.Popen[str]
    out: Path
    err: Any
    rss_max_kb: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def rss_kb(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb = int(line.split()[1])
                    self.rss_max_kb = max(self.rss_max_kb, kb)
                    return kb
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.err.close()
        if self.out.exists():
            self.stats = json.loads(self.out.read_text())


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def percentile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


# -- workloads ---------------------------------------------------------------------------------

def bench_enqueue(b: Bench, system: str) -> dict[str, Any]:
    """Bulk enqueue; for Skiplock each run paired with the raw ceiling of the same COPY into
    the same table (rows rendered once, runners/skiplock_runner.py copy_ceiling), each on a
    fresh database, the ceiling first in odd runs."""
    rates, ceilings = [], []
    for r in range(b.p.repeats):
        cmds = ["enqueue"] + (["copy-ceiling"] if system == "skiplock" else [])
        for cmd in cmds if r % 2 == 0 else cmds[::-1]:
            dsn = b.fresh_db(system)
            res = b.run_runner(system, cmd, "--dsn", dsn, "--jobs", str(b.p.enqueue_jobs),
                               "--chunk", str(SETTINGS[system]["chunk"]))
            (rates if cmd == "enqueue" else ceilings).append(res["jobs"] / res["seconds"])
            log(f"  {system} {cmd} run {r + 1}: {res['jobs'] / res['seconds']:,.0f} jobs/s")
            b.drop_db(dsn)
    out: dict[str, Any] = {"jobs_per_s": median(rates), "runs": rates}
    if ceilings:
        out |= {"ceiling_jobs_per_s": median(ceilings), "ceiling_runs": ceilings,
                "vs_ceiling_paired": median(x / c for x, c in zip(rates, ceilings, strict=True))}
    return out


def bench_e2e(b: Bench, system: str) -> dict[str, Any]:
    cfg = SETTINGS[system]
    rates, idle, load = [], [], []
    cpu: list[float] = []
    bcpu: list[float] = []
    for r in range(b.p.repeats):
        dsn = b.fresh_db(system)
        b.run_runner(system, "enqueue", "--dsn", dsn, "--jobs", str(b.p.e2e_jobs),
                     "--chunk", str(cfg["chunk"]))
        b.vacuum(dsn)
        with b.workers(system, dsn, 2, cfg) as procs:
            time.sleep(0.5)
            idle.append(sum(w.rss_kb() for w in procs) / len(procs))
            with psycopg.connect(dsn, autocommit=True) as conn:
                backends = backend_pids(conn)
            cpu0 = sum(cpu_seconds(w.proc.pid) for w in procs)
            bcpu0 = sum(cpu_seconds(p) for p in backends)
            started = time.time()
            for w in procs:
                w.go()
            last_sample = [0.0]

            def tick(procs: list[WorkerProc] = procs, last: list[float] = last_sample) -> None:
                if time.monotonic() - last[0] > 0.2:
                    last[0] = time.monotonic()
                    for w in procs:
                        w.rss_kb()

            ended, finished = b.wait_done(system, dsn, b.p.e2e_timeout, 0.01, tick,
                                          [Path(str(w.out) + ".progress") for w in procs],
                                          b.p.e2e_jobs)
            # CPU from "go" to the end: the steady state's cost, start-up excluded
            cpu.append((sum(cpu_seconds(w.proc.pid) for w in procs) - cpu0) / b.p.e2e_jobs * 1e6)
            bcpu.append((sum(cpu_seconds(p) for p in backends) - bcpu0) / b.p.e2e_jobs * 1e6)
        processed = sum(int(w.stats.get("count", 0)) for w in procs)
        load.append(max(w.rss_max_kb for w in procs))
        rate = (b.p.e2e_jobs if finished else processed) / (ended - started)
        rates.append(rate)
        log(f"  {system} end-to-end run {r + 1}: {rate:,.0f} jobs/s "
            f"({processed:,} handler calls{'' if finished else ', time limit reached'}; "
            f"worker CPU {cpu[-1]:.1f} us/job, Postgres backends {bcpu[-1]:.1f} us/job)")
        b.drop_db(dsn)
        if not finished:
            break  # jobs done within the time limit / time: more runs would only repeat it
    return {"jobs_per_s": median(rates), "runs": rates,
            "rss_idle_mb": median(idle) / 1024, "rss_load_mb": max(load) / 1024,
            "worker_cpu_us_per_job": median(cpu), "backend_cpu_us_per_job": median(bcpu)}


def bench_latency(b: Bench, system: str) -> dict[str, Any]:
    cfg = LATENCY_SETTINGS[system]
    dsn = b.fresh_db(system)
    with b.workers(system, dsn, 2, cfg, latency=True) as procs:
        for w in procs:
            w.go()
        time.sleep(1.5)
        idle = sum(w.rss_kb() for w in procs) / len(procs)
        produced = b.run_runner(system, "produce", "--dsn", dsn, "--jobs",
                                str(b.p.latency_jobs), "--rate", str(b.p.latency_rate),
                                timeout=120)
        b.wait_done(system, dsn, 30, 0.05, lambda: None)
        time.sleep(0.2)
    lat = [x * 1000 for w in procs for x in w.stats.get("latencies", [])]
    b.drop_db(dsn)
    call = produced.get("call_p50", float("nan")) * 1000
    log(f"  {system} latency: p50 {percentile(lat, 0.5):.2f} ms, p99 {percentile(lat, 0.99):.2f} "
        f"ms over {len(lat)} jobs (the enqueue call itself: p50 {call:.2f} ms)")
    return {"p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99), "samples": len(lat),
            "enqueue_call_p50_ms": call, "rss_idle_mb": idle / 1024}


# The physical references (pgbench, no Python): Skiplock's claim + fenced completion on its own
# schema with a result row per job (as a non-None result is written), without one (a None
# result), without one and without jobs_runnable_idx (kept for workers older than 0008), with
# the finish notify as before 0013 (the row trigger, one PL/pgSQL call and pg_notify per job)
# and with none at all, and the same cycle on a minimal schema (minimal_schema.sql). The
# shipped completion (0013) announces its jobs in one pg_notify per statement ("stmtnotify").
RAW_VARIANTS: dict[str, dict[str, Any]] = {
    "skiplock": {"script": "claim_complete.pgbench", "result": 1, "drop": []},
    "skiplock, no result row": {"script": "claim_complete.pgbench", "result": 0, "drop": []},
    "skiplock, no result row, no jobs_runnable_idx": {
        "script": "claim_complete.pgbench", "result": 0,
        "drop": ["DROP INDEX skiplock.jobs_runnable_idx"]},
    "skiplock, no result row, a notify per job (before 0013)": {
        "script": "claim_complete.pgbench", "result": 0, "drop": [], "stmtnotify": 0},
    "skiplock, no result row, no finish notify": {
        "script": "claim_complete.pgbench", "result": 0, "stmtnotify": 0,
        "drop": ["DROP TRIGGER jobs_notify_finished ON skiplock.jobs"]},
    "minimal schema": {"script": "claim_complete_minimal.pgbench", "result": 0, "drop": []},
}


def raw_db(b: Bench, variant: dict[str, Any], jobs: int) -> str:
    """A fresh database holding `jobs` queued no-op jobs in the variant's schema, vacuumed."""
    minimal = variant["script"] == "claim_complete_minimal.pgbench"
    dsn = b.fresh_db("minimal" if minimal else "skiplock", setup=not minimal)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if minimal:
            conn.execute((ROOT / "benchmarks" / "minimal_schema.sql").read_text().encode())
            conn.execute("INSERT INTO mjobs (task) SELECT 'noop' FROM generate_series(1, %s)",
                         [jobs])
        else:
            conn.execute("INSERT INTO skiplock.jobs (task, wake_on_finish) "
                         "SELECT 'noop', %s FROM generate_series(1, %s)",
                         [bool(variant.get("waited")), jobs])
        for stmt in variant["drop"]:
            conn.execute(stmt)
        conn.execute("VACUUM ANALYZE")
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")
    return dsn


def bench_raw_sql(b: Bench, batches: list[int]) -> dict[str, Any]:
    """Every variant at the worker's batch, Skiplock's also at the other batches; variants
    interleaved within each round (rotating order), median of rounds. Besides jobs/s: the
    server's execution time per job of the claim and of the completion (pg_stat_statements:
    it leaves out the commit's WAL flush) and the write amplification per job."""
    pgbench = pgbench_path(b.server)
    main_batch = int(SETTINGS["skiplock"]["batch"])
    cases = [(name, main_batch) for name in RAW_VARIANTS]
    cases += [("skiplock", n) for n in batches if n != main_batch]
    runs: dict[tuple[str, int], list[dict[str, float]]] = {c: [] for c in cases}
    for r in range(b.p.repeats):
        for name, batch in cases[r % len(cases):] + cases[:r % len(cases)]:
            variant = RAW_VARIANTS[name]
            dsn = raw_db(b, variant, b.p.e2e_jobs)
            per_client = b.p.e2e_jobs // (2 * batch)
            started = time.perf_counter()
            proc = subprocess.run(
                [str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "2",
                 "-t", str(per_client), "-D", f"batch={batch}",
                 "-D", f"result={variant['result']}",
                 "-D", f"stmtnotify={variant.get('stmtnotify', 1)}",
                 "-f", str(ROOT / "benchmarks" / variant["script"]), dsn],
                capture_output=True, text=True, timeout=b.p.e2e_timeout)
            elapsed = time.perf_counter() - started
            if proc.returncode != 0:
                raise RuntimeError(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
            table = "mjobs" if variant["script"].endswith("minimal.pgbench") else "skiplock.jobs"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SET pg_stat_statements.track = 'none'")
                row = conn.execute(f"SELECT count(*) FROM {table} "
                                   "WHERE state = 'succeeded'").fetchone()
                stmts = conn.execute("""
                    SELECT query, total_exec_time, wal_bytes FROM pg_stat_statements
                    WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                    """).fetchall()
                # HOT updates: none while the state change moves a row between partial indexes
                time.sleep(0.6)  # the backends' statistics reach the views within 0.5 s
                upd = conn.execute("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                                   "WHERE relid = %s::regclass", [table]).fetchone()
            done = int(row[0]) if row else 0
            claim_ms = sum(float(t) for q, t, _ in stmts if "SKIP LOCKED" in str(q))
            # (constants are $n in pg_stat_statements' text: match on column names)
            complete_ms = sum(float(t) for q, t, _ in stmts if "finished_at" in str(q)
                              and "SKIP LOCKED" not in str(q))
            wal = sum(int(w or 0) for _, _, w in stmts)
            tps = next((float(line.split("=")[1].split()[0]) for line in proc.stdout.splitlines()
                        if line.startswith("tps")), 0.0)
            rate = tps * batch if tps else done / elapsed
            res = {"jobs_per_s": rate, "claim_us_per_job": claim_ms * 1000 / max(1, done),
                   "complete_us_per_job": complete_ms * 1000 / max(1, done),
                   "wal_bytes_per_job": wal / max(1, done),
                   "hot_update_share": (upd[1] / upd[0]) if upd and upd[0] else 0.0}
            runs[(name, batch)].append(res)
            log(f"  raw SQL, {name}, batch {batch}, round {r + 1}: {rate:,.0f} jobs/s "
                f"({done:,} completed; claim {res['claim_us_per_job']:.1f} us/job, completion "
                f"{res['complete_us_per_job']:.1f} us/job, WAL {res['wal_bytes_per_job']:,.0f} "
                f"B/job, HOT updates {res['hot_update_share']:.0%})")
            b.drop_db(dsn)
    out: dict[str, Any] = {}
    for (name, batch), rs in runs.items():
        key = str(batch) if name == "skiplock" else f"{name} ({batch})"
        out[key] = {"variant": name, "batch": batch, "runs": rs,
                    **{k: median([x[k] for x in rs]) for k in rs[0]}}
    return out


def cli_worker_cmds(system: str, peer_py: Path, cfg: dict[str, Any]) -> list[list[str]]:
    """Two worker processes started as a user starts them (see benchmarks/e2e_cli.py)."""
    if system == "skiplock":
        cmd = [str(Path(sys.executable).parent / "skiplock"), "worker",
               "benchmarks.runners.skiplock_cli_app:app",
               "--concurrency", str(cfg["concurrency"])]
    elif system == "pgqueuer":
        cmd = [str(peer_py), "-m", "benchmarks.runners.pgqueuer_cli_app", str(cfg["batch"])]
    else:
        raise SystemExit(f"e2e-cli measures skiplock and pgqueuer, not {system}")
    return [cmd, cmd]


def bench_e2e_cli(b: Bench, systems: list[str]) -> dict[str, Any]:
    """From spawn to the last finish, rounds interleaved (the order rotates each round so the
    machine's drift hits every system alike); median of rounds per system."""
    systems = [s for s in systems if s in ("skiplock", "pgqueuer")]
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    for r in range(b.p.repeats):
        for system in systems[r % len(systems):] + systems[:r % len(systems)]:
            cfg = SETTINGS[system]
            dsn = b.fresh_db(system)
            b.run_runner(system, "enqueue", "--dsn", dsn, "--jobs", str(b.p.e2e_jobs),
                         "--chunk", str(cfg["chunk"]))
            b.vacuum(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            env = {**runner_env(), "SKIPLOCK_DATABASE_URL": dsn, "BENCH_DSN": dsn}
            res = run_once(system, dsn, cli_worker_cmds(system, b.peer_py, cfg), env, ROOT,
                           OUT, b.p.e2e_jobs, b.p.e2e_timeout)
            runs[system].append(res)
            log(f"  {system} from spawn, round {r + 1}: {res['jobs_per_s']:,.0f} jobs/s "
                f"(start-up {res['startup_s']:.2f} s, first start to last finish "
                f"{res['steady_jobs_per_s']:,.0f} jobs/s; worker CPU "
                f"{res['worker_cpu_us_per_job']:.1f} us/job, "
                f"{res['worker_cpu_us_per_job_after_start']:.1f} after the first start; "
                f"Postgres backends {res['backend_cpu_us_per_job']:.1f} us/job, statements "
                f"{res['db_exec_us_per_job']:.1f} us/job)")
            b.drop_db(dsn)
    out: dict[str, Any] = {}
    keys = ("jobs_per_s", "startup_s", "steady_jobs_per_s", "worker_cpu_us_per_job",
            "worker_cpu_us_per_job_after_start", "backend_cpu_us_per_job",
            "db_exec_us_per_job")
    for system, rs in runs.items():
        out[system] = {k: median([x[k] for x in rs]) for k in keys}
        out[system]["runs"] = rs
    return out


# Rows per 1,000 in the jobs table, in 4 queues. "history": a table that keeps finished jobs
# for their retention period (the usual way to reach 1M rows); "backlog": a large live backlog.
BACKLOG_MIXES: dict[str, dict[str, int]] = {
    "history": {"succeeded": 975, "dead": 10, "runnable": 10, "scheduled": 4, "running": 1},
    "backlog": {"succeeded": 800, "dead": 20, "runnable": 120, "scheduled": 30, "running": 30},
}
# What the operator's reconcile loop passes for a JobQueue with the CRD defaults: max(its
# count_cap_floor, maxReplicas 10 x jobsPerReplica 10 + 1) = the floor.
OPERATOR_CAP = max(OperatorSettings.model_fields["count_cap_floor"].default, 10 * 10 + 1)


def fill_backlog(conn: psycopg.Connection[Any], mix: dict[str, int], start: int,
                 stop: int) -> None:
    """Insert rows start..stop-1: each block of 1,000 ids is one queue and holds the whole mix."""
    bounds, edge = [], 0
    for bucket, n in mix.items():
        edge += n
        bounds.append(f"WHEN i %% 1000 < {edge} THEN '{bucket}'")
    conn.execute(f"""
        INSERT INTO skiplock.jobs (queue, task, args, state, attempts, run_at, locked_by,
                                   locked_until, started_at, finished_at)
        SELECT 'q' || ((i / 1000) %% 4), 'noop', '{{}}'::jsonb,
               (CASE WHEN b IN ('runnable', 'scheduled') THEN 'queued' ELSE b END
               )::skiplock.job_state,
               CASE WHEN b IN ('runnable', 'scheduled') THEN 0 ELSE 1 END,
               CASE WHEN b = 'scheduled' THEN now() + interval '1 hour'
                    ELSE now() - interval '1 minute' END,
               CASE WHEN b = 'running' THEN 'bench:1:x' END,
               CASE WHEN b = 'running' THEN now() + interval '1 hour' END,
               CASE WHEN b IN ('running', 'succeeded', 'dead') THEN now() END,
               CASE WHEN b IN ('succeeded', 'dead') THEN now() END
        FROM generate_series(%s::bigint, %s::bigint - 1) AS i,
        LATERAL (SELECT CASE {' '.join(bounds)} END AS b) AS s
    """, [start, stop])  # type: ignore[call-overload]


def time_stats(fn: Callable[[], object], runs: int = 30) -> dict[str, float]:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": median(times), "p95_ms": percentile(times, 0.95)}


def bench_backlog(b: Bench, sizes: tuple[int, ...]) -> dict[str, Any]:
    """skiplock.inspection.queue_stats as the operator calls it (its queues named, its count cap)
    and as `skiplock stats` calls it (every queue, the default cap), per mix and table size."""
    from skiplock.db import Database
    from skiplock.inspection import queue_stats

    out: dict[str, Any] = {}
    queues = ["q0", "q1", "q2", "q3"]
    for mix_name, mix in BACKLOG_MIXES.items():
        dsn = b.fresh_db("skiplock")
        have = 0
        with psycopg.connect(dsn, autocommit=True) as conn, Database(dsn) as db:
            for size in sizes:
                fill_backlog(conn, mix, have, size)
                have = size
                conn.execute("VACUUM ANALYZE skiplock.jobs")
                op = time_stats(lambda db=db: queue_stats(db, queues, cap=OPERATOR_CAP))
                cli = time_stats(lambda db=db: queue_stats(db))
                out[f"{mix_name}:{size}"] = {"mix": mix_name, "rows": size, "operator": op,
                                             "cli": cli}
                log(f"  queue_stats, {mix_name} mix, {size:,} rows: operator call "
                    f"{op['median_ms']:.2f} ms (p95 {op['p95_ms']:.2f}), stats command "
                    f"{cli['median_ms']:.2f} ms")
        b.drop_db(dsn)
    return out


# -- report ------------------------------------------------------------------------------------

def build_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str, str]]:
    """(metric, skiplock, pgqueuer, procrastinate, raw SQL, skiplock/best peer, skiplock/raw)."""
    def f(x: float | None, unit: str = "") -> str:
        if x is None or x != x:
            return "-"
        return f"{x:,.0f}{unit}" if x >= 100 else f"{x:.2f}{unit}"

    def ratio(mine: float | None, peers: dict[str, float], best_of: Any = max,
              suffix: str = "") -> str:
        """Skiplock against the best peer measured; "-" when no peer ran (--systems skiplock)."""
        others = [v for k, v in peers.items() if k != "skiplock"]
        if mine is None or not others:
            return "-"
        return f"{mine / best_of(others):.2f}x{suffix}"

    rows = []
    enq = {s: res["enqueue"][s]["jobs_per_s"] for s in SYSTEMS if s in res.get("enqueue", {})}
    if enq:
        sk = res["enqueue"].get("skiplock", {})
        rows.append(("bulk enqueue (jobs/s; raw SQL: its COPY, rows rendered once)",
                     f(enq.get("skiplock")), f(enq.get("pgqueuer")), f(enq.get("procrastinate")),
                     f(sk.get("ceiling_jobs_per_s")), ratio(enq.get("skiplock"), enq),
                     f"{sk['vs_ceiling_paired']:.0%} (target >= 85 %)"
                     if "vs_ceiling_paired" in sk else "-"))
    e2e = {s: res["e2e"][s]["jobs_per_s"] for s in SYSTEMS if s in res.get("e2e", {})}
    raw_all = res.get("raw_sql", {})
    # Skiplock's own cycle with its result row, by batch: the ceiling the end-to-end row uses
    raw = {k: v for k, v in raw_all.items() if v.get("variant", "skiplock") == "skiplock"}
    if e2e:
        batch = str(SETTINGS["skiplock"]["batch"])
        near = raw.get(batch) or (raw[max(raw, key=int)] if raw else None)
        rr = near["jobs_per_s"] if near else None
        rows.append(("end-to-end, 2 procs, harness steady state (jobs/s)",
                     f(e2e.get("skiplock")), f(e2e.get("pgqueuer")),
                     f(e2e.get("procrastinate")),
                     f(rr) + (f" (batch {batch if batch in raw else max(raw, key=int)})"
                              if rr else ""),
                     ratio(e2e.get("skiplock"), e2e),
                     f"{e2e['skiplock'] / rr:.0%}" if rr and "skiplock" in e2e else "-"))
        for key, label in (("worker_cpu_us_per_job", "worker CPU"),
                           ("backend_cpu_us_per_job", "Postgres backend CPU")):
            vals = {s: res["e2e"][s].get(key) for s in e2e}
            rows.append((f"  {label}, harness steady state (us/job)", f(vals.get("skiplock")),
                         f(vals.get("pgqueuer")), f(vals.get("procrastinate")), "-",
                         ratio(vals.get("skiplock"), {k: v for k, v in vals.items() if v},
                               min, " (lower is better)"), "-"))
    cli = res.get("e2e_cli", {})
    if cli:
        for key, label, better in (
                ("jobs_per_s", "end-to-end, 2 procs, from spawn, CLI-started (jobs/s)", max),
                ("startup_s", "  spawn to first job started (s)", min),
                ("steady_jobs_per_s", "  first start to last finish (jobs/s)", max),
                ("worker_cpu_us_per_job", "  worker CPU from spawn (us/job)", min),
                ("worker_cpu_us_per_job_after_start", "  worker CPU after first start (us/job)",
                 min),
                ("backend_cpu_us_per_job", "  Postgres backend CPU (us/job)", min),
                ("db_exec_us_per_job", "  statement execution, pg_stat_statements (us/job)",
                 min)):
            vals = {s: cli[s][key] for s in SYSTEMS if s in cli}
            rows.append((label, f(vals.get("skiplock")), f(vals.get("pgqueuer")), "-", "-",
                         ratio(vals.get("skiplock"), vals, better,
                               "" if better is max else " (lower is better)"), "-"))
    for batch, v in sorted(raw.items(), key=lambda kv: int(kv[0])):
        rows.append((f"raw SQL claim+complete {batch} x2 clients (jobs/s)", "-", "-", "-",
                     f(v["jobs_per_s"]), "-", "-"))
    for v in raw_all.values():
        if v.get("variant", "skiplock") == "skiplock" and v["batch"] != int(
                SETTINGS["skiplock"]["batch"]):
            continue
        rows.append((f"raw SQL {v['batch']} x2, {v['variant']}: jobs/s; claim / completion "
                     "us/job; WAL B/job", "-", "-", "-",
                     f"{f(v['jobs_per_s'])}; {f(v['claim_us_per_job'])} / "
                     f"{f(v['complete_us_per_job'])}; {f(v['wal_bytes_per_job'])}", "-", "-"))
    lat = res.get("latency", {})
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        if lat:
            vals = {s: lat[s][key] for s in SYSTEMS if s in lat}
            rows.append((f"enqueue->start latency {label} (ms)", f(vals.get("skiplock")),
                         f(vals.get("pgqueuer")), f(vals.get("procrastinate")), "-",
                         ratio(vals.get("skiplock"), vals, min, " (lower is better)"), "-"))
    for v in res.get("backlog", {}).values():
        rows.append((f"queue_stats, {v['mix']} mix, {v['rows']:,} rows (ms, operator / stats)",
                     f"{f(v['operator']['median_ms'])} / {f(v['cli']['median_ms'])}",
                     "-", "-", "-", "-", "-"))
    if e2e:
        for key, label in (("rss_idle_mb", "idle"), ("rss_load_mb", "under load")):
            vals = {s: res["e2e"][s][key] for s in e2e}
            rows.append((f"worker RSS {label} (MB)", f(vals.get("skiplock")),
                         f(vals.get("pgqueuer")), f(vals.get("procrastinate")), "-", "-", "-"))
    return rows


HEADER = ("metric", "skiplock", "pgqueuer 1.6", "procrastinate 3.10", "raw SQL",
          "skiplock / best peer", "skiplock / raw SQL")


def render_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def render_markdown(rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.5))
    colors = {"skiplock": "#2a7ab0", "pgqueuer": "#e08a2c", "procrastinate": "#6a9a3a",
              "raw SQL": "#888888"}

    def bars(ax: Any, data: dict[str, float], title: str, unit: str) -> None:
        names = list(data)
        # "skiplock (from spawn)": the system's colour, its qualifier on a line of its own
        # (side by side, the long labels ran into each other)
        drawn = ax.bar([n.replace(" (", "\n(") for n in names], [data[n] for n in names],
                       color=[colors.get(n.split(" (")[0], "#888") for n in names])
        for bar, n in zip(drawn, names, strict=True):
            if " (" in n and not n.startswith("raw"):
                bar.set_alpha(0.6)
        if len(names) > 4:
            for label in ax.get_xticklabels():
                label.set(rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel(unit)
        for i, n in enumerate(names):
            ax.text(i, data[n], f"{data[n]:,.0f}" if data[n] >= 100 else f"{data[n]:.2f}",
                    ha="center", va="bottom", fontsize=8)

    if "enqueue" in res:
        enqueued = {s: res["enqueue"][s]["jobs_per_s"] for s in res["enqueue"]}
        ceiling = res["enqueue"].get("skiplock", {}).get("ceiling_jobs_per_s")
        if ceiling:
            enqueued["raw SQL (COPY ceiling)"] = ceiling
        bars(axes[0], enqueued, "bulk enqueue", "jobs/s")
    if "e2e" in res:
        data = {s: res["e2e"][s]["jobs_per_s"] for s in res["e2e"]}
        raw = {k: v for k, v in res.get("raw_sql", {}).items()
               if v.get("variant", "skiplock") == "skiplock"}
        if raw:
            data["raw SQL"] = raw[max(raw, key=int)]["jobs_per_s"]
        for s, v in res.get("e2e_cli", {}).items():
            data[f"{s} (from spawn)"] = v["jobs_per_s"]
        bars(axes[1], data, "end-to-end no-op jobs, 2 processes", "jobs/s")
    if "latency" in res:
        names = list(res["latency"])
        x = range(len(names))
        axes[2].bar([i - 0.2 for i in x], [res["latency"][n]["p50_ms"] for n in names], 0.4,
                    label="p50", color="#2a7ab0")
        axes[2].bar([i + 0.2 for i in x], [res["latency"][n]["p99_ms"] for n in names], 0.4,
                    label="p99", color="#9cc3e0")
        axes[2].set_xticks(list(x), names)
        axes[2].set_title("enqueue -> start latency")
        axes[2].set_ylabel("ms")
        axes[2].legend()
    if "backlog" in res:
        for mix, color in (("history", "#2a7ab0"), ("backlog", "#e08a2c")):
            pts = [v for v in res["backlog"].values() if v["mix"] == mix]
            axes[3].plot([v["rows"] for v in pts], [v["operator"]["median_ms"] for v in pts],
                         "o-", color=color, label=f"{mix} mix, operator call")
        axes[3].axhline(5, color="red", linestyle="--", linewidth=1, label="5 ms target")
        axes[3].set_xscale("log")
        axes[3].set_title("queue_stats (backlog query)")
        axes[3].set_xlabel("rows in jobs table")
        axes[3].set_ylabel("ms")
        axes[3].legend()
    fig.suptitle(res.get("title", "Skiplock benchmark"))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k jobs, 100k rows max: a few minutes")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    ap.add_argument("--only", default="enqueue,e2e,e2e-cli,latency,raw,backlog",
                    help="comma-separated workloads: enqueue,e2e,e2e-cli,latency,raw,backlog")
    ap.add_argument("--repeats", type=int, help="runs per throughput figure (median); default 3")
    ap.add_argument("--e2e-jobs", type=int, help="override the end-to-end job count")
    ap.add_argument("--set", action="append", default=[], metavar="SYSTEM.KEY=VALUE",
                    help="override a setting, e.g. procrastinate.concurrency=10")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    profile = QUICK if a.quick else FULL
    if a.repeats:
        profile.repeats = a.repeats
    if a.e2e_jobs:
        profile.e2e_jobs = a.e2e_jobs
    for item in a.set:
        key, _, value = item.partition("=")
        system, _, name = key.partition(".")
        SETTINGS[system][name] = int(value)
    systems = [s for s in a.systems.split(",") if s]
    only = set(a.only.split(","))
    OUT.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)

    peer_py = peer_python() if set(systems) - {"skiplock"} else Path(sys.executable)
    server = PgServer(durable=True)
    log(f"starting PostgreSQL (fsync on) in {server.root}")
    server.init()
    with open(server.datadir / "postgresql.conf", "a") as conf:
        # per-statement execution time for the end-to-end and raw SQL figures (every system)
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
    server.start()
    res: dict[str, Any] = {
        "title": f"Skiplock benchmark ({'quick' if a.quick else 'full'}), "
                 f"{os.cpu_count()} cores, fsync on",
        "profile": profile.__dict__, "settings": SETTINGS, "latency_settings": LATENCY_SETTINGS,
        "server_settings": SERVER_SETTINGS, "backlog_mixes": BACKLOG_MIXES,
        "operator_cap": OPERATOR_CAP,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_before": os.getloadavg()},
        "peers": PEER_PINS,
    }
    try:
        with server.admin() as conn:
            for k, v in SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {k} = '{v}'")
            conn.execute("SELECT pg_reload_conf()")
            res["postgres"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            res["fsync"] = str(conn.execute("SHOW fsync").fetchone()[0])  # type: ignore[index]
        b = Bench(server, peer_py, profile)
        started = time.monotonic()
        for name, fn in (("enqueue", bench_enqueue), ("e2e", bench_e2e),
                         ("latency", bench_latency)):
            if name in only:
                log(f"== {name}")
                res[name] = {}
                for system in systems:
                    res[name][system] = fn(b, system)
            if name == "e2e" and "e2e-cli" in only:
                log("== e2e-cli (from spawning CLI-started workers to the last finish)")
                res["e2e_cli"] = bench_e2e_cli(b, systems)
        if "raw" in only:
            log("== raw SQL ceiling (pgbench)")
            batches = sorted({20, 200, int(SETTINGS["skiplock"]["batch"])})
            res["raw_sql"] = bench_raw_sql(b, batches)
        if "backlog" in only:
            log("== backlog query (skiplock.inspection.queue_stats)")
            res["backlog"] = bench_backlog(b, profile.backlog_rows)
        res["seconds"] = time.monotonic() - started
        res["machine"]["load_after"] = os.getloadavg()
    finally:
        server.destroy()
    rows = build_rows(res)
    res["table"] = [dict(zip(HEADER, r, strict=True)) for r in rows]
    (a.out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    (a.out / "results.md").write_text(render_markdown(rows) + "\n")
    plot(res, a.out / "results.png")
    print()
    print(res["title"] + f"; load average before {res['machine']['load_before'][0]:.1f}")
    print(render_table(rows))
    log(f"wrote {a.out / 'results.json'}, results.md and results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
