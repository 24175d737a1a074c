"""Flat with history (issue 15): the claim, end-to-end throughput and the operator's stats call
on an empty jobs table and on one holding 10M finished jobs kept for their retention; then the
stats call and the dashboard overview with 1,000 queues.

    .venv/bin/python -m benchmarks.history_flatness [--history 10000000] [--e2e-jobs 20000]
    make bench-history

One benchmark-private PostgreSQL (fsync on). For each history size (0, then ``--history``):

- the claim (sql/queries.sql ``claim``) with pgbench, batch 1 and 200, as claim_cost measures it
  (2 clients, prepared, synchronous_commit off); claims/s and the time per claim statement;
- the harness's end-to-end (benchmarks.run ``bench_e2e``: 2 worker processes, concurrency 200,
  ``--e2e-jobs`` no-op jobs) for Skiplock, against this server and its history;
- the operator's stats call as its reconcile loop makes it each poll
  (skiplock.inspection.poll: queue_stats with its queues and count cap, and next_firing, in
  one round trip), and the stats call alone: median and p99 of ``--calls`` calls.

The history: succeeded jobs (1 in 100 dead) with finished_at spread over the last 6 days (the
default retention is 7: nothing is prunable), half of the succeeded ones with a results row
(a task that returns a value; the other half returned None), loaded by one INSERT ... SELECT
generate_series each into skiplock.jobs and skiplock.results, then VACUUM ANALYZE.

Then 1,000 queues (q0000..q0999), each with a backlog (runnable, scheduled, running, dead and
a few just finished), and the same stats call over all 1,000 queues, the dashboard's overview
(GET /v1/queues and GET /ui/ through the real API app, fastapi's TestClient), median and p99.

Prints a table and writes artifacts/bench/history_flatness.json. Bounded: every loop has a
count, pgbench and the workers a time limit.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import run as run_module
from benchmarks.claim_cost import claim_rate, pgbench_script
from benchmarks.common import latency_summary
from benchmarks.local_support import migrated_server
from benchmarks.run import (
    OPERATOR_CAP,
    QUICK,
    SERVER_SETTINGS,
    Bench,
    Profile,
    bench_e2e,
    pgbench_path,
)
from skiplock import inspection
from skiplock.db import Database
from skiplock.sql import queries

OUT = Path("artifacts/bench/history_flatness.json")
RESULT_SHARE = 0.5     # of the succeeded history jobs, the share that returned a value
DEAD_EVERY = 100       # 1 history job in 100 is dead
RETENTION_SPAN = "6 days"  # history finished within the last 6 days (retention: 7)
QUEUES = 1000
# per queue in the 1,000-queue phase: runnable, scheduled (later), running, dead, succeeded
# in the last 30 minutes (the overview's throughput window)
PER_QUEUE = {"runnable": 50, "scheduled": 5, "running": 2, "dead": 20, "recent": 30}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- loading ----------------------------------------------------------------------------------

def load_history(url: str, start: int, stop: int, chunk: int = 1_000_000) -> float:
    """History rows start..stop-1 (finished jobs of queue 'default'), and their results rows;
    seconds taken. replica mode skips the per-statement NOTIFY trigger and the results foreign
    key's per-row check: every job_id loaded exists (it is the row just inserted), and the
    rows are what the worker writes, not a path under test."""
    began = time.perf_counter()
    total = stop - start
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET synchronous_commit = off")
        every = round(1 / RESULT_SHARE)
        for lo in range(start, stop, chunk):
            hi = min(stop, lo + chunk)
            # g/total over the span: one row per ~50 ms of the last 6 days, oldest first; the
            # results rows from the rows just inserted (RETURNING), so no scan of either table
            conn.execute(f"""
                WITH ins AS (
                    INSERT INTO skiplock.jobs (queue, task, args, state, attempts, run_at,
                                               created_at, started_at, finished_at, last_error)
                    SELECT 'default', 'noop', '{{}}'::jsonb,
                           (CASE WHEN g %% {DEAD_EVERY} = 0 THEN 'dead' ELSE 'succeeded' END
                           )::skiplock.job_state,
                           1, t, t, t, t + interval '2 ms',
                           CASE WHEN g %% {DEAD_EVERY} = 0 THEN 'boom' END
                    FROM generate_series(%s::bigint, %s::bigint - 1) AS g,
                    LATERAL (SELECT now() - interval '{RETENTION_SPAN}'
                                    + (g - %s)::float8 / %s * interval '{RETENTION_SPAN}'
                                    - interval '1 minute' AS t) AS s
                    RETURNING id, state, finished_at
                )
                INSERT INTO skiplock.results (job_id, result, created_at)
                SELECT id, '{{"ok": true}}'::jsonb, finished_at FROM ins
                WHERE state = 'succeeded' AND id %% {every} = 0
            """, [lo, hi, start, max(1, total)])
            log(f"  history: {hi - start:,}/{total:,} jobs rows and their results rows "
                f"({time.perf_counter() - began:.0f} s)")
        conn.execute("VACUUM ANALYZE skiplock.jobs")
        conn.execute("VACUUM ANALYZE skiplock.results")
        # the load's WAL (GBs) would otherwise force a checkpoint in the middle of the next
        # measurement, and full-page writes after it: the figures would show the load
        conn.execute("CHECKPOINT")
        log(f"  history: vacuumed, analysed, checkpointed ({time.perf_counter() - began:.0f} s)")
    return time.perf_counter() - began


def clear_live(url: str) -> None:
    """No queued or running job left (what a previous measurement left behind)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM skiplock.jobs WHERE state IN ('queued', 'running')")
        conn.execute("VACUUM ANALYZE skiplock.jobs")


