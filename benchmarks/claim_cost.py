"""What the claim's guards cost: the worker's claim statement as shipped, against the same
statement without the rolling-deploy predicates (``task <> ALL(skip_tasks)``,
``id <> ALL(skip_ids)``) and without the paused-queue check, and during a rollout (one task
left to a peer and 1,000 job ids skipped).

    .venv/bin/python -m benchmarks.claim_cost [--jobs 100000] [--rounds 5] [--batch 200]

With ``--limits``: the claim with concurrency limits (sql/limits.sql) as the worker runs it,
each pgbench transaction claiming a batch and then finishing it (so the running count stays
what a real limit keeps it at), each client a worker with its own ``workers`` row: "no limit"
(the plain claim), "no limit, the claim before limits" (the same jobs, the claim of 0007),
"global limit" (a concurrency_limit far from its cap: the unlocked pass),
"global limit, near the cap" (the unlocked pass claiming nothing, then the locked pass: lock
and claim in one pipeline), "1,000 keys" (a per-key limit over 1,000 keys: the same two
passes, the key walk bounded by the batch), "limited backlog ahead" (the plain claim of
unlimited work queued behind 100,000 jobs of a limited task in the same queue), and the global
and 1,000-key variants planned at every claim, as before the limited claims asked for generic
plans (what that bought).
``make bench-claim-limits`` runs these.

Each variant claims the same backlog with pgbench (2 clients, prepared statements, the claim
committing without waiting for the WAL flush as the worker's claim connection does); variants
alternate within every round (in a rotating order) on a freshly loaded table, so a noisy
machine shifts them all alike. Prints each variant's median claims/s and its ratio to the
shipped claim, and writes artifacts/bench/claim_cost.json. Bounded: ``--rounds`` x 4 pgbench
runs of ``--jobs`` claims.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from tests.support.pgserver import PgServer

from benchmarks.local_support import load_noop_jobs
from benchmarks.run import pgbench_path
from skiplock.db import Database
from skiplock.sql import queries

OUT = Path("artifacts/bench/claim_cost.json")
_ROLLOUT_LINE = re.compile(r"^.*<> ALL\(%\(skip_tasks\)s.*$\n", re.MULTILINE)
_PAUSE_CHECK = re.compile(r"^\s*--[^\n]*paused queues[^\n]*\n\s*CROSS JOIN LATERAL \(SELECT NOT "
                          r"EXISTS.*?AS o\n", re.MULTILINE | re.DOTALL)


def variants() -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (claim SQL, pgbench variables). Fails loudly if the claim's text changed so
    that a guard can no longer be removed: a variant equal to the shipped claim measures
    nothing."""
    shipped = queries()["claim"]
    no_rollout = _ROLLOUT_LINE.sub("", shipped)
    bare = _PAUSE_CHECK.sub("", no_rollout).replace("WHERE o.open\n", "")
    if no_rollout == shipped or bare == no_rollout or "o.open" in bare:
        raise SystemExit("claim_cost: the claim statement changed; update the variants")
    empty = {"skip_tasks": "{}", "skip_ids": "{}"}
    rollout = {"skip_tasks": "{task_of_a_peer}",
               "skip_ids": "{" + ",".join(str(10**12 + i) for i in range(1000)) + "}"}
    return {
        "shipped (empty skip lists)": (shipped, empty),
        "without rollout predicates": (no_rollout, empty),
        "without rollout and pause checks": (bare, empty),
        "during a rollout (1 task, 1000 ids skipped)": (shipped, rollout),
    }


def pgbench_script(sql: str) -> str:
    body = re.sub(r"%\((\w+)\)s", r":\1", sql)
    return ("BEGIN;\nSET LOCAL synchronous_commit = off;\n" + body + ";\nCOMMIT;\n")


# -- limits (--limits) ------------------------------------------------------------------------

