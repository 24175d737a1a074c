"""A sustained run (issue 15): real `skiplock worker` processes held at 80 % of their measured
peak for ``--minutes``, autovacuum on with its defaults; how throughput, lag, table and index
sizes and dead tuples move over time.

    .venv/bin/python -m benchmarks.soak [--minutes 30] [--share 0.8] [--peak-jobs 60000]
        [--probe-seconds 90] [--retention 300]
    make bench-soak

One benchmark-private PostgreSQL (fsync on). First the drain peak: ``--peak-jobs`` no-op jobs
queued, then 2 worker processes spawned as a user starts them (benchmarks/e2e_cli.py's spawn,
the harness's CLI command: concurrency 200 each), the peak being the first start to the last
finish. That peak has the 2 cores to itself; a sustained run shares them with its producer, so
the run's rate comes from a second, loaded peak: the producer enqueues at the drain peak's rate
for ``--probe-seconds`` and the workers' rate over the probe's last 60 s (a growing backlog: they
were saturated) is what this machine sustains with its producer; the backlog is then drained.
The same workers stay up while the producer enqueues at ``--share`` x the loaded peak
(Client.enqueue_many every 50 ms, keeping to its schedule), for ``--minutes``. Every interval
``skiplock prune --older-than RETENTION`` runs, as the chart's prune CronJob would on a
schedule fit for this rate (at 15k jobs/s the default 7 days would be 9 billion rows): the
table holds ``--retention`` seconds of finished jobs (``--retention -1``: never pruned, the
table grows for the whole run).

Every ``--interval`` seconds (60) it prints the jobs finished in that interval per second, the
median claim-to-finish (started_at -> finished_at) and enqueue-to-finish lag of those jobs, the
backlog, the sizes of jobs and results (heap, indexes, total) and their dead tuples and
autovacuum runs (pg_stat_user_tables). At the end: throughput of the last interval against the
first (the target: within 10 %), the sizes, artifacts/bench/soak.json and docs/img/soak.png.
Bounded: the producer stops after ``--minutes``, the drain after 120 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from tests.support.pgserver import PgServer

from benchmarks.e2e_cli import TIMES_SQL, Spawned, spawn, wait_or_kill
from benchmarks.local_support import migrated_server
from benchmarks.run import OUT as BENCH_OUT
from benchmarks.run import ROOT, SERVER_SETTINGS, SETTINGS, cli_worker_cmds, runner_env
from skiplock import Client

OUT = Path("artifacts/bench/soak.json")
PLOT = Path("docs/img/soak.png")
TICK = 0.05  # the producer's enqueue period (s)

SAMPLE_SQL = """
SELECT count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
       (SELECT count(*) FROM skiplock.jobs WHERE state = 'queued')
FROM skiplock.jobs WHERE finished_at >= %(since)s AND finished_at < %(until)s
"""
SIZES_SQL = """
SELECT pg_relation_size('skiplock.jobs'), pg_indexes_size('skiplock.jobs'),
       pg_total_relation_size('skiplock.jobs'), pg_relation_size('skiplock.results'),
       pg_indexes_size('skiplock.results'), pg_total_relation_size('skiplock.results')
"""
DEAD_SQL = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count
FROM pg_stat_user_tables WHERE schemaname = 'skiplock' AND relname IN ('jobs', 'results')
"""


# "anything left?" as two partial-index probes: e2e_cli's LEFT_SQL (`state IN (...)`) is a
# sequential scan, and after a sustained run the table holds millions of finished rows
LEFT = ("SELECT EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'queued') "
        "OR EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'running')")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def produce(url: str, rate: float, seconds: float) -> None:
    """Enqueue no-op jobs at ``rate`` per second for ``seconds`` (its own process, so the
    monitor's queries and the workers never slow the producer's loop). Prints what it did."""
    with Client(url) as client:
        start = time.perf_counter()
        done = 0
        behind_max = 0.0
        while (now := time.perf_counter() - start) < seconds:
            due = int(rate * now) - done
            if due > 0:
                n = min(due, 20_000)
                done += client.enqueue_many({"task": "noop", "args": {}} for _ in range(n))
                behind_max = max(behind_max, (due - n) / rate)
            time.sleep(max(0.0, TICK - (time.perf_counter() - start - now)))
        print(json.dumps({"jobs": done, "seconds": time.perf_counter() - start,
                          "target": rate * seconds, "behind_max_s": behind_max}), flush=True)