def load_queues(url: str) -> None:
    """1,000 queues with a task each and PER_QUEUE rows of every kind."""
    p = PER_QUEUE
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO skiplock.tasks (name, params, max_attempts, queue) "
                     "SELECT 'task' || lpad(q::text, 4, '0'), '{}', 5, "
                     "'q' || lpad(q::text, 4, '0') FROM generate_series(0, %s - 1) AS q "
                     "ON CONFLICT (name) DO NOTHING", [QUEUES])
        kinds = [("queued", "now() - interval '1 minute'", "NULL", "NULL", "NULL",
                  p["runnable"]),
                 ("queued", "now() + interval '1 hour'", "NULL", "NULL", "NULL",
                  p["scheduled"]),
                 ("running", "now()", "'bench:1:x'", "now() + interval '1 hour'", "NULL",
                  p["running"]),
                 ("dead", "now() - interval '20 minutes'", "NULL", "NULL",
                  "now() - interval '10 minutes'", p["dead"]),
                 ("succeeded", "now() - interval '20 minutes'", "NULL", "NULL",
                  "now() - (n || ' seconds')::interval", p["recent"])]
        for state, run_at, locked_by, locked_until, finished_at, n in kinds:
            conn.execute(f"""
                INSERT INTO skiplock.jobs (queue, task, state, attempts, run_at, locked_by,
                                           locked_until, started_at, finished_at)
                SELECT 'q' || lpad(q::text, 4, '0'), 'task' || lpad(q::text, 4, '0'),
                       '{state}', {0 if state == 'queued' else 1}, {run_at}, {locked_by},
                       {locked_until}, {'NULL' if state == 'queued' else 'now()'},
                       {finished_at}
                FROM generate_series(0, {QUEUES - 1}) AS q, generate_series(1, {n}) AS n
            """)
        conn.execute("VACUUM ANALYZE skiplock.jobs")
        conn.execute("VACUUM ANALYZE skiplock.tasks")


# -- measurements -----------------------------------------------------------------------------

def timed(fn: Callable[[], object], calls: int,
          before: Callable[[], object] | None = None) -> dict[str, float]:
    """``fn``'s latency over ``calls`` calls after 3 to warm up; ``before`` runs untimed
    ahead of each call (e.g. a new backlog sample, so that each call is a cache miss)."""
    for _ in range(3):  # warm: prepared statements, caches
        if before is not None:
            before()
        fn()
    seconds = []
    for _ in range(calls):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return latency_summary(seconds)


def claim_figures(url: str, pgbench: Path, script: Path, rounds: int) -> dict[str, Any]:
    """The claim at batch 1 and 200: claims/s and ms per claim statement (2 clients)."""
    out: dict[str, Any] = {}
    vars_ = {"skip_tasks": "{}", "skip_ids": "{}"}
    for batch, jobs in ((1, 20_000), (200, 100_000)):
        rates = []
        for _ in range(rounds):
            clear_live(url)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("INSERT INTO skiplock.jobs (task) SELECT 'noop' "
                             "FROM generate_series(1, %s)", [jobs])
                conn.execute("VACUUM ANALYZE skiplock.jobs")
            rates.append(claim_rate(pgbench, url, script, vars_, jobs, batch))
        rate = statistics.median(rates)
        # each of the 2 clients runs one claim statement (its transaction) at a time
        out[f"batch_{batch}"] = {"claims_per_s": rate, "runs": rates,
                                 "ms_per_claim": 2 * batch / rate * 1000}
        log(f"  claim batch {batch}: {rate:,.0f} claims/s, "
            f"{2 * batch / rate * 1000:.3f} ms per claim statement")
    clear_live(url)
    return out


