"""What starting `skiplock worker MODULE:APP --concurrency 200` costs up to its first job:
CPU (user + system) and wall time from the spawn of each of two processes to the first job
each runs, read inside the process (benchmarks/runners/startup_app.py); and the CPU of
importing `skiplock.cli` plus the app module alone. Rounds interleave the variants.

    .venv/bin/python -m benchmarks.worker_startup [--rounds 7] [--tree NAME=PATH ...]

A tree is a directory holding ``worker/skiplock`` (another checkout, e.g. ``git archive`` of
an older commit) put first on PYTHONPATH; the default is this checkout. Each tree runs with
SKIPLOCK_EVENT_LOOP=asyncio and, when uvloop is installed, =auto.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from tests.support.pgserver import running_server

ROOT = Path(__file__).resolve().parent.parent
IMPORT_ONLY = ("import resource, skiplock.cli, benchmarks.runners.startup_app\n"
               "r = resource.getrusage(resource.RUSAGE_SELF)\n"
               "print(r.ru_utime + r.ru_stime)")


def env_for(tree: Path, url: str, loop: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKIPLOCK_")}
    env.update(PYTHONPATH=f"{tree / 'worker'}{os.pathsep}{ROOT}", SKIPLOCK_DATABASE_URL=url,
               SKIPLOCK_EVENT_LOOP=loop, PYTHONDONTWRITEBYTECODE="")
    return env


def one_round(tree: Path, url: str, loop: str, jobs: int) -> dict[str, Any]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE skiplock.jobs CASCADE")
        conn.execute("INSERT INTO skiplock.jobs (queue, task, args) SELECT 'default', 'noop', "
                     "'{}' FROM generate_series(1, %s)", (jobs,))
    report = Path(tempfile.mktemp(prefix="skiplock-startup-"))
    procs = []
    try:
        for _ in range(2):
            env = {**env_for(tree, url, loop), "BENCH_STARTUP_FILE": str(report),
                   "BENCH_SPAWNED_AT": repr(time.time())}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "skiplock", "worker",
                 "benchmarks.runners.startup_app:app", "--concurrency", "200"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines = report.read_text().splitlines() if report.exists() else []
            if len(lines) == 2:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"not both workers ran a job within 60 s ({tree}, {loop})")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    got = [json.loads(line) for line in lines]
    report.unlink()
    assert all(g["loop"] == ("asyncio" if loop == "asyncio" else g["loop"]) for g in got)
    return {"cpu_s": sum(g["cpu_s"] for g in got), "wall_s": max(g["wall_s"] for g in got),
            "loop": got[0]["loop"], "modules": got[0]["modules"]}


def import_cpu(tree: Path, url: str) -> float:
    done = subprocess.run([sys.executable, "-c", IMPORT_ONLY], cwd=ROOT, check=True,
                          env=env_for(tree, url, "asyncio"), capture_output=True, text=True)
    return float(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--jobs", type=int, default=20000, help="backlog each round starts with")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    a = ap.parse_args()
    trees = {name: Path(path) for name, _, path in (t.partition("=") for t in a.tree)}
    trees = trees or {"this checkout": ROOT}
    loops = ["asyncio"]
    try:
        import uvloop  # noqa: F401
        loops.append("auto")
    except ImportError:
        pass
    results: dict[str, list[dict[str, Any]]] = {}
    with running_server() as server:
        with server.admin() as conn:
            conn.execute("CREATE DATABASE startup")
        url = server.url("startup")
        # the first tree's schema (an older tree's worker may not know a newer migration)
        subprocess.run([sys.executable, "-m", "skiplock", "migrate"], cwd=ROOT, check=True,
                       env=env_for(next(iter(trees.values())), url, "asyncio"),
                       capture_output=True)
        for tree in trees.values():  # writes the trees' bytecode caches, as any install has
            import_cpu(tree, url)
        for r in range(a.rounds):
            for name, tree in trees.items():
                # a tree from before SKIPLOCK_EVENT_LOOP runs asyncio's loop only
                has_choice = (tree / "worker" / "skiplock" / "eventloop.py").exists()
                for loop in loops if has_choice else ["asyncio"]:
                    key = f"{name}, {loop}"
                    res = one_round(tree, url, loop, a.jobs)
                    res["import_cpu_s"] = import_cpu(tree, url)
                    results.setdefault(key, []).append(res)
                    print(f"round {r + 1} {key}: {res}", flush=True)
    print(f"\nmedian of {a.rounds} rounds, two `skiplock worker --concurrency 200` processes "
          f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}):")
    print(f"{'variant':<32} {'loop':<8} {'CPU to 1st job':>15} {'wall to 1st job':>16} "
          f"{'import CPU (1 proc)':>20}")
    for key, rs in results.items():
        print(f"{key:<32} {rs[0]['loop']:<8} "
              f"{statistics.median(x['cpu_s'] for x in rs):>13.3f} s "
              f"{statistics.median(x['wall_s'] for x in rs):>14.3f} s "
              f"{statistics.median(x['import_cpu_s'] for x in rs):>18.3f} s")


if __name__ == "__main__":
    main()
