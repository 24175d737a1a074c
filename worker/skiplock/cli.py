"""The ``skiplock`` command."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

# Only what parsing the command line and `skiplock worker` need is imported here: the client
# (and through it the producer's tracing, the waiting machinery), the inspection queries and
# the probes server are imported by the commands that use them, which keeps them off a
# worker's start-up (tests/unit/test_import_weight.py).
from . import collector, eventloop, logs
from .app import load_app
from .cli_settings import cli_database, settings_from_args, validated
from .db import BULK_DEFAULT_BATCH, BULK_MAX_BATCH
from .errors import ConfigurationError, SkiplockError
from .redact import scrub
from .settings import Settings
from .worker import Worker, WorkerFailed

log = logging.getLogger("skiplock.cli")


def cmd_migrate(args: argparse.Namespace) -> int:
    with cli_database(settings_from_args(args)) as db:
        applied = db.migrate()
    print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    app = load_app(args.app)
    worker = Worker.from_settings(
        app,
        s,
        queues=args.queue or ["default"],
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        shutdown_grace=args.shutdown_grace,
        poll_interval=args.poll_interval,
        unrunnable_grace=args.unrunnable_grace,
        cancel_grace=args.cancel_grace,
    )
    if s.metrics_port is not None:
        from .worker.probes import serve_probes

        serve_probes(s.metrics_port, worker.health)
    collector.settle_for_work()

    async def serve() -> int:
        code = 0
        try:
            await worker.run(install_signal_handlers=True)
        except WorkerFailed as exc:
            print(f"skiplock worker: {exc}", file=sys.stderr)
            code = 1
        if worker.stuck_services:
            # asyncio.run's shutdown would cancel them and wait again, for ever: the last
            # writes and releases are done, so the process leaves now (logged by the worker).
            _leave(code)
        return code

    # A sync handler still running in a thread after its job was released must not keep the
    # process alive past the grace period; the job is already back in the queue.
    _leave(eventloop.run(serve(), args.event_loop or s.event_loop))


def _leave(code: int) -> NoReturn:
    """Exit now, threads or not (os._exit), with what was printed flushed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_enqueue(args: argparse.Namespace) -> int:
    from .client import Client

    try:
        payload = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise SkiplockError(
            f"--args is not valid JSON ({exc}); example: --args '{{\"n\": 1}}'"
        ) from None
    if not isinstance(payload, dict):
        raise SkiplockError("--args must be a JSON object of keyword arguments, e.g. '{\"n\": 1}'")
    with Client(settings=settings_from_args(args), validate=not args.no_validate) as client:
        job_id = client.enqueue(
            args.task,
            payload,
            queue=args.queue,
            priority=args.priority,
            delay=args.delay,
            max_attempts=args.max_attempts,
            unique_key=args.unique_key,
            timeout=args.timeout,
        )
    print(job_id)
    return 0


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def _add_job_filters(p: argparse.ArgumentParser) -> None:
    """The filters of `skiplock jobs`, which its bulk actions (cancel, retry, delete) take too."""
    p.add_argument("--state", choices=["queued", "running", "succeeded", "dead", "cancelled"])
    p.add_argument("--queue")
    p.add_argument("--task")
    p.add_argument("--stuck", action="store_true", help="running with an expired lease")
    p.add_argument("--min-attempts", type=int)


_JOB_FILTERS = ("state", "queue", "task", "stuck", "min_attempts")


def _job_filters(args: argparse.Namespace) -> dict[str, Any]:
    """The _add_job_filters values, as Database.list_jobs takes them."""
    return {name: getattr(args, name) for name in _JOB_FILTERS}


def cmd_jobs(args: argparse.Namespace) -> int:
    with cli_database(settings_from_args(args)) as db:
        rows = db.list_jobs(**_job_filters(args), limit=args.limit)
    if args.json:
        print(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2))
        return 0
    print(f"{'id':>8} {'state':<10} {'queue':<12} {'task':<20} {'att':>5} last_error")
    for r in rows:
        err = (r["last_error"] or "").splitlines()[0][:60] if r["last_error"] else ""
        flag = " (stuck)" if r["stuck"] else ""
        print(
            f"{r['id']:>8} {r['state'] + flag:<10} {r['queue']:<12} {r['task']:<20} "
            f"{r['attempts']:>2}/{r['max_attempts']:<2} {err}"
        )
    return 0


