-- Every query Skiplock runs, by name. Loaded by skiplock.db; parameters use %(name)s.
-- All scheduling and lease comparisons use the database clock (now()), never the caller's.
-- Fenced batch writes test `state::text = 'running'` on purpose: with `state = 'running'` the
-- planner may drive the join from jobs_running_idx, and when its statistics say few rows are
-- running (a fresh backlog) it picks a nested loop that rescans the whole unnest() per row:
-- 400 completions took 98 ms instead of 19 ms. The cast leaves only the primary key path.

-- name: enqueue
WITH inserted AS (
    INSERT INTO jobs (queue, task, args, priority, max_attempts, run_at, unique_key,
                      timeout_seconds, concurrency_key, trace_context)
    VALUES (
        %(queue)s, %(task)s, %(args)s, %(priority)s, %(max_attempts)s,
        coalesce(%(run_at)s, now() + make_interval(secs => coalesce(%(delay)s, 0))),
        %(unique_key)s, %(timeout)s, %(concurrency_key)s, %(trace_context)s::jsonb
    )
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, true AS created FROM inserted
UNION ALL
SELECT id, false AS created FROM jobs
WHERE unique_key = %(unique_key)s AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: enqueue_with_id
-- A job without a unique_key, under the id its producer took ahead (skiplock/job_ids.py), sent
-- alone, autocommit, in one round trip. Sent again after a lost connection, with the same id:
-- the primary key stops a second row, and the row the first try stored is returned (created
-- false) when it is this job. A first try not yet committed makes the INSERT wait for it; its
-- row, committed after this statement's snapshot, is then not seen: no row at all, and the
-- caller runs the statement again. No row either when the id holds another job (the sequence
-- was set back): the caller's second run says so.
WITH inserted AS (
    INSERT INTO jobs (id, queue, task, args, priority, max_attempts, run_at, timeout_seconds,
                      concurrency_key, trace_context)
    OVERRIDING SYSTEM VALUE
    VALUES (
        %(id)s, %(queue)s, %(task)s, %(args)s, %(priority)s, %(max_attempts)s,
        coalesce(%(run_at)s, now() + make_interval(secs => coalesce(%(delay)s, 0))),
        %(timeout)s, %(concurrency_key)s, %(trace_context)s::jsonb
    )
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)
SELECT id, true AS created FROM inserted
UNION ALL
SELECT id, false AS created FROM jobs
WHERE id = %(id)s AND task = %(task)s AND queue = %(queue)s AND args = %(args)s
  AND NOT EXISTS (SELECT 1 FROM inserted);

-- name: reserve_job_ids
-- The next ids of jobs_id_seq for a producer's enqueues (skiplock/job_ids.py): nextval is
-- never rolled back, so a block is the producer's alone whatever happens to its transaction.
SELECT nextval('jobs_id_seq') FROM generate_series(1, %(n)s);

-- name: enqueue_keyed
-- A job with an idempotency key (see skiplock/idempotency.py), or without one (a batch runs
-- every job through this statement). One statement, so a keyed enqueue costs the round trips
-- of an unkeyed one. The key is claimed first, holding the job's id taken from the sequence
-- ahead of the insert; the job is inserted only when the claim succeeded, so a key that
-- outlived its pruned job still stops a duplicate. A key already there returns its row
-- (created false) for the caller to compare the request hashes. A claim not yet committed by
-- another transaction makes this statement wait for it and then return no row (its snapshot
-- predates that commit): the caller runs it again and sees the key.
WITH new AS (
    SELECT nextval('jobs_id_seq') AS id
), claimed AS (
    INSERT INTO idempotency_keys (key, request_hash, request, job_ids)
    SELECT %(unique_key)s::text, %(request_hash)s::text, %(request)s::jsonb, ARRAY[new.id]
    FROM new
    WHERE %(unique_key)s::text IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), inserted AS (
    INSERT INTO jobs (id, queue, task, args, priority, max_attempts, run_at, unique_key,
                      timeout_seconds, concurrency_key, trace_context)
    OVERRIDING SYSTEM VALUE
    SELECT new.id, %(queue)s::text, %(task)s::text, %(args)s::jsonb, %(priority)s::smallint,
           %(max_attempts)s::int,
           coalesce(%(run_at)s::timestamptz,
                    now() + make_interval(secs => coalesce(%(delay)s::float8, 0))),
           %(unique_key)s::text, %(timeout)s::float8, %(concurrency_key)s::text,
           %(trace_context)s::jsonb
    FROM new
    WHERE %(unique_key)s::text IS NULL OR EXISTS (SELECT 1 FROM claimed)
    RETURNING id
)
SELECT id, true AS created, NULL::bigint[] AS job_ids, NULL::text AS request_hash,
       NULL::jsonb AS request
FROM inserted
UNION ALL
SELECT k.job_ids[1], false, k.job_ids, k.request_hash, k.request FROM idempotency_keys AS k
WHERE k.key = %(unique_key)s::text AND NOT EXISTS (SELECT 1 FROM claimed);

-- name: enqueue_many_unnest
-- Keyed jobs claim their keys first (as enqueue_keyed does, ids taken ahead of the insert);
-- a job is inserted when it has no key or its claim succeeded: a key already stored, or
-- repeated within the call, skips its job. The caller then compares the request hashes.
WITH x AS (
    SELECT nextval('jobs_id_seq') AS id, q, t, a, p, m, r, u, d, h, req, ck, tc
    FROM unnest(
        %(queues)s::text[], %(tasks)s::text[], %(args)s::jsonb[], %(priorities)s::smallint[],
        %(max_attempts)s::int[], %(run_ats)s::timestamptz[], %(unique_keys)s::text[],
        %(timeouts)s::float8[], %(request_hashes)s::text[], %(requests)s::jsonb[],
        %(concurrency_keys)s::text[], %(trace_contexts)s::jsonb[]
    ) AS x(q, t, a, p, m, r, u, d, h, req, ck, tc)
), claimed AS (
    INSERT INTO idempotency_keys (key, request_hash, request, job_ids)
    SELECT u, h, req, ARRAY[id] FROM x WHERE u IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING job_ids[1] AS id
)
INSERT INTO jobs (id, queue, task, args, priority, max_attempts, run_at, unique_key,
                  timeout_seconds, concurrency_key, trace_context)
OVERRIDING SYSTEM VALUE
SELECT id, q, t, a, p, m, coalesce(r, now()), u, d, ck, tc FROM x
WHERE u IS NULL OR id IN (SELECT id FROM claimed)
RETURNING id;

-- name: claim_idempotency_key
-- A batch's key, claimed before its jobs are inserted (job_ids set after them, in the same
-- transaction). No row: the key is taken (or was, by a transaction that has just committed).
INSERT INTO idempotency_keys (key, request_hash, request, job_ids)
VALUES (%(key)s, %(request_hash)s, %(request)s, '{}')
ON CONFLICT (key) DO NOTHING
RETURNING key;