class HistoryBench(Bench):
    """The harness's Bench on one database that keeps its history: each 'fresh' database is
    this one with no live job left, and nothing is dropped."""

    def __init__(self, url: str, e2e_jobs: int, repeats: int) -> None:
        profile = Profile(**{**QUICK.__dict__, "e2e_jobs": e2e_jobs,
                                     "repeats": repeats})
        self.url = url
        super().__init__(server=None, peer_py=Path(sys.executable),  # type: ignore[arg-type]
                         profile=profile)

    def wait_done(self, system: str, dsn: str, timeout: float, every: float,
                  tick: Callable[[], None], progress: list[Path] | None = None,
                  expect: int = 0) -> tuple[float, bool]:
        # The harness's "anything left?" poll, `state IN ('queued', 'running')`, matches no
        # partial index: a sequential scan, ~1 s over 10M finished rows, run every 10 ms at
        # the end of each run. Each state on its own is a partial-index probe.
        saved = run_module.REMAINING_SQL[system]
        run_module.REMAINING_SQL[system] = (
            "SELECT EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'queued') "
            "OR EXISTS (SELECT 1 FROM skiplock.jobs WHERE state = 'running')")
        try:
            return super().wait_done(system, dsn, timeout, every, tick, progress, expect)
        finally:
            run_module.REMAINING_SQL[system] = saved

    def fresh_db(self, system: str, setup: bool = True) -> str:
        clear_live(self.url)
        return self.url

    def drop_db(self, dsn: str) -> None:
        clear_live(self.url)


def stats_figures(url: str, queues: list[str], calls: int) -> dict[str, Any]:
    with Database(url) as db:
        stats = timed(lambda: inspection.queue_stats(db, queues, cap=OPERATOR_CAP), calls)
        poll = timed(lambda: inspection.poll(db, queues, cap=OPERATOR_CAP), calls)
    return {"stats_call": stats, "operator_poll": poll}


def overview_figures(url: str, calls: int) -> dict[str, Any]:
    """GET /v1/queues and GET /ui/ (the dashboard's overview) through the API app."""
    from fastapi.testclient import TestClient

    from skiplock.api import create_app
    from skiplock.api.config import ApiSettings
    from skiplock.settings import Settings

    app = create_app(Settings(database_url=url),
                     ApiSettings(trusted_hosts=["testserver"], sample_interval=3600))
    out: dict[str, Any] = {}
    with TestClient(app) as http:
        def get(path: str) -> None:
            if (r := http.get(path)).status_code != 200:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:300]}")

        # A new API process's first page reads the whole window (api/throughput.py); each
        # later one reads only the buckets still open. Both are figures.
        t0 = time.perf_counter()
        get("/v1/queues")
        out["api_queues_first_ms"] = (time.perf_counter() - t0) * 1000
        # the first page of each (what an operator opens), and every queue in one call
        pages = (("api_queues", "/v1/queues"), ("ui_overview", "/ui/"),
                 ("api_all", f"/v1/queues?limit={QUEUES}"))
        for name, path in pages:
            # each call is ~0.5-3 s at 1,000 queues: a few calls say what it costs
            out[name] = timed(functools.partial(get, path), min(calls, 10))
        page = http.get("/v1/queues").json()
        # The pages again with the backlog history a default API process holds after an hour
        # (history_size 360 samples): the figures above have the one sample taken at start,
        # which hid what drawing and sending the history costs.
        history = app.state.skiplock.history
        size = app.state.skiplock.api.history_size
        log(f"  overview: taking {size} backlog samples of {QUEUES:,} queues")
        for _ in range(size):
            history.sample_once()
        if len(history.samples()) < size:
            raise RuntimeError(f"only {len(history.samples())} of {size} backlog samples taken")
        # the API's default thins the history to 120 points per queue; every sample is asked for
        full = (("api_queues_full_history", "/v1/queues"),
                ("api_queues_every_sample", f"/v1/queues?backlog_points={size}"),
                ("ui_overview_full_history", "/ui/"))
        for name, path in full:
            out[name] = timed(functools.partial(get, path), min(calls, 10))
        # /ui/ above reuses each backlog chart until the next sample (api/per_sample.py),
        # and the sampler draws again, before it publishes a sample, the charts viewed since
        # the last one: a page kept open finds them drawn. A page nobody viewed in the last
        # interval draws its own (two samples, no view between them).
        out["ui_overview_after_a_sample"] = timed(functools.partial(get, "/ui/"),
                                                  min(calls, 10), before=history.sample_once)
        out["ui_overview_unviewed_after_a_sample"] = timed(
            functools.partial(get, "/ui/"), min(calls, 10),
            before=lambda: (history.sample_once(), history.sample_once()))
        # what the sampler's thread pays for that: a sample with nothing viewed, and one after
        # a view of the first page (its 50 charts drawn ahead)
        out["sample_nothing_viewed"] = timed(history.sample_once, min(calls, 10))
        out["sample_after_a_view"] = timed(history.sample_once, min(calls, 10),
                                           before=functools.partial(get, "/ui/"))
        out["api_queues_full_history_bytes"] = len(http.get("/v1/queues").content)
        out["api_queues_every_sample_bytes"] = len(
            http.get(f"/v1/queues?backlog_points={size}").content)
        out["history_samples"] = size
    out["queues_listed"] = len(page["queues"])
    out["total_queues"] = page["total_queues"]
    return out