def peak(url: str, jobs: int) -> tuple[Spawned, float]:
    """Queue ``jobs``, spawn the workers, wait for the backlog to drain; the workers (left
    running) and the rate from the first start to the last finish."""
    with Client(url) as client:
        left = jobs
        while left:
            left -= client.enqueue_many({"task": "noop", "args": {}}
                                        for _ in range(min(10_000, left)))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE skiplock.jobs")
        env = {**runner_env(), "SKIPLOCK_DATABASE_URL": url}
        workers = spawn(cli_worker_cmds("skiplock", Path(sys.executable), SETTINGS["skiplock"]),
                        env, ROOT, BENCH_OUT, "soak")
        try:
            drain(conn, workers, "the peak backlog")
        except BaseException:
            workers.stop()
            raise
        first, last, finished = conn.execute(TIMES_SQL["skiplock"]).fetchone()  # type: ignore[misc]
    return workers, int(finished) / (last - first)


def loaded_peak(url: str, workers: Spawned, rate: float, seconds: float) -> float:
    """The workers' rate while the producer enqueues at ``rate`` (more than they finish) for
    ``seconds``: jobs finished in its last 60 s (or its second half) per second. Then the
    backlog is drained, bounded by 300 s."""
    window = min(60.0, seconds / 2)
    producer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", "--produce", url, "--rate", str(rate),
         "--seconds", str(seconds)], cwd=ROOT, env=runner_env(), stdout=subprocess.PIPE,
        text=True)
    try:
        began = time.time()
        time.sleep(seconds - window)
        since = time.time()
        time.sleep(window)
        until = time.time()
        producer.communicate(timeout=60)
    finally:
        if producer.poll() is None:
            producer.terminate()
            wait_or_kill(producer, 30)
    with psycopg.connect(url, autocommit=True) as conn:
        s = sample(conn, since, until)
        log(f"  loaded: {s['jobs_per_s']:,.0f} jobs/s over the last {window:.0f} s of "
            f"{time.time() - began:.0f}; backlog {s['backlog']:,}; draining")
        drain(conn, workers, "the loaded peak's backlog")
    return float(s["jobs_per_s"])


