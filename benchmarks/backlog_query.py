"""How long the operator's per-poll reads take as the jobs table grows.

Measures exactly what one JobQueue poll runs: ``skiplock.inspection.queue_stats`` for one queue
with the operator's cap (max(1000, maxReplicas * jobsPerReplica + 1)), and
``skiplock.inspection.busy_pods`` (run just before a scale-down).

    .venv/bin/python -m benchmarks.backlog_query                       # 10k, 100k, 1M rows
    .venv/bin/python -m benchmarks.backlog_query --sizes 10000 --repeat 50
    .venv/bin/python -m benchmarks.backlog_query --database-url postgresql://...  # existing DB

Without --database-url it starts a throwaway PostgreSQL (tests/support/pgserver.py).
The row mix: 80 % succeeded, 12 % runnable, 3 % scheduled, 3 % running (a third of them with
an expired lease), 2 % dead, spread over 4 queues; the one measured is one of the four.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / p) for p in ("worker", ".")]

from skiplock import inspection  # noqa: E402
from skiplock.db import Database  # noqa: E402

# Test data only: the product's queries live in worker/skiplock/sql/queries.sql.
FILL = """
INSERT INTO skiplock.jobs (queue, task, state, run_at, attempts, locked_by, locked_until,
                           started_at, finished_at)
SELECT 'q' || ((g / 100) %% 4),
       'bench',
       s.state::skiplock.job_state,
       CASE WHEN s.kind = 'scheduled' THEN now() + interval '1 hour'
            ELSE now() - interval '1 minute' END,
       CASE WHEN s.state = 'queued' THEN 0 ELSE 1 END,
       CASE WHEN s.state = 'running' THEN 'pod-' || (g %% 50) || ':1:abc' END,
       CASE WHEN s.kind = 'stuck' THEN now() - interval '1 minute'
            WHEN s.state = 'running' THEN now() + interval '1 hour' END,
       CASE WHEN s.state <> 'queued' THEN now() - interval '2 minutes' END,
       CASE WHEN s.state IN ('succeeded', 'dead') THEN now() - interval '1 minute' END
FROM generate_series(%(start)s, %(stop)s - 1) AS g,
     LATERAL (SELECT CASE
         WHEN g %% 100 < 80 THEN 'succeeded'
         WHEN g %% 100 < 92 THEN 'queued'
         WHEN g %% 100 < 95 THEN 'queued'
         WHEN g %% 100 < 98 THEN 'running'
         ELSE 'dead' END AS state,
       CASE
         WHEN g %% 100 BETWEEN 92 AND 94 THEN 'scheduled'
         WHEN g %% 100 = 95 THEN 'stuck'
         ELSE '' END AS kind) AS s
"""


def timed(fn: Callable[[], object], repeat: int) -> dict[str, float]:
    fn()  # warm the plan cache and the buffers: the operator polls a warm database
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2),
            "p95_ms": round(samples[max(0, int(len(samples) * 0.95) - 1)], 2),
            "max_ms": round(samples[-1], 2)}


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.support.pgserver import running_server

    with running_server() as server:
        with server.admin() as conn:
            conn.execute("CREATE DATABASE bench")
        yield server.url("bench")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--database-url")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--cap", type=int, default=1_001,
                    help="count cap (the operator uses max(1000, maxReplicas*jobsPerReplica+1))")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: dict[str, Any] = {}
    with database(args.database_url) as url:
        db = Database(url, statement_timeout=120)
        db.migrate()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE skiplock.jobs CASCADE")
            have = 0
            for size in sizes:
                t = time.perf_counter()
                conn.execute(FILL, {"start": have, "stop": size})  # type: ignore[arg-type]
                conn.execute("VACUUM ANALYZE skiplock.jobs")
                have = size
                fill_s = time.perf_counter() - t
                stats = inspection.queue_stats(db, ["q1"], cap=args.cap)[0]
                row = {
                    "fill_seconds": round(fill_s, 1),
                    "queue_stats": timed(
                        lambda: inspection.queue_stats(db, ["q1"], cap=args.cap), args.repeat),
                    "busy_pods": timed(lambda: inspection.busy_pods(db, ["q1"]), args.repeat),
                    "counts_q1": stats.as_dict(),
                }
                results[str(size)] = row
                if not args.json:
                    qs, bp = row["queue_stats"], row["busy_pods"]
                    print(f"{size:>9} rows: queue_stats median {qs['median_ms']} ms "
                          f"(p95 {qs['p95_ms']}, max {qs['max_ms']}); busy_pods median "
                          f"{bp['median_ms']} ms; q1 backlog={stats.backlog} "
                          f"in_flight={stats.in_flight} dead={stats.dead} "
                          f"(cap {args.cap}); fill {fill_s:.1f}s", flush=True)
        db.close()
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