# For each bulk action: what was done, and why a matching job can be skipped.
_BULK_WORDS = {
    "cancel": ("cancelled or asked to stop", "already finished or asked to stop"),
    "retry": ("queued again", "not dead or cancelled"),
    "delete": ("deleted", "running: cancel those first"),
}


def _batch_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= n <= BULK_MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{n} is out of range: use 1 to {BULK_MAX_BATCH}")
    return n


def cmd_jobs_bulk(args: argparse.Namespace) -> int:
    """skiplock jobs cancel|retry|delete: count, confirm, then batch by batch."""
    from .client import user_at_host

    action = args.jobs_action
    filters = _job_filters(args)
    given = [f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
             for k, v in filters.items() if v is not None and v is not False]
    if not given and not args.all:
        raise SkiplockError(
            f"skiplock jobs {action} needs a filter (--state, --queue, --task, --stuck, "
            "--min-attempts), or --all to act on every job")
    if given and args.all:
        raise SkiplockError("--all means every job: drop it, or drop the filters")
    state = filters.pop("state")
    filters["states"] = [state] if state else None
    done_words, skip_words = _BULK_WORDS[action]
    with cli_database(settings_from_args(args)) as db:
        matched, capped = db.count_matching(**filters)
        shown = f"{'at least ' if capped else ''}{matched:,}"
        print(f"{shown} job(s) match {' '.join(given) or '(every job)'}")
        if not matched:
            print("nothing to do")
            return 0
        if not args.yes:
            # A script piping into this cannot answer: it must say --yes, not be asked.
            if not sys.stdin.isatty():
                raise SkiplockError(
                    f"not a terminal, so no one can confirm: pass --yes to {action} the "
                    f"{shown} matching job(s) without asking")
            answer = input(f"{action} {shown} job(s)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing changed")
                return 1
        done = skipped = 0
        cursor = None
        more = True
        try:
            while more:
                batch = db.bulk_batch(action, cursor=cursor, limit=args.batch,
                                      reason=f"cli {user_at_host()} (skiplock jobs cancel)",
                                      **filters)
                done, skipped = done + batch.done, skipped + batch.skipped
                cursor, more = batch.cursor, batch.more
                print(f"  {done + skipped:,}/{shown}: {done:,} {done_words}, {skipped:,} "
                      "skipped", flush=True)
        except KeyboardInterrupt:
            # Each batch commits on its own: say what is already done before exiting.
            print(f"interrupted: {done:,} job(s) {done_words} so far")
            raise
    print(f"{done:,} job(s) {done_words}"
          + (f"; {skipped:,} skipped ({skip_words}, or busy at that instant: a second run "
             "takes the busy ones)" if skipped else ""))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from . import inspection

    with cli_database(settings_from_args(args)) as db:
        stats = inspection.queue_stats(db, args.queue or ())
    if args.json:
        print(json.dumps([{k: _jsonable(v) for k, v in s.as_dict().items()} for s in stats],
                         indent=2))
        return 0
    cols = (
        "queue",
        "runnable",
        "scheduled",
        "in_flight",
        "stuck",
        "dead",
        "dead_last_hour",
        "high_retry",
        "waiting_for_worker",
        "waiting_on_limit",
        "oldest_runnable_age",
        "paused",
    )
    widths = {c: max(14, len(c)) for c in cols}
    print(" ".join(f"{c:>{widths[c]}}" for c in cols))
    for s in stats:
        d = s.as_dict()
        age = d["oldest_runnable_age"]
        d["oldest_runnable_age"] = f"{age:.1f}s" if age is not None else "-"
        d["paused"] = "yes" if s.paused else "no"  # who and since when: skiplock queue list
        print(" ".join(f"{d[c]!s:>{widths[c]}}" for c in cols))
    return 0


def _shown(name: str) -> str:
    """A queue name for the terminal: quoted when it holds control characters, which would
    otherwise act on the terminal instead of showing."""
    return name if name.isprintable() else repr(name)