# Each pgbench client is a worker of its own (bench-0, bench-1), with a `workers` row of
# concurrency = batch: the unlocked pass's margin (twice the other workers' concurrency) is
# what it is in production, not 0. Statements run in autocommit, as the worker's claim
# connection runs them (synchronous_commit off via PGOPTIONS), so a variant's round trips are
# the worker's.
_WORKER = "('bench-'::text || :client_id)"
# The batch each client claimed is finished at once, the same way in every limits variant, so
# a limit's running count stays bounded as a real one is (claimed-and-kept rows would make
# every later count scan all of them).
_FINISH = ("UPDATE jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL, "
           f"locked_until = NULL WHERE state = 'running' AND locked_by = {_WORKER};\n")


def _statement(sql: str) -> str:
    return re.sub(r"%\((\w+)\)s", r":\1", sql.replace("%(worker_id)s", _WORKER)) + ";\n"


def limit_variants(batch: int) -> dict[str, tuple[str, dict[str, str], str]]:
    """name -> (pgbench script, variables, how to load the backlog). The limited variants
    run what the worker runs: the unlocked pass, then (near the cap, per key) the locked
    pass, its lock and claim in one pipeline (one round trip, as db.py sends them)."""
    q = queries()
    plain = _statement(q["claim"]) + _FINISH
    unkeyed = "          AND concurrency_key IS NULL\n"
    if unkeyed not in q["claim"]:
        raise SystemExit("claim_cost: the claim statement changed; update the variants")
    old_plain = _statement(q["claim"].replace(unkeyed, "")) + _FINISH
    # the worker's own passes (db.py claim_limited), each one pipeline led by generic_plans;
    # and as the previous version sent them, planned afresh at every claim
    def pipeline(*names: str, generic: bool = True) -> str:
        return ("\\startpipeline\n" + (_statement(q["generic_plans"]) if generic else "")
                + "".join(_statement(q[n].replace("%(locked)s", "true")) for n in names)
                + "\\endpipeline\n")
    unlocked = pipeline("claim_limited_unlocked")
    locked = pipeline("lock_limited", "claim_limited")
    unlocked_planned = _statement(q["claim_limited_unlocked"])
    locked_planned = pipeline("lock_limited", "claim_limited", generic=False)
    limited = {"tasks": "{noop}", "skip_ids": "{}", "key_cursor": "{}"}
    backlog = {"skip_tasks": "{noop}", "skip_ids": "{}"}
    return {
        "no limit": (plain, {"skip_tasks": "{}", "skip_ids": "{}"}, "plain"),
        # the same jobs claimed by the claim of the version before limits (0007): what the
        # no-limit path costs now against what it cost then (the issue allows 5 %)
        "no limit, the claim before limits": (old_plain, {"skip_tasks": "{}", "skip_ids": "{}"},
                                              "plain"),
        # far from the cap: the unlocked pass claims the whole batch
        "global limit": (unlocked + _FINISH, limited, "global"),
        # near the cap (3 x batch - 1: the unlocked pass never has batch + margin free), so
        # every claim is the unlocked pass claiming nothing, then the locked pass
        "global limit, near the cap": (unlocked + locked + _FINISH, limited, "near"),
        "1,000 keys": (unlocked + locked + _FINISH, limited, "keys"),
        # what generic_plans bought (sql/limits.sql): the same, planned at every claim
        "global limit, planned each claim": (unlocked_planned + _FINISH, limited, "global"),
        "1,000 keys, planned each claim": (unlocked_planned + locked_planned + _FINISH, limited,
                                           "keys"),
        # unlimited jobs behind a limited task's backlog in the same queue, claimed by the
        # plain claim (the worker passes the limited task in skip_tasks)
        "limited backlog ahead": (plain, backlog, "backlog"),
        # the same with the claim of the previous version (its skip list a filter only)
        "limited backlog ahead, old claim": (old_plain, backlog, "backlog"),
    }


# the limited jobs queued ahead of the unlimited work in "limited backlog ahead"
LIMITED_AHEAD = 100_000


