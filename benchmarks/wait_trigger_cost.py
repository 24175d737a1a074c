"""What the completion-notify trigger (0007_wait_notify.sql, Client.wait) costs the hot
paths: a claim-and-complete batch (benchmarks/claim_complete.pgbench) and a single-row lease
renewal, with no trigger, the first design (a statement trigger with a transition table,
fired by every UPDATE of jobs), the row trigger on the finishing transition of 0007 (every
finished job notified; what a finish other than a worker's completion still costs) and the
trigger of 0013 (the same, passing over the rows whose wake_on_finish the statement flipped),
with the claim-and-complete batch then announcing its jobs itself (one pg_notify per statement:
the worker's completion since 0013).

    .venv/bin/python -m benchmarks.wait_trigger_cost [--jobs 20000] [--rounds 5] [--durable]

Variants alternate within every round (rotating order) on a freshly loaded table, so a noisy
machine shifts them alike; prints each variant's median transactions/s per workload and its
ratio to "none". Indicative only on a shared machine.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

import psycopg

from benchmarks.local_support import load_noop_jobs, migrated_server
from benchmarks.run import pgbench_path
from skiplock.sql import migrations

ROOT = Path(__file__).resolve().parent

_DROP = "DROP TRIGGER IF EXISTS jobs_notify_finished ON skiplock.jobs"
_STATEMENT = """
CREATE OR REPLACE FUNCTION skiplock.notify_jobs_finished_stmt() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE ids text;
BEGIN
    FOR ids IN SELECT string_agg(f.id::text, ',')
        FROM (SELECT id, (row_number() OVER ()) / 300 AS chunk FROM finished
              WHERE state IN ('succeeded', 'dead', 'cancelled')) AS f GROUP BY f.chunk
    LOOP PERFORM pg_notify(TG_TABLE_SCHEMA || '_done', ids); END LOOP;
    RETURN NULL;
END; $$;
CREATE TRIGGER jobs_notify_finished AFTER UPDATE ON skiplock.jobs
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION skiplock.notify_jobs_finished_stmt();
"""
_ROW = """
CREATE TRIGGER jobs_notify_finished AFTER UPDATE OF state ON skiplock.jobs FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION skiplock.notify_jobs_finished();
"""
# 0013's trigger (its text is the migration's, after its DROP TRIGGER)
_SHIPPED = "SET search_path = skiplock; " + next(
    text for version, _, text in migrations() if version == 13
).split("DROP TRIGGER jobs_notify_finished ON jobs;", 1)[1] + "; RESET search_path"
VARIANTS = {"none": "", "statement": _STATEMENT, "row": _ROW, "0013": _SHIPPED}

_RENEW = """\\set id random(1, :jobs)
UPDATE skiplock.jobs SET locked_until = now() + interval '30 seconds' WHERE id = :id;
"""
_CLAIM_ONE = """\\set id random(1, :jobs)
UPDATE skiplock.jobs SET state = 'running', attempts = attempts + 1, locked_by = 'bench',
    locked_until = now() + interval '30 seconds', started_at = now()
WHERE id = :id;
"""
_FINISH_ONE = """\\set id random(1, :jobs)
BEGIN;
UPDATE skiplock.jobs SET state = 'running', attempts = attempts + 1, locked_by = 'bench',
    locked_until = now() + interval '30 seconds', started_at = now()
WHERE id = :id AND state = 'queued';
UPDATE skiplock.jobs SET state = 'succeeded', finished_at = now(), locked_by = NULL,
    locked_until = NULL
WHERE id = :id AND state = 'running';
COMMIT;
"""


def tps(pgbench: Path, url: str, script: Path, transactions: int, defines: dict[str, str]
        ) -> float:
    args = [a for k, v in defines.items() for a in ("-D", f"{k}={v}")]
    proc = subprocess.run(
        [str(pgbench), "-n", "-M", "prepared", "-c", "2", "-j", "2", "-t", str(transactions),
         *args, "-f", str(script), url], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{proc.stdout}\n{proc.stderr}")
    found = re.search(r"tps = ([0-9.]+)", proc.stdout)
    assert found, proc.stdout
    return float(found.group(1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--durable", action="store_true",
                    help="fsync each commit (the trigger's CPU cost then drowns in the flush)")
    a = ap.parse_args(argv)
    with migrated_server(durable=a.durable) as server:
        url = server.url()
        pgbench = pgbench_path(server)
        tmp = Path(tempfile.mkdtemp(prefix="skiplock-trigger-"))
        scripts = {"claim+complete": ROOT / "claim_complete.pgbench",
                   "lease renewal": tmp / "renew.pgbench",
                   "single-row claim": tmp / "claim_one.pgbench",
                   "one claim+finish": tmp / "finish_one.pgbench"}
        scripts["lease renewal"].write_text(_RENEW)
        scripts["single-row claim"].write_text(_CLAIM_ONE)
        scripts["one claim+finish"].write_text(_FINISH_ONE)
        rates = {(w, v): [] for w in scripts for v in VARIANTS}  # type: ignore[var-annotated]
        names = list(VARIANTS)
        for r in range(a.rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(_DROP)
                    if VARIANTS[v]:
                        conn.execute(VARIANTS[v])
                for w, script in scripts.items():
                    load_noop_jobs(url, a.jobs)
                    if w == "claim+complete":
                        n = a.jobs // (2 * a.batch)
                        # result=1: a result row per job, the worker's completion of a
                        # handler that returned something
                        # stmtnotify: the completion announces its jobs (0013) or the row
                        # trigger does (the other variants)
                        defines = {"batch": str(a.batch), "result": "1",
                                   "stmtnotify": "1" if v == "0013" else "0"}
                    else:
                        n = a.jobs // 4
                        defines = {"jobs": str(a.jobs)}
                    rates[(w, v)].append(tps(pgbench, url, script, n, defines))
        for w in scripts:
            base = statistics.median(rates[(w, "none")])
            for v in names:
                m = statistics.median(rates[(w, v)])
                print(f"{w:18} {v:10} median {m:9.1f} tps  ({m / base:.3f} of none)  "
                      f"runs {[round(x) for x in rates[(w, v)]]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