def explain(url: str, queues: list[str]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of queue_stats over ``queues`` (for a target missed)."""
    sql = queries()["queue_stats"]
    with psycopg.connect(url, autocommit=True) as conn:
        # as Skiplock's own connections run it (db.py: jit off)
        conn.execute("SET search_path = skiplock")
        conn.execute("SET jit = off")
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}",
                            {"queues": queues, "cap": OPERATOR_CAP, "high_attempts": 3}
                            ).fetchall()
    # the 1,000 names repeated in every index condition, shortened
    return re.sub(r"'\{q0000[^}]*\}'", "'{1000 names}'", "\n".join(r[0] for r in rows))


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("""
            SELECT (SELECT count(*) FROM skiplock.jobs),
                   pg_relation_size('skiplock.jobs'), pg_indexes_size('skiplock.jobs'),
                   pg_total_relation_size('skiplock.jobs'),
                   pg_total_relation_size('skiplock.results')""").fetchone()
    assert row is not None
    return dict(zip(("jobs_rows", "jobs_heap", "jobs_indexes", "jobs_total", "results_total"),
                    (int(x) for x in row), strict=True))


# -- report -----------------------------------------------------------------------------------

def ms(x: dict[str, float]) -> str:
    return f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}"


def report(res: dict[str, Any], history: int) -> list[str]:
    h0, h1 = res["history"]["0"], res["history"].get(str(history))
    lines = [f"{'figure':<44} {'empty':>16} {f'{history:,} history':>18} {'ratio':>7}"]

    def row(name: str, a: float, b: float | None, fmt: str = ",.0f") -> None:
        rb = "-" if b is None else format(b, fmt)
        ratio = "-" if b is None or not a else f"{b / a:.3f}"
        lines.append(f"{name:<44} {format(a, fmt):>16} {rb:>18} {ratio:>7}")

    for batch in ("batch_1", "batch_200"):
        row(f"claim {batch.replace('_', ' ')}: claims/s", h0["claim"][batch]["claims_per_s"],
            h1["claim"][batch]["claims_per_s"] if h1 else None)
        row(f"claim {batch.replace('_', ' ')}: ms per statement",
            h0["claim"][batch]["ms_per_claim"],
            h1["claim"][batch]["ms_per_claim"] if h1 else None, ".3f")
    row("end-to-end (harness, 2 workers): jobs/s", h0["e2e"]["jobs_per_s"],
        h1["e2e"]["jobs_per_s"] if h1 else None)
    for key, label in (("stats_call", "operator stats call"), ("operator_poll",
                                                                  "operator poll (+next_firing)")):
        for q in ("p50_ms", "p99_ms"):
            row(f"{label}: {q[:3]} ms", h0["stats"][key][q],
                h1["stats"][key][q] if h1 else None, ".2f")
    if "queues" in res:
        q = res["queues"]
        lines.append("")
        lines.append(f"{QUEUES:,} queues ({q['sizes']['jobs_rows']:,} rows): "
                     f"median / p99 ms of {res['calls']} calls")
        lines.append(f"  operator stats call, all {QUEUES:,} queues named: "
                     f"{ms(q['stats']['stats_call'])}")
        lines.append(f"  operator poll (+next_firing):                  "
                     f"{ms(q['stats']['operator_poll'])}")
        o = q["overview"]
        lines.append(f"  GET /v1/queues (first page: {o['queues_listed']} of "
                     f"{o['total_queues']:,}):        {ms(o['api_queues'])}")
        if "api_queues_first_ms" in o:
            lines.append(f"  GET /v1/queues, a new process's first call:   "
                         f"{o['api_queues_first_ms']:.2f}")
        lines.append(f"  GET /ui/ (dashboard overview, first page):     {ms(o['ui_overview'])}")
        if "api_all" in o:
            lines.append(f"  GET /v1/queues?limit={QUEUES} (every queue):       "
                         f"{ms(o['api_all'])}")
        if "ui_overview_full_history" in o:
            lines.append(f"  with {o['history_samples']} backlog samples (an hour's):")
            lines.append(f"    GET /v1/queues, 120 points ({o['api_queues_full_history_bytes']:,}"
                         f" bytes): {ms(o['api_queues_full_history'])}")
            lines.append(f"    ?backlog_points={o['history_samples']}, every sample "
                         f"({o['api_queues_every_sample_bytes']:,} bytes): "
                         f"{ms(o['api_queues_every_sample'])}")
            lines.append(f"    GET /ui/, charts kept since the last sample: "
                         f"{ms(o['ui_overview_full_history'])}")
            if "ui_overview_after_a_sample" in o:
                lines.append(f"    GET /ui/ right after a sample, page open:    "
                             f"{ms(o['ui_overview_after_a_sample'])}")
            if "ui_overview_unviewed_after_a_sample" in o:
                lines.append(f"    GET /ui/ after a sample, nobody viewing:     "
                             f"{ms(o['ui_overview_unviewed_after_a_sample'])}")
            if "sample_after_a_view" in o:
                lines.append(f"    a sample (sampler thread), nothing viewed:   "
                             f"{ms(o['sample_nothing_viewed'])}")
                lines.append(f"    a sample after a /ui/ view (charts ahead):   "
                             f"{ms(o['sample_after_a_view'])}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--history", type=int, default=10_000_000, help="finished jobs kept")
    ap.add_argument("--e2e-jobs", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per size (median)")
    ap.add_argument("--rounds", type=int, default=3, help="pgbench runs per claim figure")
    ap.add_argument("--calls", type=int, default=50, help="stats / overview calls timed")
    ap.add_argument("--skip-queues", action="store_true", help="no 1,000-queue phase")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res: dict[str, Any] = {"history_rows": a.history, "result_share": RESULT_SHARE,
                           "dead_share": 1 / DEAD_EVERY, "retention_span": RETENTION_SPAN,
                           "e2e_jobs": a.e2e_jobs, "calls": a.calls, "operator_cap": OPERATOR_CAP,
                           "history": {}}
    started = time.monotonic()
    with migrated_server(durable=True) as server:
        url = server.url()
        with server.admin() as conn:
            for k, v in SERVER_SETTINGS.items():
                conn.execute(f"ALTER SYSTEM SET {k} = '{v}'")
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("ALTER ROLE CURRENT_USER SET search_path = skiplock")  # pgbench's
        pgbench = pgbench_path(server)
        script = Path(tempfile.mkdtemp(prefix="skiplock-history-")) / "claim.pgbench"
        script.write_text(pgbench_script(queries()["claim"]))
        bench = HistoryBench(url, a.e2e_jobs, a.repeats)
        bench.run_runner("skiplock", "setup", "--dsn", url)
        for size in (0, a.history):
            log(f"== history {size:,}")
            if size:
                res["load_seconds"] = load_history(url, 0, size)
                log(f"  loaded {size:,} finished jobs in {res['load_seconds']:.0f} s")
            entry: dict[str, Any] = {"sizes": sizes(url)}
            entry["claim"] = claim_figures(url, pgbench, script, a.rounds)
            entry["e2e"] = bench_e2e(bench, "skiplock")
            log(f"  end-to-end: {entry['e2e']['jobs_per_s']:,.0f} jobs/s "
                f"(runs {', '.join(f'{x:,.0f}' for x in entry['e2e']['runs'])})")
            entry["stats"] = stats_figures(url, ["default"], a.calls)
            log(f"  stats call: {ms(entry['stats']['stats_call'])} ms (median / p99)")
            entry["sizes_after"] = sizes(url)
            res["history"][str(size)] = entry
        if not a.skip_queues:
            log(f"== {QUEUES:,} queues (on top of the history)")
            load_queues(url)
            names = [f"q{i:04d}" for i in range(QUEUES)]
            q: dict[str, Any] = {"sizes": sizes(url), "per_queue": PER_QUEUE}
            q["stats"] = stats_figures(url, names, a.calls)
            q["overview"] = overview_figures(url, a.calls)
            q["explain_stats"] = explain(url, names)
            res["queues"] = q
        res["seconds"] = time.monotonic() - started
    lines = report(res, a.history)
    print()
    print("\n".join(lines))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({**res, "table": lines}, indent=2, default=str))
    log(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