def load_limited(url: str, jobs: int, kind: str, batch: int) -> None:
    limits = {"plain": None, "backlog": {"concurrency_limit": 1_000_000},
              "global": {"concurrency_limit": 1_000_000},
              "near": {"concurrency_limit": 3 * batch - 1},
              "keys": {"key": "arg:k", "key_limit": 1_000_000}}[kind]
    key = {"plain": "NULL", "global": "''", "near": "''",
           "keys": "(g %% 1000)::text"}.get(kind, "NULL")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE skiplock.results, skiplock.jobs, skiplock.workers")
        conn.execute("INSERT INTO skiplock.workers (id, queues, tasks, concurrency, "
                     "lease_seconds) SELECT 'bench-' || c, '{default}', '{\"noop\": {}}', %s, "
                     "30 FROM generate_series(0, 1) AS c", (batch,))
        conn.execute("INSERT INTO skiplock.tasks (name, params, max_attempts, queue, limits) "
                     "VALUES ('noop', '{}', 5, 'default', %s::jsonb) ON CONFLICT (name) DO UPDATE "
                     "SET limits = excluded.limits",
                     (json.dumps(limits) if limits else None,))
        if kind == "backlog":
            # the limited task's jobs first (older), the unlimited ones behind them
            conn.execute("INSERT INTO skiplock.tasks (name, params, max_attempts, queue) "
                         "VALUES ('free', '{}', 5, 'default') ON CONFLICT (name) DO NOTHING")
            conn.execute("INSERT INTO skiplock.jobs (task, concurrency_key, run_at) "
                         "SELECT 'noop', '', now() - interval '1 hour' "
                         "FROM generate_series(1, %s)", (LIMITED_AHEAD,))
            conn.execute("INSERT INTO skiplock.jobs (task) SELECT 'free' "
                         "FROM generate_series(1, %s)", (jobs,))
        else:
            conn.execute(f"INSERT INTO skiplock.jobs (task, concurrency_key) "
                         f"SELECT 'noop', {key} FROM generate_series(1, %s) AS g", (jobs,))
        conn.execute("VACUUM ANALYZE skiplock.jobs")


def limit_claim_rate(pgbench: Path, url: str, script: Path, vars_: dict[str, str], jobs: int,
                     batch: int) -> float:
    """Claims/s of 2 clients running ``script`` for jobs / batch transactions in all. A
    locked pass that finds the task's lock taken claims nothing that time (as a worker's
    would): the rate is what was claimed over the time taken."""
    per_client = jobs // (2 * batch)
    defines = [arg for k, v in {**vars_, "limit": str(batch), "lease_seconds": "30",
                                "queues": "{default}"}.items()
               for arg in ("-D", f"{k}={v}")]
    env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=off"}
    started = time.perf_counter()
    proc = subprocess.run(
        [str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "2", "-t", str(per_client),
         *defines, "-f", str(script), url],
        capture_output=True, text=True, timeout=300, env=env)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = 'succeeded'"
                           ).fetchone()
    claimed = int(row[0]) if row else 0
    # the locked pass claims nothing when the other client holds the task's lock (then it
    # finishes at once and tries again, as a worker's next claim would), so fewer than
    # jobs are claimed; a run that claims not even one batch measures nothing
    if claimed < batch:
        raise RuntimeError(f"expected up to {per_client * 2 * batch} claims, saw {claimed}")
    return claimed / elapsed


def limits_main(url: str, pgbench: Path, a: argparse.Namespace) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="skiplock-limits-"))
    order = list(limit_variants(a.batch).items())
    scripts = {}
    for i, (name, (script, _, _)) in enumerate(order):
        scripts[name] = tmp / f"l{i}.pgbench"
        scripts[name].write_text(script)
    rates: dict[str, list[float]] = {name: [] for name, _ in order}
    for r in range(a.rounds):
        for name, (_, vars_, kind) in order[r % len(order):] + order[:r % len(order)]:
            load_limited(url, a.jobs, kind, a.batch)
            rate = limit_claim_rate(pgbench, url, scripts[name], vars_, a.jobs, a.batch)
            rates[name].append(rate)
            print(f"round {r + 1}/{a.rounds}  {name:<34} {rate:>9,.0f} claims/s", flush=True)
    base = rates["no limit"]
    print(f"\nclaim + finish, batch {a.batch}, 2 clients (2 workers rows), {a.jobs:,} jobs, "
          f"median of {a.rounds} rounds; ratio: per round to that round's no limit, median")
    print(f"  {'variant':<34} {'claims/s':>9}   {'vs no limit':>11}   rounds (claims/s)")
    summary = {}
    for name, runs in rates.items():
        paired = statistics.median(x / b for x, b in zip(runs, base, strict=True))
        summary[name] = {"claims_per_s": statistics.median(runs), "runs": runs,
                         "vs_no_limit_paired": paired}
        print(f"  {name:<34} {statistics.median(runs):>9,.0f}   {paired:>10.2f}x   "
              + " ".join(f"{x:,.0f}" for x in runs))
    out = OUT.with_name("claim_cost_limits.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"batch": a.batch, "jobs": a.jobs, "rounds": a.rounds,
                               "variants": summary}, indent=2))
    print(f"wrote {out}")
    return 0