def drain(conn: psycopg.Connection[Any], workers: Spawned, what: str,
          seconds: float = 300) -> None:
    """Wait until no job is queued or running; bounded, and a worker that exits ends it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = conn.execute(LEFT).fetchone()
        if row is not None and not row[0]:
            return
        if any(p.poll() is not None for p in workers.procs):
            raise RuntimeError(f"a worker exited early; see {BENCH_OUT}/soak-cli-worker-*")
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not drain in {seconds:.0f} s")


class Prune:
    """One `skiplock prune --older-than RETENTION` (the CLI the chart's CronJob runs) in the
    background; a thread notes when it ends, so a slow prune neither blocks the samples nor
    loses its duration."""

    def __init__(self, url: str, retention: float) -> None:
        self.began, self.ended, self.out = time.time(), 0.0, ""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "skiplock", "prune", "--older-than", str(retention)],
            cwd=ROOT, env={**runner_env(), "SKIPLOCK_DATABASE_URL": url},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._thread = threading.Thread(target=self._wait, daemon=True)
        self._thread.start()

    def _wait(self) -> None:
        self.out, _ = self.proc.communicate()
        self.ended = time.time()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float = 600) -> dict[str, Any]:
        """Its deleted count and seconds, waiting up to ``timeout`` for it."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.proc.kill()
            raise RuntimeError(f"skiplock prune still running after {timeout:.0f} s")
        if self.proc.returncode != 0:
            raise RuntimeError(f"skiplock prune failed: {self.out.strip()[-500:]}")
        n = int(self.out.split()[1]) if self.out.startswith("pruned ") else -1
        return {"pruned": n, "seconds": self.ended - self.began}


def sample(conn: psycopg.Connection[Any], since: float, until: float) -> dict[str, Any]:
    args = {"since": _ts(since), "until": _ts(until)}
    n, run_lag, lag, backlog = conn.execute(SAMPLE_SQL, args).fetchone()  # type: ignore[misc]
    sizes = conn.execute(SIZES_SQL).fetchone()
    assert sizes is not None
    dead = {r[0]: {"live": int(r[1]), "dead": int(r[2]), "autovacuums": int(r[3]),
                   "autoanalyzes": int(r[4])} for r in conn.execute(DEAD_SQL).fetchall()}
    return {"at": until, "finished": int(n), "jobs_per_s": int(n) / (until - since),
            "claim_to_finish_p50_ms": (run_lag or 0.0) * 1000,
            "enqueue_to_finish_p50_ms": (lag or 0.0) * 1000, "backlog": int(backlog),
            **dict(zip(("jobs_heap", "jobs_indexes", "jobs_total", "results_heap",
                        "results_indexes", "results_total"), (int(x) for x in sizes),
                       strict=True)),
            "tables": dead}


def _ts(epoch: float) -> Any:
    import datetime as dt
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def mb(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def print_sample(i: int, s: dict[str, Any]) -> None:
    if i == 0:
        print(f"{'min':>4} {'jobs/s':>8} {'run p50 ms':>10} {'e2f p50 ms':>10} {'backlog':>8} "
              f"{'jobs MB heap/idx/total':>24} {'results MB':>10} {'dead jobs':>10} "
              f"{'dead res':>9} {'autovac j/r':>11} {'pruned (s)':>16}", flush=True)
    t = s["tables"]
    j, r = t.get("jobs", {}), t.get("results", {})
    print(f"{s['minute']:>4.1f} {s['jobs_per_s']:>8,.0f} {s['claim_to_finish_p50_ms']:>10.1f} "
          f"{s['enqueue_to_finish_p50_ms']:>10.1f} {s['backlog']:>8,} "
          f"{mb(s['jobs_heap']) + '/' + mb(s['jobs_indexes']) + '/' + mb(s['jobs_total']):>24} "
          f"{mb(s['results_total']):>10} {j.get('dead', 0):>10,} {r.get('dead', 0):>9,} "
          f"{str(j.get('autovacuums', 0)) + '/' + str(r.get('autovacuums', 0)):>11} "
          f"{_pruned(s.get('prune')):>16}", flush=True)


def _pruned(p: dict[str, Any] | None) -> str:
    return "-" if p is None else f"{p['pruned']:,} ({p['seconds']:.1f})"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["samples"]
    x = [p["minute"] for p in s]
    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    ax = axes[0][0]
    ax.plot(x, [p["jobs_per_s"] for p in s], marker="o", label="finished per s")
    ax.axhline(res["target_rate"], color="grey", linestyle="--", label="producer target")
    ax.set_title("throughput (jobs/s)")
    ax.legend()
    ax = axes[0][1]
    ax.plot(x, [p["claim_to_finish_p50_ms"] for p in s], marker="o", label="claim -> finish")
    ax.plot(x, [p["enqueue_to_finish_p50_ms"] for p in s], marker="o",
            label="enqueue -> finish")
    ax.set_title("p50 lag (ms)")
    ax.legend()
    ax = axes[1][0]
    for key, label in (("jobs_heap", "jobs heap"), ("jobs_indexes", "jobs indexes"),
                       ("results_total", "results total")):
        ax.plot(x, [p[key] / 2**20 for p in s], marker="o", label=label)
    ax.set_title("size (MB)")
    ax.legend()
    ax = axes[1][1]
    for rel in ("jobs", "results"):
        ax.plot(x, [p["tables"].get(rel, {}).get("dead", 0) for p in s], marker="o",
                label=f"{rel} dead tuples")
    ax.set_title("dead tuples (pg_stat_user_tables)")
    ax.legend()
    for a in axes.flat:
        a.set_xlabel("minute")
    kept = (f"finished jobs kept {res['retention_s']:.0f} s" if res["retention_s"] >= 0
            else "finished jobs kept")
    fig.suptitle(f"Skiplock soak: {res['minutes']} min at {res['share']:.0%} of the loaded "
                 f"peak ({res['target_rate']:,.0f} of {res['peak_jobs_per_s']:,.0f} jobs/s)\n"
                 f"{kept}, 2 worker processes, autovacuum defaults, fsync on")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def run(server: PgServer, a: argparse.Namespace) -> dict[str, Any]:
    url = server.url()
    with server.admin() as conn:
        for k, v in SERVER_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {k} = '{v}'")
        conn.execute("SELECT pg_reload_conf()")
    log(f"peak: {a.peak_jobs:,} queued jobs, 2 workers spawned")
    workers, drain_rate = peak(url, a.peak_jobs)
    log(f"drain peak {drain_rate:,.0f} jobs/s; loaded peak: producing that for "
        f"{a.probe_seconds:.0f} s")
    try:
        peak_rate = loaded_peak(url, workers, drain_rate, a.probe_seconds)
    except BaseException:
        workers.stop()
        raise
    target = peak_rate * a.share
    log(f"loaded peak {peak_rate:,.0f} jobs/s; producing {target:,.0f} jobs/s for "
        f"{a.minutes} min, pruning to {a.retention:.0f} s every {a.interval:.0f} s")
    res: dict[str, Any] = {"minutes": a.minutes, "share": a.share, "peak_jobs": a.peak_jobs,
                           "drain_peak_jobs_per_s": drain_rate, "peak_jobs_per_s": peak_rate,
                           "probe_seconds": a.probe_seconds, "retention_s": a.retention,
                           "target_rate": target, "interval_s": a.interval, "samples": []}
    seconds = a.minutes * 60
    producer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.soak", "--produce", url, "--rate", str(target),
         "--seconds", str(seconds)], cwd=ROOT, env=runner_env(), stdout=subprocess.PIPE,
        text=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            began = time.time()
            prev = began
            i = 0
            pruning: Prune | None = None
            while (until := began + (i + 1) * a.interval) <= began + seconds + 0.5:
                time.sleep(max(0.0, until - time.time()))
                if producer.poll() not in (None, 0) or any(
                        p.poll() is not None for p in workers.procs):
                    raise RuntimeError("the producer or a worker exited early")
                s = sample(conn, prev, until)
                s["minute"] = (until - began) / 60
                # the prune started an interval ago, when it is done (a slow one is not waited
                # for: the samples keep their cadence, and no second prune overlaps it)
                s["prune"] = None
                if pruning is not None and pruning.done():
                    s["prune"], pruning = pruning.result(), None
                if a.retention >= 0 and pruning is None:
                    pruning = Prune(url, a.retention)
                res["samples"].append(s)
                print_sample(i, s)
                prev, i = until, i + 1
            res["last_prune"] = pruning.result() if pruning is not None else None
            out, _ = producer.communicate(timeout=60)
            res["producer"] = json.loads(out.strip().splitlines()[-1])
            deadline = time.monotonic() + 120
            drained = False
            while time.monotonic() < deadline:  # the drain: what was left at the end
                row = conn.execute(LEFT).fetchone()
                if row is not None and not row[0]:
                    drained = True
                    break
                time.sleep(0.2)
            res["drain_s"] = 120 - max(0.0, deadline - time.monotonic())
            res["drained"] = drained  # False: jobs were left after 120 s (drain_s is a floor)
            if not drained:
                print("  the backlog did not drain within 120 s: drain_s is a lower bound")
            res["final"] = sample(conn, began, time.time())
    finally:
        try:
            if producer.poll() is None:
                producer.terminate()
                wait_or_kill(producer, 30)
        finally:
            workers.stop()  # whatever the producer did
    return res


def summarise(res: dict[str, Any]) -> list[str]:
    s = res["samples"]
    # the start: the second interval when there are a few (the first holds the ramp-up from
    # idle workers and an empty table), the end: the last one
    first, last = s[1 if len(s) >= 4 else 0], s[-1]
    ratio = last["jobs_per_s"] / first["jobs_per_s"] if first["jobs_per_s"] else float("nan")
    f = res["final"]
    return [
        f"drain peak {res['drain_peak_jobs_per_s']:,.0f} jobs/s (from {res['peak_jobs']:,} "
        f"queued, no producer); loaded peak {res['peak_jobs_per_s']:,.0f} jobs/s (producer "
        f"running); retention {res['retention_s']:.0f} s, pruned every interval; "
        f"target {res['target_rate']:,.0f} jobs/s ({res['share']:.0%}); producer enqueued "
        f"{res['producer']['jobs']:,} of {res['producer']['target']:,.0f} "
        f"(at most {res['producer']['behind_max_s']:.2f} s behind)",
        f"throughput at the start {first['jobs_per_s']:,.0f} jobs/s, last "
        f"{last['jobs_per_s']:,.0f}: {ratio:.3f}x (target: within 10 %)",
        f"p50 claim->finish first {first['claim_to_finish_p50_ms']:.1f} ms, last "
        f"{last['claim_to_finish_p50_ms']:.1f} ms; enqueue->finish first "
        f"{first['enqueue_to_finish_p50_ms']:.1f} ms, last {last['enqueue_to_finish_p50_ms']:.1f}"
        f" ms; backlog at the end {last['backlog']:,}, drained in {res['drain_s']:.1f} s",
        f"sizes at the end: jobs heap {mb(f['jobs_heap'])} MB, indexes {mb(f['jobs_indexes'])} "
        f"MB, total {mb(f['jobs_total'])} MB; results total {mb(f['results_total'])} MB "
        f"(indexes {mb(f['results_indexes'])} MB); jobs rows live "
        f"{f['tables'].get('jobs', {}).get('live', 0):,}, dead "
        f"{f['tables'].get('jobs', {}).get('dead', 0):,}; autovacuum runs jobs "
        f"{f['tables'].get('jobs', {}).get('autovacuums', 0)}, results "
        f"{f['tables'].get('results', {}).get('autovacuums', 0)}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--share", type=float, default=0.8, help="of the measured peak")
    ap.add_argument("--peak-jobs", type=int, default=60_000)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    ap.add_argument("--probe-seconds", type=float, default=90.0,
                    help="the loaded peak's producer run (s)")
    ap.add_argument("--retention", type=float, default=300.0,
                    help="seconds of finished jobs kept: prune every interval (-1: never)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--plot", type=Path, default=PLOT)
    ap.add_argument("--produce", metavar="URL", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.produce:
        produce(a.produce, a.rate, a.seconds)
        return 0
    with migrated_server(durable=True) as server:
        res = run(server, a)
    lines = summarise(res)
    print()
    print("\n".join(lines))
    res["summary"] = lines
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2, default=str))
    plot(res, a.plot)
    log(f"wrote {a.out} and {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