def _utc(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_queue_pause(args: argparse.Namespace) -> int:
    from .client import Client, user_at_host

    with Client(settings=settings_from_args(args)) as client:
        p = client.pause_queue(args.queue, args.reason, by=f"cli {user_at_host()}")
    if p.newly_paused:
        print(f"queue {_shown(p.queue)} paused: workers stop claiming from it; running jobs "
              "finish")
    else:
        print(f"queue {_shown(p.queue)} was already paused (since {_utc(p.paused_at)}, by "
              f"{p.paused_by or '?'}); nothing changed")
    return 0


def cmd_queue_resume(args: argparse.Namespace) -> int:
    from .client import Client

    with Client(settings=settings_from_args(args)) as client:
        if client.resume_queue(args.queue):
            print(f"queue {_shown(args.queue)} resumed: workers claim from it again")
            return 0
        paused = [_shown(p.queue) for p in client.paused_queues()]
    # An error, not a no-op: most often the name is mistyped, and the paused ones are listed.
    raise SkiplockError(f"queue {_shown(args.queue)} was not paused; paused queues: "
                        f"{', '.join(paused) if paused else 'none'}")


def cmd_queue_list(args: argparse.Namespace) -> int:
    from .client import Client

    with Client(settings=settings_from_args(args)) as client:
        paused = client.paused_queues()
    if args.json:
        print(json.dumps([{"queue": p.queue, "paused_at": p.paused_at.isoformat(),
                           "paused_by": p.paused_by} for p in paused], indent=2))
        return 0
    if not paused:
        print("no queue is paused")
        return 0
    width = max(12, *(len(_shown(p.queue)) for p in paused))
    print(f"{'queue':<{width}} {'paused since':<23} paused by")
    for p in paused:
        print(f"{_shown(p.queue):<{width}} {_utc(p.paused_at):<23} {p.paused_by or '?'}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from . import transitions

    with cli_database(settings_from_args(args)) as db:
        answer = transitions.retry(db, args.job_id)
    if answer.outcome is not transitions.Outcome.DONE:
        raise SkiplockError(answer.message)
    print(answer.message)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from . import transitions
    from .client import user_at_host

    who = transitions.requester(f"cli {user_at_host()}", args.reason)
    with cli_database(settings_from_args(args)) as db:
        answer = transitions.cancel(db, args.job_id, who)
    # Asked before is an error here, unlike in the API: whoever typed it learns that their
    # cancel changed nothing, and who asked first.
    if answer.outcome not in (transitions.Outcome.DONE, transitions.Outcome.REQUESTED):
        raise SkiplockError(answer.message)
    print(answer.message)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    s = settings_from_args(args)
    retention = args.older_than if args.older_than is not None else s.retention_seconds
    keys_retention = (args.keys_older_than if args.keys_older_than is not None
                      else s.idempotency_retention)
    if not keys_retention >= 0:  # also NaN: a negative age would delete every unused key
        raise ConfigurationError(
            f"--keys-older-than must be a number of seconds >= 0, got {keys_retention}")
    with cli_database(s) as db:
        n = db.prune_finished(retention)
        # After the jobs: a key is kept while its job exists, so this frees the keys of the
        # jobs just pruned once the keys are past their own retention.
        k = db.prune_idempotency_keys(keys_retention)
    print(f"pruned {n} finished job(s) older than {retention:.0f}s")
    print(f"pruned {k} idempotency key(s) older than {keys_retention:.0f}s whose jobs are gone")
    return 0


def _cadence(row: dict[str, Any]) -> str:
    if row["every_seconds"] is not None:
        return f"every {row['every_seconds']}s"
    return f"{row['cron']} {row['timezone']}"


def _policy(row: dict[str, Any]) -> str:
    missed = str(row["missed"])
    return f"backfill:{row['backfill_limit']}" if missed == "backfill" else missed


def cmd_schedules(args: argparse.Namespace) -> int:
    """Periodic jobs (docs/schedules.md): each schedule with its last and next firing."""
    with cli_database(settings_from_args(args)) as db:
        rows = db.list_schedules()
    if args.json:
        print(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows], indent=2))
        return 0
    if not rows:
        print("no schedules (declare them with @app.periodic or a JobSchedule resource)")
        return 0
    table = [("name", "task", "queue", "cadence", "missed", "next (UTC)", "last (UTC)",
              "last job", "source")]
    for r in rows:
        nxt = "paused" if r["paused"] else (_utc(r["next_fire_at"])[:-4]
                                             if r["next_fire_at"] else "-")
        if not r["paused"] and r["late_seconds"] > 0:
            nxt += f" (late {r['late_seconds']:.0f}s)"
        # every text column through _shown: a row written by hand in SQL may hold terminal
        # escapes in any of them (the cron, the time zone, the source)
        table.append((_shown(r["name"]), _shown(r["task"]), _shown(r["queue"]),
                      _shown(_cadence(r)), _policy(r), nxt,
                      _utc(r["last_fire_at"])[:-4] if r["last_fire_at"] else "-",
                      str(r["last_job_id"] or "-"), _shown(str(r["source"]))))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(settings_from_args(args).database_url, workers=args.workers, jobs=args.jobs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skiplock", description=__doc__)
    p.add_argument("--database-url", help="overrides SKIPLOCK_DATABASE_URL")
    p.add_argument("--schema", help="overrides SKIPLOCK_SCHEMA (default: skiplock)")
    p.add_argument("--log-level", default=None)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "migrate", help="create or upgrade the schema (safe to run concurrently)"
    ).set_defaults(func=cmd_migrate)

    w = sub.add_parser("worker", help="run a worker for MODULE:APP")
    w.add_argument("app", metavar="MODULE:APP")
    w.add_argument("--queue", "-q", action="append", help="queue to serve (repeatable)")
    w.add_argument("--concurrency", "-c", type=int)
    w.add_argument("--lease-seconds", type=float)
    w.add_argument("--shutdown-grace", type=float)
    w.add_argument("--poll-interval", type=float)
    w.add_argument(
        "--unrunnable-grace", type=float,
        help="seconds a job no live worker can run waits for one before it is dead "
        "(SKIPLOCK_UNRUNNABLE_GRACE, default 120)",
    )
    w.add_argument(
        "--cancel-grace", type=float,
        help="seconds a handler told to stop (cancel, deadline) has before its outcome is "
        "written without it (SKIPLOCK_CANCEL_GRACE, default 10)",
    )
    w.add_argument(
        "--event-loop", choices=["auto", "asyncio", "uvloop"],
        help="asyncio event loop: auto takes uvloop when it is installed "
        "(SKIPLOCK_EVENT_LOOP, default auto)",
    )
    w.set_defaults(func=cmd_worker)

    e = sub.add_parser("enqueue", help="enqueue one job; prints its id")
    e.add_argument("task")
    e.add_argument("--args", default="{}", help="JSON object of keyword arguments")
    e.add_argument("--queue")
    e.add_argument("--priority", type=int, default=0)
    e.add_argument("--delay", type=float)
    e.add_argument("--max-attempts", type=int)
    e.add_argument("--timeout", type=float,
                   help="this job's deadline per attempt in seconds (overrides the task's)")
    e.add_argument("--unique-key")
    e.add_argument("--no-validate", action="store_true", help="skip the task catalogue check")
    e.set_defaults(func=cmd_enqueue)

    j = sub.add_parser("jobs", help="list jobs, newest first; or cancel, retry or delete "
                                    "every job matching the filters")
    _add_job_filters(j)
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--json", action="store_true")
    j.set_defaults(func=cmd_jobs)
    jsub = j.add_subparsers(dest="jobs_action", metavar="{cancel,retry,delete}")
    for name, text in (
        ("cancel", "cancel the matching jobs (running ones: their workers are asked to stop)"),
        ("retry", "queue the matching dead or cancelled jobs again"),
        ("delete", "delete the matching jobs and their results (never a running one)"),
    ):
        # SUPPRESS: a filter given before the action word (jobs --state dead delete) is kept,
        # not reset to its default by this parser.
        b = jsub.add_parser(name, help=text, argument_default=argparse.SUPPRESS,
                            description=f"{text}: shows how many match and asks first, then "
                                        "works in batches (newest first), showing progress")
        _add_job_filters(b)
        b.add_argument("--all", action="store_true", default=False,
                       help="act on every job (required when no filter is given)")
        b.add_argument("--yes", "-y", action="store_true", default=False,
                       help="do not ask (required when stdin is not a terminal)")
        b.add_argument("--batch", type=_batch_size, default=BULK_DEFAULT_BATCH,
                       help=f"jobs per batch, each one short transaction (1 to "
                            f"{BULK_MAX_BATCH}, default {BULK_DEFAULT_BATCH})")
        b.set_defaults(func=cmd_jobs_bulk)

    st = sub.add_parser("stats", help="per-queue backlog, in-flight, stuck, high-retry, dead")
    st.add_argument("--queue", action="append")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stats)

    for name, func, text in (
        ("retry", cmd_retry, "queue a dead or cancelled job again"),
        ("cancel", cmd_cancel, "cancel a queued job, or ask a running job's worker to stop it"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("job_id", type=int)
        if name == "cancel":
            c.add_argument("--reason", help="recorded in the job's error history with who asked")
        c.set_defaults(func=func)

    qu = sub.add_parser("queue", help="pause or resume a queue; list the paused ones")
    qsub = qu.add_subparsers(dest="queue_command", required=True)
    qp = qsub.add_parser(
        "pause", help="stop workers claiming from QUEUE within a second (running jobs finish)")
    qp.add_argument("queue", metavar="QUEUE")
    qp.add_argument("--reason", help="why (stored with who paused it, shown by `queue list`)")
    qp.set_defaults(func=cmd_queue_pause)
    qr = qsub.add_parser("resume", help="let workers claim from QUEUE again")
    qr.add_argument("queue", metavar="QUEUE")
    qr.set_defaults(func=cmd_queue_resume)
    ql = qsub.add_parser("list", help="paused queues: since when, by whom and why")
    ql.add_argument("--json", action="store_true")
    ql.set_defaults(func=cmd_queue_list)

    pr = sub.add_parser("prune", help="delete finished jobs past retention")
    pr.add_argument("--older-than", type=float, help="seconds (default SKIPLOCK_RETENTION_SECONDS)")
    pr.add_argument("--keys-older-than", type=float,
                    help="idempotency keys: seconds (default SKIPLOCK_IDEMPOTENCY_RETENTION)")
    pr.set_defaults(func=cmd_prune)

    sc = sub.add_parser("schedules", help="periodic jobs: each schedule's cadence, last and "
                        "next firing (late ones say by how much)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_schedules)

    d = sub.add_parser("demo", help="run a self-contained demo (embedded Postgres if no URL)")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--jobs", type=int, default=200, help="fast jobs to enqueue")
    d.set_defaults(func=cmd_demo)
    _add_extensions(sub)
    return p


def _add_extensions(sub: Any) -> None:
    """Subcommands from optional parts (the HTTP API) when they are installed."""
    # Looked up, not imported: with skiplock.api importing nothing heavy at the top, FastAPI
    # (about half a second of every command's startup) is imported by `skiplock api` alone.
    if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
        return
    try:
        from .api.cli import add_api_command
    except ImportError:
        return
    add_api_command(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        s = validated(Settings, {})
        logs.configure(args.log_level or s.log_level, s.log_json)
        return int(args.func(args))
    except (SkiplockError, ValueError) as exc:
        print(f"skiplock: error: {_scrubbed(str(exc), args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so, but a driver's text may quote the URL
        print(f"skiplock: unexpected {type(exc).__name__}: {_scrubbed(str(exc), args)}",
              file=sys.stderr)
        if log.isEnabledFor(logging.DEBUG):
            print(_scrubbed("".join(traceback.format_exception(exc)), args), file=sys.stderr)
        else:
            print("skiplock: run with --log-level DEBUG for the traceback", file=sys.stderr)
        return 1


def _scrubbed(text: str, args: argparse.Namespace) -> str:
    """``text`` without any database URL this process was given (flag or environment)."""
    for url in (getattr(args, "database_url", None), os.environ.get("SKIPLOCK_DATABASE_URL")):
        text = scrub(text, url)
    return text


if __name__ == "__main__":
    sys.exit(main())
