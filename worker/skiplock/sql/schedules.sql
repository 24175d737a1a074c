-- Periodic jobs (skiplock/schedules.py, worker/scheduler.py, docs/schedules.md). Every time
-- compared here is the database's now(); the fire times the caller passes were computed from
-- a now() it read from this database.

-- name: schedule_now
SELECT now();

-- name: register_app_schedule
-- A worker declares one of its code's schedules at start. The definition of the worker that
-- started last wins (in a rolling deploy: the new version's), but the fire time moves only
-- when the cadence changed: restarting workers must not skip or repeat a firing. A schedule
-- of the same name from a JobSchedule resource is left alone (returns no row).
INSERT INTO schedules AS s (name, task, queue, cron, every_seconds, timezone, args, missed,
                            backfill_limit, grace_seconds, jitter_seconds, priority, source,
                            next_fire_at, seen_at)
VALUES (%(name)s, %(task)s, %(queue)s, %(cron)s, %(every)s, %(timezone)s, %(args)s,
        %(missed)s, %(backfill)s, %(grace)s, %(jitter)s, %(priority)s, 'app',
        %(next_fire_at)s, now())
ON CONFLICT (name) DO UPDATE SET
    task = EXCLUDED.task, queue = EXCLUDED.queue, args = EXCLUDED.args,
    missed = EXCLUDED.missed, backfill_limit = EXCLUDED.backfill_limit,
    grace_seconds = EXCLUDED.grace_seconds, jitter_seconds = EXCLUDED.jitter_seconds,
    priority = EXCLUDED.priority, seen_at = now(),
    updated_at = CASE WHEN (s.task, s.queue, s.cron, s.every_seconds, s.timezone, s.args,
                            s.missed, s.backfill_limit, s.grace_seconds, s.jitter_seconds,
                            s.priority)
                           IS DISTINCT FROM
                           (EXCLUDED.task, EXCLUDED.queue, EXCLUDED.cron,
                            EXCLUDED.every_seconds, EXCLUDED.timezone, EXCLUDED.args,
                            EXCLUDED.missed, EXCLUDED.backfill_limit, EXCLUDED.grace_seconds,
                            EXCLUDED.jitter_seconds, EXCLUDED.priority)
                      THEN now() ELSE s.updated_at END,
    next_fire_at = CASE WHEN s.next_fire_at IS NULL
                           OR (s.cron, s.every_seconds, s.timezone)
                              IS DISTINCT FROM
                              (EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
                        THEN EXCLUDED.next_fire_at ELSE s.next_fire_at END,
    cron = EXCLUDED.cron, every_seconds = EXCLUDED.every_seconds,
    timezone = EXCLUDED.timezone
WHERE s.source = 'app'
RETURNING name;

-- name: touch_app_schedules
-- A live worker still declares these (its heartbeat for them).
UPDATE schedules SET seen_at = now()
WHERE source = 'app' AND name = ANY(%(names)s::text[]);

-- name: retire_app_schedules
-- App schedules no worker has declared for `keep_seconds`: the code that had them is gone
-- from every live worker (a finished rollout). Their firings go with them. Only where that is
-- evidence: a worker serving the schedule's queue has been live for two minutes (the
-- scheduler's STALE_SECONDS, so it has declared its own by now) and did not declare it. A
-- JobQueue scaled to zero, or one of another JobQueue's workers on the same database, says
-- nothing about that code: its schedules stay (the operator wakes it for them).
WITH gone AS (
    DELETE FROM schedules AS s
    WHERE s.source = 'app' AND s.seen_at < now() - make_interval(secs => %(keep_seconds)s)
      AND EXISTS (SELECT 1 FROM workers AS w
                  WHERE s.queue = ANY(w.queues)
                    AND w.last_seen > now() - make_interval(secs => w.lease_seconds)
                    AND w.started_at < now() - interval '120 seconds')
    RETURNING s.name
), firings AS (
    DELETE FROM schedule_firings AS f USING gone WHERE f.schedule = gone.name
)
SELECT name FROM gone;

-- name: due_schedules
-- What is due, with the now() the plan must use. An app schedule no live worker declares
-- (seen_at older than `stale_seconds`: the rollout that dropped it is under way or done)
-- does not fire: no worker would run its task. A row without a fire time yet (a
-- JobSchedule the operator just wrote) is due at once, to get one.
-- The task's limits (tasks.limits, 0008_limits.sql) come along: the jobs' concurrency key is
-- computed from them as for any enqueue (skiplock/limits.py).
SELECT s.name, s.task, s.args, s.cron, s.every_seconds, s.timezone, s.missed,
       s.backfill_limit, s.grace_seconds, s.jitter_seconds, s.paused, s.next_fire_at,
       t.limits AS task_limits, now() AS now
FROM schedules AS s
LEFT JOIN tasks AS t ON t.name = s.task
WHERE (s.next_fire_at IS NULL OR s.next_fire_at <= now())
  AND (s.source <> 'app' OR s.seen_at > now() - make_interval(secs => %(stale_seconds)s))
ORDER BY s.next_fire_at NULLS FIRST
LIMIT %(limit)s;

-- name: start_schedule
-- The first fire time of a schedule that has none; only if still none (a race between
-- schedulers computes the same value anyway).
UPDATE schedules SET next_fire_at = %(next_fire_at)s
WHERE name = %(name)s AND next_fire_at IS NULL
RETURNING name;

-- name: fire_schedule
-- One scheduler's plan for one schedule, in one statement (one transaction): it moves
-- next_fire_at on only from the value it planned from, so of racing schedulers one wins
-- and the rest change nothing; the winner records each firing under its (schedule, fire
-- time) key, ON CONFLICT DO NOTHING (a firing already recorded is never enqueued again),
-- and enqueues a job per firing recorded. A job's id is taken from the sequence ahead, so
-- the firing row names it. max_attempts: the task's, from the catalogue, else 5; the
-- concurrency key: computed by the caller from the task's limits and the schedule's args.
-- Every worker plans every due schedule; `taken` locks the row SKIP LOCKED, so a loser finds
-- the winner's lock and gives up at once instead of waiting on it to then change nothing (N
-- workers would be N statements in a row per firing). Exactly once still rests on the
-- `next_fire_at = expected` test: a row the winner has committed meanwhile is re-read under
-- the lock (READ COMMITTED) and no longer matches.
WITH taken AS (
    SELECT name FROM schedules
    WHERE name = %(name)s AND next_fire_at = %(expected)s
    FOR UPDATE SKIP LOCKED
), advanced AS (
    UPDATE schedules AS s
    SET next_fire_at = %(next_fire_at)s,
        last_fire_at = coalesce(%(last_fire_at)s::timestamptz, s.last_fire_at),
        missed_total = s.missed_total + %(missed)s,
        updated_at = now()
    FROM taken
    WHERE s.name = taken.name
    RETURNING s.name, s.task, s.queue, s.args, s.priority
), planned AS (
    SELECT a.name, a.task, a.queue, a.args, a.priority, f.fire_at, f.run_at, f.late,
           nextval('jobs_id_seq') AS job_id
    FROM advanced AS a,
         unnest(%(fire_ats)s::timestamptz[], %(run_ats)s::timestamptz[],
                %(lates)s::boolean[]) AS f(fire_at, run_at, late)
), fired AS (
    INSERT INTO schedule_firings (schedule, fire_at, job_id, late)
    SELECT name, fire_at, job_id, late FROM planned
    ON CONFLICT (schedule, fire_at) DO NOTHING
    RETURNING job_id
), enqueued AS (
    INSERT INTO jobs (id, queue, task, args, priority, max_attempts, run_at, concurrency_key)
    OVERRIDING SYSTEM VALUE
    SELECT p.job_id, p.queue, p.task, p.args, p.priority,
           coalesce((SELECT t.max_attempts FROM tasks AS t WHERE t.name = p.task), 5),
           p.run_at, %(concurrency_key)s::text
    FROM planned AS p JOIN fired AS f ON f.job_id = p.job_id
    RETURNING id
)
SELECT (SELECT count(*) FROM advanced) > 0 AS won,
       coalesce((SELECT array_agg(id ORDER BY id) FROM enqueued), '{}') AS job_ids;

-- name: prune_schedule_firings
DELETE FROM schedule_firings
WHERE fired_at < now() - make_interval(secs => %(keep_seconds)s);

-- name: list_schedules
-- Every schedule with its last firing (and that firing's job) and how late its next one is.
SELECT s.name, s.task, s.queue, s.cron, s.every_seconds, s.timezone, s.args, s.missed,
       s.backfill_limit, s.grace_seconds, s.jitter_seconds, s.priority, s.paused, s.source,
       s.next_fire_at, s.last_fire_at, last.job_id AS last_job_id, s.missed_total,
       s.seen_at, s.created_at, s.updated_at,
       CASE WHEN NOT s.paused AND s.next_fire_at < now()
            THEN extract(epoch FROM now() - s.next_fire_at)::float8 ELSE 0 END
           AS late_seconds
FROM schedules AS s
LEFT JOIN LATERAL (
    SELECT f.job_id FROM schedule_firings AS f
    WHERE f.schedule = s.name ORDER BY f.fire_at DESC LIMIT 1
) AS last ON true
ORDER BY s.name
LIMIT %(limit)s;

-- name: upsert_crd_schedule
-- A JobSchedule resource's schedule, written by the operator's leader, with the first fire
-- time it computed from this database's now(): kept when the cadence is unchanged (so a
-- rewrite neither skips nor repeats a firing). The operator computes it, not a worker: with
-- minReplicas 0 no worker runs until the operator scales up ahead of that very time. A row
-- of the same name owned by something else (an app schedule, another resource) is left
-- alone: no row.
INSERT INTO schedules AS s (name, task, queue, cron, every_seconds, timezone, args, missed,
                            backfill_limit, grace_seconds, jitter_seconds, priority, paused,
                            source, next_fire_at)
VALUES (%(name)s, %(task)s, %(queue)s, %(cron)s, %(every)s, %(timezone)s, %(args)s,
        %(missed)s, %(backfill)s, %(grace)s, %(jitter)s, %(priority)s, %(paused)s,
        %(source)s, %(next_fire_at)s)
ON CONFLICT (name) DO UPDATE SET
    task = EXCLUDED.task, queue = EXCLUDED.queue, args = EXCLUDED.args,
    missed = EXCLUDED.missed, backfill_limit = EXCLUDED.backfill_limit,
    grace_seconds = EXCLUDED.grace_seconds, jitter_seconds = EXCLUDED.jitter_seconds,
    priority = EXCLUDED.priority, paused = EXCLUDED.paused,
    next_fire_at = CASE WHEN s.next_fire_at IS NULL
                           OR (s.cron, s.every_seconds, s.timezone)
                              IS DISTINCT FROM
                              (EXCLUDED.cron, EXCLUDED.every_seconds, EXCLUDED.timezone)
                        THEN EXCLUDED.next_fire_at ELSE s.next_fire_at END,
    cron = EXCLUDED.cron, every_seconds = EXCLUDED.every_seconds,
    timezone = EXCLUDED.timezone,
    updated_at = CASE WHEN (s.task, s.queue, s.cron, s.every_seconds, s.timezone, s.args,
                            s.missed, s.backfill_limit, s.grace_seconds, s.jitter_seconds,
                            s.priority, s.paused)
                           IS DISTINCT FROM
                           (EXCLUDED.task, EXCLUDED.queue, EXCLUDED.cron,
                            EXCLUDED.every_seconds, EXCLUDED.timezone, EXCLUDED.args,
                            EXCLUDED.missed, EXCLUDED.backfill_limit, EXCLUDED.grace_seconds,
                            EXCLUDED.jitter_seconds, EXCLUDED.priority, EXCLUDED.paused)
                      THEN now() ELSE s.updated_at END
WHERE s.source = EXCLUDED.source
RETURNING name, next_fire_at, last_fire_at;

-- name: schedule_owner
SELECT source FROM schedules WHERE name = %(name)s;

-- name: remove_crd_schedules
-- Rows of JobSchedule resources in `prefix` (crd:<namespace>/) whose resource is gone: the
-- operator keeps no finalizer, so a delete it did not see is found here, on its next pass.
WITH gone AS (
    DELETE FROM schedules
    WHERE left(source, length(%(prefix)s)) = %(prefix)s AND NOT (source = ANY(%(keep)s::text[]))
    RETURNING name
), firings AS (
    DELETE FROM schedule_firings AS f USING gone WHERE f.schedule = gone.name
)
SELECT name FROM gone;