-- name: set_idempotency_jobs
-- RETURNING: the caller reads it, so an error surfaces before COMMIT is sent.
UPDATE idempotency_keys SET job_ids = %(job_ids)s::bigint[] WHERE key = %(key)s
RETURNING key;

-- name: idempotency_keys
SELECT key, job_ids, request_hash, request FROM idempotency_keys
WHERE key = ANY(%(keys)s::text[]);

-- name: claim
-- One short transaction: lock up to %(limit)s runnable jobs, skipping rows other workers hold.
-- Per queue, an ordered scan of jobs_runnable_unlimited_idx that stops after %(limit)s rows:
-- with `queue = ANY(...)` instead, the index order is lost and every claim sorted the whole
-- backlog. Jobs with a concurrency_key are limited ones (sql/limits.sql claims them): left
-- out by the index itself, so a backlog of them queued ahead costs this scan nothing (as a
-- filter on task, each claim walked all of them first).
WITH picked AS (
    SELECT c.id FROM unnest(%(queues)s::text[]) AS q(name)
    -- the claim itself checks for paused queues: a worker that missed the NOTIFY never claims
    CROSS JOIN LATERAL (SELECT NOT EXISTS (SELECT 1 FROM paused_queues AS p
                                           WHERE p.queue = q.name) AS open) AS o
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM jobs
        WHERE state = 'queued' AND queue = q.name AND run_at <= now()
          AND concurrency_key IS NULL
          -- jobs this worker's version cannot run while a live peer can (a rolling deploy):
          -- left to that peer; both arrays are empty outside a rollout. The limited tasks are
          -- in it too, for their jobs not yet given a key (adopt_unkeyed, sql/limits.sql)
          AND task <> ALL(%(skip_tasks)s::text[]) AND id <> ALL(%(skip_ids)s::bigint[])
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE o.open
    ORDER BY c.priority, c.run_at, c.id
    LIMIT %(limit)s
)
UPDATE jobs AS j
{{claim_set}}
-- by an array of ids, not a join: an index lookup per id whatever the planner guesses of
-- picked's size (as a join, with LIMIT unknown, a generic plan hashed the whole jobs table)
WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
RETURNING {{claimed_columns}};

-- clause: claim_set
-- What every claim (this one, sql/limits.sql claim_limited and claim_limited_unlocked) writes
-- on the jobs it takes: one attempt more, this worker's lease.
SET state = 'running',
    attempts = j.attempts + 1,
    locked_by = %(worker_id)s,
    locked_until = now() + make_interval(secs => %(lease_seconds)s),
    started_at = now()