def claim_rate(pgbench: Path, url: str, script: Path, vars_: dict[str, str], jobs: int,
               batch: int, state: str = "running") -> float:
    per_client = jobs // (2 * batch)
    defines = [arg for k, v in {**vars_, "limit": str(batch), "lease_seconds": "30",
                                "queues": "{default}", "worker_id": "bench"}.items()
               for arg in ("-D", f"{k}={v}")]
    started = time.perf_counter()
    proc = subprocess.run(
        [str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "2", "-t", str(per_client),
         *defines, "-f", str(script), url],
        capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM skiplock.jobs WHERE state = %s",
                           (state,)).fetchone()
    claimed = int(row[0]) if row else 0
    # a per-key claim may take a little less than the batch as the keys run out (each key
    # gives at most its share): the rate is what was claimed
    if claimed < per_client * 2 * batch * 0.95:
        raise RuntimeError(f"expected {per_client * 2 * batch} claims, saw {claimed}")
    return claimed / elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--limits", action="store_true",
                    help="the limits variants: no limit, global limit, 1,000 keys")
    a = ap.parse_args(argv)
    server = PgServer(durable=True)
    server.init()
    server.start()
    try:
        url = server.url()
        with Database(url) as db:
            db.migrate()
        with psycopg.connect(url, autocommit=True) as conn:  # the worker's search_path
            conn.execute("ALTER ROLE CURRENT_USER SET search_path = skiplock")
        pgbench = pgbench_path(server)
        if a.limits:
            return limits_main(url, pgbench, a)
        tmp = Path(tempfile.mkdtemp(prefix="skiplock-claim-"))
        scripts = {}
        for i, (name, (sql, _)) in enumerate(variants().items()):
            scripts[name] = tmp / f"v{i}.pgbench"
            scripts[name].write_text(pgbench_script(sql))
        rates: dict[str, list[float]] = {name: [] for name in scripts}
        order = list(variants().items())
        for r in range(a.rounds):
            # rotated each round: no variant always runs first after a load
            for name, (_, vars_) in order[r % len(order):] + order[:r % len(order)]:
                load_noop_jobs(url, a.jobs)
                rate = claim_rate(pgbench, url, scripts[name], vars_, a.jobs, a.batch)
                rates[name].append(rate)
                print(f"round {r + 1}/{a.rounds}  {name:<45} {rate:>9,.0f} claims/s", flush=True)
    finally:
        server.stop()
        server.destroy()
    shipped = statistics.median(rates["shipped (empty skip lists)"])
    print(f"\nclaim, batch {a.batch}, 2 clients, {a.jobs:,} jobs, median of {a.rounds} rounds")
    summary = {}
    for name, runs in rates.items():
        med = statistics.median(runs)
        # per round, so the machine's drift between rounds cancels out
        paired = statistics.median(
            x / s for x, s in zip(runs, rates["shipped (empty skip lists)"], strict=True))
        summary[name] = {"claims_per_s": med, "runs": runs, "vs_shipped_paired": paired}
        print(f"  {name:<45} {med:>9,.0f} claims/s   {paired:5.3f}x shipped (paired)")
    print(f"  shipped claim: {shipped:,.0f} claims/s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"batch": a.batch, "jobs": a.jobs, "variants": summary}, indent=2))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
