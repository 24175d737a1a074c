"""The worker's own CPU per no-op job, tree against tree: two `skiplock worker MODULE:APP
--concurrency 200` processes of each tree drain the same backlog, measured as the harness's
from-spawn figure measures it (benchmarks/e2e_cli.py: spawn to the last finish, the workers'
and their Postgres backends' CPU per job). Rounds interleave the trees, the order flipping
each round, on one fsync-on server with the harness's settings.

    .venv/bin/python -m benchmarks.worker_cpu --tree before=PATH --tree after=. [--rounds 4]

A tree is a directory holding ``worker/skiplock`` (another checkout: ``git worktree add``)
put first on PYTHONPATH; its schema is this checkout's (run trees whose worker runs on it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg
from tests.support.pgserver import PgServer

from benchmarks.e2e_cli import run_once
from benchmarks.local_support import load_noop_jobs
from benchmarks.run import SERVER_SETTINGS
from benchmarks.worker_startup import env_for
from skiplock.db import Database

ROOT = Path(__file__).resolve().parent.parent
FIGURES = (("jobs_per_s", "jobs/s from spawn", ",.0f"),
           ("steady_jobs_per_s", "first start to last finish", ",.0f"),
           ("worker_cpu_us_per_job", "worker CPU us/job", ".1f"),
           ("backend_cpu_us_per_job", "backend CPU us/job", ".1f"))


def one_round(tree: Path, url: str, jobs: int, logdir: Path) -> dict[str, Any]:
    load_noop_jobs(url, jobs)
    cmd = [sys.executable, "-m", "skiplock", "worker",
           "benchmarks.runners.skiplock_cli_app:app", "--concurrency", "200"]
    return run_once("skiplock", url, [cmd, cmd], env_for(tree, url, "auto"), ROOT, logdir,
                    jobs, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=200_000)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    a = ap.parse_args()
    trees = {name: Path(path).resolve()
             for name, _, path in (t.partition("=") for t in a.tree)} or {"this checkout": ROOT}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    server = PgServer(durable=True)
    server.init()
    with open(server.datadir / "postgresql.conf", "a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\n")  # run_once reads it
    server.start()
    try:
        with server.admin() as conn:
            for k, v in SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {k} = '{v}'")
            conn.execute("SELECT pg_reload_conf()")
        url = server.url()
        with Database(url) as db:
            db.migrate()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with tempfile.TemporaryDirectory() as logs:
            for r in range(a.rounds):
                order = list(trees.items())
                for name, tree in order if r % 2 == 0 else order[::-1]:
                    res = one_round(tree, url, a.jobs, Path(logs))
                    if not res["finished"]:
                        raise SystemExit(f"{name}: only {res['jobs']} of {a.jobs} jobs "
                                         "finished in 300 s")
                    results[name].append(res)
                    print(f"round {r + 1}/{a.rounds} {name}: " + ", ".join(
                        f"{label} {res[key]:{fmt}}" for key, label, fmt in FIGURES), flush=True)
    finally:
        server.stop()
        server.destroy()
    print(f"\nmedian of {a.rounds} rounds, {a.jobs:,} no-op jobs, two worker processes "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):")
    print(f"{'tree':<16}" + "".join(f"{label:>28}" for _, label, _ in FIGURES))
    for name, rs in results.items():
        print(f"{name:<16}" + "".join(
            f"{statistics.median(x[key] for x in rs):>28{fmt}}" for key, label, fmt in FIGURES))


if __name__ == "__main__":
    main()