-- clause: claimed_columns
-- What every claim returns of a job, in the order of db.ClaimedJob.
j.id, j.queue, j.task, j.args, j.attempts, j.max_attempts,
extract(epoch FROM now() - j.unrunnable_since)::float8 AS unrunnable_for,
j.timeout_seconds, j.snoozes, j.trace_context

-- name: rescue_expired
-- Jobs whose worker stopped renewing: back to queued, or dead once out of attempts.
-- run_at is kept (it is in the past): a rescued job keeps its place at the head of the queue
-- instead of waiting behind the whole backlog.
-- SKIP LOCKED so the rescuer never waits on (or deadlocks with) a worker's own writes.
-- A job whose cancel was requested ends cancelled (its worker died before it could say so).
WITH expired AS (
    SELECT id FROM jobs
    WHERE state = 'running' AND queue = ANY(%(queues)s) AND locked_until < now()
    ORDER BY locked_until
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'::job_state
                 WHEN j.attempts >= j.max_attempts THEN 'dead'::job_state
                 ELSE 'queued'::job_state END,
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR j.attempts >= j.max_attempts
                       THEN now() END,
    last_error = format('lease expired: worker %%s stopped renewing attempt %%s of %%s (crashed or cut off)',
                        j.locked_by, j.attempts, j.max_attempts),
    errors = j.errors || jsonb_build_object(
        'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
        'error', format('lease expired: worker %%s stopped renewing', j.locked_by)
                 || CASE WHEN j.cancel_requested_at IS NOT NULL
                         THEN format('; cancelled as requested by %%s', j.cancel_reason)
                         ELSE '' END),
    locked_by = NULL,
    locked_until = NULL,
    unrunnable_since = NULL
FROM expired
WHERE j.id = expired.id
RETURNING j.id, j.state, j.attempts;

-- name: renew_leases
-- Fenced: only rows this worker still owns at this attempt are extended. The answer carries
-- each cancel request, so a worker learns of it without LISTEN (behind a pooler, a cut link).
-- A lease that already expired is not revived, even before the rescuer re-queues the job:
-- its slot counted as free from that moment (sql/limits.sql), so another worker may have
-- taken it; the run is lost and its handler told to stop (lease_renewer.py).
UPDATE jobs AS j
SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS f(id, attempt)
WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
  AND j.attempts = f.attempt AND j.locked_until >= now()
RETURNING j.id, j.cancel_reason, j.cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: complete_succeeded
-- Fenced completion and its result in one statement: a stale worker updates no row, so it
-- writes no result either; ON CONFLICT keeps the first result if one was ever written.
-- A cancel request stored before this statement wins: the job ends cancelled, no result.
-- A None result (JSON null) writes no row: every reader LEFT JOINs results and gives None
-- for a missing row, as for a stored null, and the row with its foreign-key check was about
-- half of this statement's cost (docs/benchmarks.md). Falsy results (0, "", [], {}) are rows.
-- Every job it finishes is announced by the statement's own notify (announced, below),
-- and the flipped wake_on_finish keeps the row trigger from announcing it again (0013).
WITH done AS (
    UPDATE jobs AS j
    SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'succeeded'::job_state
                     ELSE 'cancelled'::job_state END,
        wake_on_finish = NOT j.wake_on_finish,
        errors = CASE WHEN j.cancel_requested_at IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_object(
                          'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
                          'error', format('cancelled as requested by %%s; the handler '
                                          'finished and its result was discarded',
                                          j.cancel_reason)) END,
        finished_at = now(), locked_by = NULL, locked_until = NULL
    -- results arrive as one JSON array (one json.dumps for the batch), zipped by position
    FROM ROWS FROM (unnest(%(ids)s::bigint[]), unnest(%(attempts)s::int[]),
                    jsonb_array_elements(%(results)s::jsonb)) AS f(id, attempt, result)
    WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
      AND j.attempts = f.attempt
    RETURNING j.id, j.state, f.result
), stored AS (
    INSERT INTO results (job_id, result)
    SELECT id, result FROM done WHERE state = 'succeeded' AND jsonb_typeof(result) <> 'null'
    ON CONFLICT (job_id) DO NOTHING
), finished AS (
    SELECT id FROM done
), {{announce_finished}}
-- announced is read so that it runs (a SELECT in WITH runs only when it is referenced)
SELECT id, state::text FROM done, announced;

-- clause: announce_finished
-- The finish notify of the completion statement's `finished` rows: one pg_notify per 300
-- ids ("12,13,14": at most ~6 kB, under NOTIFY's 8000-byte payload limit), on %(channel)s.
announced AS (
    SELECT count(pg_notify(%(channel)s, ids)) AS sent
    FROM (SELECT string_agg(id::text, ',') AS ids
          FROM (SELECT id, (row_number() OVER () - 1) / 300 AS chunk FROM finished) AS numbered
          GROUP BY chunk) AS chunks
)

-- name: complete_failed
-- Fenced failure: retry later (run_at = now() + backoff) or dead when out of attempts or permanent.
-- A job whose cancel was requested ends cancelled instead (never retried), with who asked.
-- The jobs it finishes (dead, cancelled) are announced as complete_succeeded's are: by the
-- statement's own notify, wake_on_finish flipped on each of them (0013).
WITH failed AS (
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NOT NULL THEN 'cancelled'::job_state
                 WHEN f.permanent OR j.attempts >= j.max_attempts THEN 'dead'::job_state
                 ELSE 'queued'::job_state END,
    wake_on_finish = j.wake_on_finish <> (j.cancel_requested_at IS NOT NULL OR f.permanent
                                           OR j.attempts >= j.max_attempts),
    run_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR f.permanent
                       OR j.attempts >= j.max_attempts
                  THEN j.run_at ELSE now() + make_interval(secs => f.delay) END,
    finished_at = CASE WHEN j.cancel_requested_at IS NOT NULL OR f.permanent
                            OR j.attempts >= j.max_attempts THEN now() END,
    last_error = f.error,
    errors = j.errors || jsonb_build_object(
        'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
        'error', CASE WHEN j.cancel_requested_at IS NULL THEN f.error
                      ELSE format('cancelled as requested by %%s: %%s', j.cancel_reason,
                                  f.error) END),
    locked_by = NULL,
    locked_until = NULL,
    unrunnable_since = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(errors)s::text[],
            %(delays)s::float8[], %(permanent)s::bool[]) AS f(id, attempt, error, delay, permanent)
WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
  AND j.attempts = f.attempt
RETURNING j.id, j.state
), finished AS (
    SELECT id FROM failed WHERE state IN ('dead', 'cancelled')
), {{announce_finished}}
SELECT id, state FROM failed, announced;

-- name: release
-- Fenced hand-back (shutdown, or a job for a peer that runs its task): the attempt does not
-- count, the job is runnable at once and keeps its place in the queue (run_at is in the past).
-- A job whose cancel was requested is not handed back: it ends cancelled.
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'queued'::job_state
                 ELSE 'cancelled'::job_state END,
    attempts = CASE WHEN j.cancel_requested_at IS NULL THEN j.attempts - 1 ELSE j.attempts END,
    finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    errors = CASE WHEN j.cancel_requested_at IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_object(
                      'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
                      'error', format('cancelled as requested by %%s (the worker stopped '
                                      'before the handler did)', j.cancel_reason)) END,
    locked_by = NULL, locked_until = NULL, unrunnable_since = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS f(id, attempt)
WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
  AND j.attempts = f.attempt
RETURNING j.id, j.state::text;

-- name: schema_version
-- The newest migration applied (its transactional part: what the queries need), which a
-- worker compares with the newest its code ships before it claims anything.
SELECT coalesce(max(version), 0) FROM schema_migrations;

-- name: register_task
INSERT INTO tasks (name, params, max_attempts, queue, updated_at)
VALUES (%(name)s, %(params)s, %(max_attempts)s, %(queue)s, now())
ON CONFLICT (name) DO UPDATE
SET params = excluded.params, max_attempts = excluded.max_attempts, queue = excluded.queue,
    updated_at = now();

-- name: list_tasks
-- limits: the producers compute a limited job's concurrency_key from them (limits.key_for)
SELECT name, params, max_attempts, queue, limits FROM tasks ORDER BY name;

-- name: get_job
SELECT j.id, j.queue, j.task, j.args, j.state::text AS state, j.priority, j.attempts,
       j.max_attempts, j.run_at, j.locked_until, j.locked_by, j.last_error, j.errors,
       j.unique_key, j.created_at, j.started_at, j.finished_at, r.result,
       (j.state = 'running' AND j.locked_until < now()) AS stuck,
       j.cancel_requested_at, j.cancel_reason, j.timeout_seconds, j.snoozes
FROM jobs AS j LEFT JOIN results AS r ON r.job_id = j.id
WHERE j.id = %(id)s;

-- name: jobs_by_ids
-- Whole rows (args, errors per attempt, result) for jobs that search_jobs found, newest first:
-- the filters live in one query only.
SELECT j.id, j.queue, j.task, j.args, j.state::text AS state, j.priority, j.attempts,
       j.max_attempts, j.run_at, j.locked_until, j.locked_by, j.last_error, j.errors,
       j.unique_key, j.created_at, j.started_at, j.finished_at, r.result,
       (j.state = 'running' AND j.locked_until < now()) AS stuck,
       j.cancel_requested_at, j.cancel_reason, j.timeout_seconds, j.snoozes
FROM jobs AS j LEFT JOIN results AS r ON r.job_id = j.id
WHERE j.id = ANY(%(ids)s::bigint[])
ORDER BY j.id DESC;

-- clause: live_queue_names
-- The queues that hold queued or running jobs, by a skip scan of each hot partial index (one
-- descent per queue, not DISTINCT over the table). Rows may be NULL: filter them out.
queued_names AS (
    (SELECT queue FROM jobs WHERE state = 'queued' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs AS j WHERE j.state = 'queued' AND j.queue > q.queue
            ORDER BY j.queue LIMIT 1)
    FROM queued_names AS q WHERE q.queue IS NOT NULL
), running_names AS (
    (SELECT queue FROM jobs WHERE state = 'running' ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue FROM jobs AS j WHERE j.state = 'running' AND j.queue > q.queue
            ORDER BY j.queue LIMIT 1)
    FROM running_names AS q WHERE q.queue IS NOT NULL
)

-- name: queue_stats
-- Per-queue counts for the CLI, API, metrics and the operator. Each count is capped at
-- %(cap)s so the cost stays bounded on huge tables: past the cap the number changes no decision.
-- Every part reads a partial index, never the table: queue names by a skip scan of the hot
-- indexes (not DISTINCT over the table), a queue's priorities by a skip scan of the runnable
-- index (ordered by queue, priority, run_at), then per priority the runnable and scheduled
-- jobs and the oldest runnable one by a seek each, retries by jobs_retrying_idx,
-- jobs waiting for a worker that can run them by jobs_unrunnable_idx (few rows, never the claim).
WITH RECURSIVE {{live_queue_names}}, names AS (
    SELECT unnest(%(queues)s::text[]) AS queue
    UNION
    SELECT queue FROM tasks WHERE %(queues)s::text[] = '{}'
    UNION
    SELECT queue FROM queued_names WHERE queue IS NOT NULL AND %(queues)s::text[] = '{}'
    UNION
    SELECT queue FROM running_names WHERE queue IS NOT NULL AND %(queues)s::text[] = '{}'
    UNION
    -- a queue paused before its first job must still show, or it could not be resumed from
    -- the dashboard
    SELECT queue FROM paused_queues WHERE %(queues)s::text[] = '{}'
)
SELECT n.queue,
       -- runnable and scheduled: one seek per priority (jobs_runnable_idx is ordered by
       -- queue, priority, run_at), the outer LIMIT capping the total. As one range over the
       -- queue, `run_at > now()` was a filter: the scheduled count first stepped over every
       -- runnable job (30,000 per queue in the benchmark's backlog mix), and the runnable
       -- count over the scheduled jobs of each lower priority.
       (SELECT count(*) FROM (
            SELECT 1 FROM unnest(pr.priorities) AS p(priority)
            CROSS JOIN LATERAL (SELECT 1 FROM jobs AS j WHERE j.state = 'queued'
                                AND j.queue = n.queue AND j.priority = p.priority
                                AND j.run_at <= now() LIMIT %(cap)s) AS y
            LIMIT %(cap)s) AS x) AS runnable,
       (SELECT count(*) FROM (
            SELECT 1 FROM unnest(pr.priorities) AS p(priority)
            CROSS JOIN LATERAL (SELECT 1 FROM jobs AS j WHERE j.state = 'queued'
                                AND j.queue = n.queue AND j.priority = p.priority
                                AND j.run_at > now() LIMIT %(cap)s) AS y
            LIMIT %(cap)s) AS x) AS scheduled,
       (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'running' AND queue = n.queue
                              AND locked_until >= now() LIMIT %(cap)s) AS x) AS in_flight,
       (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'running' AND queue = n.queue
                              AND locked_until < now() LIMIT %(cap)s) AS x) AS stuck,
       d.dead,
       d.dead_last_hour,
       CASE WHEN %(high_attempts)s::int > 1 THEN
           (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state IN ('queued', 'running')
                                  AND attempts > 1 AND queue = n.queue
                                  AND attempts >= %(high_attempts)s LIMIT %(cap)s) AS x)
       ELSE
           (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state IN ('queued', 'running')
                                  AND queue = n.queue AND attempts >= %(high_attempts)s
                                  LIMIT %(cap)s) AS x)
       END AS high_retry,
       (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE state = 'queued' AND queue = n.queue
                              AND unrunnable_since IS NOT NULL LIMIT %(cap)s) AS x)
           AS waiting_for_worker,
       -- the oldest run_at of each priority (its first entry), the oldest of those that are due
       (SELECT extract(epoch FROM now() - min(o.run_at)) FROM (
            SELECT (SELECT j.run_at FROM jobs AS j WHERE j.state = 'queued' AND j.queue = n.queue
                    AND j.priority = p.priority ORDER BY j.run_at LIMIT 1) AS run_at
            FROM unnest(pr.priorities) AS p(priority)
        ) AS o WHERE o.run_at <= now()) AS oldest_runnable_age
FROM names AS n
-- The priorities the queue's queued jobs have, by a skip scan over jobs_runnable_idx (one
-- descent per priority: few in practice; bounded by what smallint holds).
CROSS JOIN LATERAL (
    WITH RECURSIVE prio AS (
        (SELECT priority FROM jobs WHERE state = 'queued' AND queue = n.queue
         ORDER BY priority LIMIT 1)
        UNION ALL
        SELECT (SELECT j.priority FROM jobs AS j WHERE j.state = 'queued'
                AND j.queue = n.queue AND j.priority > p.priority
                ORDER BY j.priority LIMIT 1)
        FROM prio AS p WHERE p.priority IS NOT NULL
    )
    SELECT ARRAY(SELECT priority FROM prio WHERE priority IS NOT NULL) AS priorities
) AS pr
-- Both dead counts from one scan, newest first: the last hour's are the first rows, so each
-- count is still exact up to %(cap)s.
CROSS JOIN LATERAL (
    SELECT count(*) AS dead,
           count(*) FILTER (WHERE x.finished_at > now() - interval '1 hour') AS dead_last_hour
    FROM (SELECT finished_at FROM jobs WHERE state = 'dead' AND queue = n.queue
          ORDER BY finished_at DESC LIMIT %(cap)s) AS x
) AS d
ORDER BY n.queue;

-- name: state_counts
SELECT queue, state::text AS state, count(*) AS n FROM jobs GROUP BY queue, state ORDER BY queue, state;

-- name: busy_workers
-- Which workers hold live leases (the operator uses it to pick idle pods to remove first).
SELECT locked_by, count(*) AS running FROM jobs
WHERE state = 'running' AND queue = ANY(%(queues)s) AND locked_until >= now()
GROUP BY locked_by;

-- name: retry_job
UPDATE jobs
SET state = 'queued', run_at = now(), finished_at = NULL, unrunnable_since = NULL,
    cancel_requested_at = NULL, cancel_reason = NULL,
    max_attempts = greatest(max_attempts, attempts + 1)
WHERE id = %(id)s AND state IN ('dead', 'cancelled')
RETURNING id, queue;

-- name: job_state
SELECT state::text AS state FROM jobs WHERE id = %(id)s;

-- name: notify_queue
SELECT pg_notify(%(channel)s, %(queue)s);

-- name: prune_finished
-- Delete finished jobs past retention, in bounded batches so pruning never holds long locks.
WITH old AS (
    SELECT id FROM jobs
    WHERE finished_at IS NOT NULL AND finished_at < now() - make_interval(secs => %(retention_seconds)s)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM jobs AS j USING old WHERE j.id = old.id
RETURNING j.id;

-- name: prune_idempotency_keys
-- Keys past their retention whose jobs are all gone (a key lives at least as long as its job,
-- so a stored job's key always answers), in bounded batches like prune_finished.
WITH old AS (
    SELECT key FROM idempotency_keys AS k
    WHERE created_at < now() - make_interval(secs => %(retention_seconds)s)
      AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = ANY(k.job_ids))
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM idempotency_keys AS k USING old WHERE k.key = old.key
RETURNING k.key;

-- name: database_now
SELECT now() AS now;

-- name: overview_queue_names
-- One page of the queues the overview lists, in name order, and how many it lists in all: the
-- queues named, or else every queue that has a task, queued or running jobs, a pause, or a job
-- finished within the window (its throughput is worth a row; %(finished)s names those). The
-- page is the %(limit)s names after %(after)s (NULL: the first page), compared in the
-- database's collation, which is the order of the list; one name more tells that another page
-- follows. A row comes back even for a page past the end (queue NULL), to carry the total.
-- The overview counts only the page's queues.
WITH RECURSIVE {{live_queue_names}}, listed AS (
    SELECT unnest(%(queues)s::text[]) AS queue
    UNION SELECT queue FROM tasks WHERE %(queues)s::text[] = '{}'
    UNION SELECT queue FROM queued_names WHERE queue IS NOT NULL AND %(queues)s::text[] = '{}'
    UNION SELECT queue FROM running_names WHERE queue IS NOT NULL AND %(queues)s::text[] = '{}'
    UNION SELECT queue FROM paused_queues WHERE %(queues)s::text[] = '{}'
    -- the queues that finished jobs within the window's buckets (api/throughput.py counted
    -- them): passed in, not read again from jobs
    UNION SELECT unnest(%(finished)s::text[]) WHERE %(queues)s::text[] = '{}'
)
SELECT t.total, p.queue
FROM (SELECT count(*) AS total FROM listed) AS t
LEFT JOIN LATERAL (
    SELECT queue FROM listed
    WHERE %(after)s::text IS NULL OR queue > %(after)s::text
    ORDER BY queue
    LIMIT %(limit)s::int + 1
) AS p ON true
ORDER BY p.queue;

-- name: finished_counts
-- Jobs that finished since %(since)s (a bucket's start), per time bucket and queue, for every
-- queue: the overview's throughput (api/throughput.py keeps the closed buckets). Every final
-- state makes a row, so a queue that only cancelled jobs is still listed; the chart counts
-- succeeded and dead. The range on finished_at is read by jobs_finished_idx, so the cost
-- follows the buckets read, not the table.
SELECT date_bin(make_interval(secs => %(bucket_seconds)s), finished_at,
                timestamptz '2000-01-01 00:00:00+00') AS bucket,
       queue,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'dead') AS dead
FROM jobs
WHERE finished_at >= %(since)s::timestamptz
GROUP BY 1, 2;

-- fragment: job_filter
-- The jobs view's filters over `jobs AS j`, written once: search_jobs lists with it, and the
-- bulk actions (bulk.sql) count and pick with it, so a bulk action acts on exactly the jobs the
-- list shows. before_id is the list's cursor (newest first), which the bulk batches walk too.
(%(states)s::job_state[] IS NULL OR j.state = ANY(%(states)s::job_state[]))
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s)
  AND (%(task)s::text IS NULL OR j.task = %(task)s)
  AND (NOT %(stuck)s OR (j.state = 'running' AND j.locked_until < now()))
  AND (NOT %(waiting_for_worker)s OR (j.state = 'queued' AND j.unrunnable_since IS NOT NULL))
  AND (%(min_attempts)s::int IS NULL OR j.attempts >= %(min_attempts)s)
  AND (%(created_after)s::timestamptz IS NULL OR j.created_at >= %(created_after)s)
  AND (%(created_before)s::timestamptz IS NULL OR j.created_at < %(created_before)s)
  AND (%(finished_after)s::timestamptz IS NULL OR j.finished_at >= %(finished_after)s)
  AND (%(finished_before)s::timestamptz IS NULL OR j.finished_at < %(finished_before)s)
  -- a substring, as LIKE with its wildcards escaped: the form jobs_last_error_trgm_idx serves
  AND (%(error_contains)s::text IS NULL OR j.last_error LIKE '%%' || replace(replace(replace(
         %(error_contains)s, '\', '\\'), '%%', '\%%'), '_', '\_') || '%%')
  AND (%(before_id)s::bigint IS NULL OR j.id < %(before_id)s)

-- name: search_jobs
-- The jobs list (HTTP API, dashboard, CLI): every filter, several states at once, without args,
-- errors or results (they can be large; jobs_by_ids and get_job read them).
-- Newest first with an id cursor, so a page costs the same at any depth.
SELECT j.id, j.queue, j.task, j.state::text AS state, j.priority, j.attempts, j.max_attempts,
       j.run_at, j.locked_until, j.locked_by, left(j.last_error, 500) AS last_error,
       j.unique_key, j.created_at, j.started_at, j.finished_at,
       (j.state = 'running' AND j.locked_until < now()) AS stuck,
       j.cancel_requested_at, j.snoozes
FROM jobs AS j
WHERE {{job_filter}}
ORDER BY j.id DESC
LIMIT %(limit)s;

-- name: lease_holders
-- Who holds running jobs, per worker and queue: live leases, and expired ones (the worker died
-- or was cut off mid-job). Only running rows, so jobs_running_idx bounds the cost.
SELECT locked_by, queue,
       count(*) FILTER (WHERE locked_until >= now()) AS live,
       count(*) FILTER (WHERE locked_until < now()) AS expired,
       extract(epoch FROM now() - max(locked_until)) AS silent_for
FROM jobs
WHERE state = 'running'
GROUP BY locked_by, queue
ORDER BY count(*) FILTER (WHERE locked_until < now()) DESC, locked_by, queue
LIMIT %(limit)s;

-- name: retry_dead_matching
-- Bulk retry after a fix: dead jobs matching the filters, oldest first, at most %(limit)s.
-- Each gets one more attempt if it had none left, as retry_job does.
WITH picked AS (
    SELECT id FROM jobs
    WHERE state = 'dead'
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(error_contains)s::text IS NULL OR last_error LIKE '%%' || replace(replace(replace(
             %(error_contains)s, '\', '\\'), '%%', '\%%'), '_', '\_') || '%%')
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs AS j
SET state = 'queued', run_at = now(), finished_at = NULL, unrunnable_since = NULL,
    cancel_requested_at = NULL, cancel_reason = NULL,
    max_attempts = greatest(j.max_attempts, j.attempts + 1)
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.queue;

-- name: register_worker
-- A worker's row in the registry (a restarted process gets a new id, so this inserts).
INSERT INTO workers (id, queues, tasks, concurrency, lease_seconds)
VALUES (%(id)s, %(queues)s, %(tasks)s, %(concurrency)s, %(lease_seconds)s)
ON CONFLICT (id) DO UPDATE
SET queues = excluded.queues, tasks = excluded.tasks, concurrency = excluded.concurrency,
    lease_seconds = excluded.lease_seconds, last_seen = now();

-- name: worker_heartbeat
-- The registry heartbeat: proof of life plus what the liveness check sees. Returns the tasks
-- every *other* live worker registered, so the worker knows who can run what it cannot.
WITH beat AS (
    UPDATE workers
    SET last_seen = now(), running = %(running)s, pending_outcomes = %(pending_outcomes)s,
        oldest_pending_seconds = %(oldest_pending_seconds)s, healthy = %(healthy)s,
        problem = %(problem)s
    WHERE id = %(id)s
    RETURNING id
)
SELECT true AS self, id, NULL::jsonb AS tasks, NULL::text[] AS queues FROM beat
UNION ALL
SELECT false, w.id, w.tasks, w.queues
FROM workers AS w
WHERE w.id <> %(id)s AND w.last_seen >= now() - make_interval(secs => w.lease_seconds);

-- name: forget_worker
DELETE FROM workers WHERE id = %(id)s;

-- name: prune_workers
-- Rows of workers that stopped beating long ago (crashed, SIGKILLed): kept for a while so
-- /v1/workers can show them, then deleted by any live worker.
DELETE FROM workers
WHERE last_seen < now() - make_interval(secs => %(keep_seconds)s)
RETURNING id;

-- name: worker_registry
-- Every registered worker for /v1/workers and the dashboard: live or not, healthy or not.
SELECT id, queues, concurrency, lease_seconds, started_at, last_seen, running,
       pending_outcomes, oldest_pending_seconds, healthy, problem,
       last_seen >= now() - make_interval(secs => lease_seconds) AS alive,
       extract(epoch FROM now() - last_seen) AS silent_for,
       (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(tasks) AS k) AS tasks
FROM workers
ORDER BY alive DESC, id
LIMIT %(limit)s;

-- name: defer_unrunnable
-- Fenced hand-back of jobs no live worker can run yet: the attempt does not count, the job
-- is looked at again after %(delays)s, and unrunnable_since keeps the first time it was seen.
-- A job whose cancel was requested ends cancelled instead.
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'queued'::job_state
                 ELSE 'cancelled'::job_state END,
    attempts = CASE WHEN j.cancel_requested_at IS NULL THEN j.attempts - 1 ELSE j.attempts END,
    finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    locked_by = NULL, locked_until = NULL,
    run_at = CASE WHEN j.cancel_requested_at IS NULL
                  THEN now() + make_interval(secs => f.delay) ELSE j.run_at END,
    unrunnable_since = CASE WHEN j.cancel_requested_at IS NULL
                            THEN coalesce(j.unrunnable_since, now()) END,
    last_error = CASE WHEN j.cancel_requested_at IS NULL THEN f.reason
                      ELSE format('cancelled as requested by %%s', j.cancel_reason) END,
    errors = CASE WHEN j.cancel_requested_at IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_object(
                      'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
                      'error', format('cancelled as requested by %%s (before a worker that '
                                      'can run it took it)', j.cancel_reason)) END
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(reasons)s::text[], %(delays)s::float8[])
    AS f(id, attempt, reason, delay)
WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
  AND j.attempts = f.attempt
RETURNING j.id, j.state::text;

-- name: transaction_settings
-- Behind a transaction pooler (PgBouncer, pool_mode = transaction) no startup `options` reach
-- the server, and a session SET would stay on a server connection other clients get next: the
-- settings conninfo() sends as options are set for this transaction only, by the statement
-- that opens it. NULL keeps the server's own value (synchronous_commit, read-only).
SELECT set_config('search_path', %(search_path)s, true),
       set_config('statement_timeout', %(statement_timeout)s, true),
       set_config('jit', 'off', true),
       set_config('synchronous_commit',
                  coalesce(%(synchronous_commit)s, current_setting('synchronous_commit')), true),
       set_config('transaction_read_only',
                  coalesce(%(read_only)s, current_setting('transaction_read_only')), true);

-- name: search_path_swap
-- An enqueue on the caller's connection, inside their transaction: our schema for our statement
-- only, then theirs again (the same query, given the value it returned). is_local: a rollback
-- puts theirs back too. OFFSET 0 keeps the subquery from being flattened, so the previous value
-- is read before set_config changes it.
SELECT previous, set_config('search_path', %(search_path)s, true)
  FROM (SELECT current_setting('search_path') AS previous OFFSET 0) AS caller;
