-- Concurrency and rate limits (skiplock/limits.py, docs/limits.md).
--
-- A limited task's jobs are never claimed by the plain claim (queries.sql `claim`: the worker
-- passes them in skip_tasks), only by claim_limited, in one of two passes:
-- * unlocked (%(locked)s false), one statement: only for a task-wide limit whose free slots
--   at our snapshot are at least our batch plus twice the concurrency of every other worker
--   registered. Claims we cannot see (committed after our snapshot, or not yet) are other
--   workers', and a worker never holds more than twice its concurrency running (its slots
--   plus the outcomes waiting to be written, see worker/state.py): so they cannot take the
--   room we count on, and far from the cap the claims of a limited task run side by side.
-- * locked, in a short transaction of its own, when the unlocked pass claimed less than the
--   batch (near the cap, per-key limits, per-key rates):
--     lock_limited  (one advisory lock per task that needs it, tried, never waited for)
--     claim_limited (a new statement, so a new snapshot that sees every claim committed by
--                    whoever held the lock before us)
-- A slot is a running job with a live lease: a crashed worker's slots free themselves when
-- its leases expire, with nothing to release and nothing to leak.

-- name: lock_limited
-- Serialises the limited claims of a task (not the plain claim, not other tasks). Never waits:
-- a task whose lock another claim holds is left out (returned are the tasks locked), so a
-- holder that stalls (a slow link, a paused VM) costs the others that task's claims for the
-- moment, not every claim of every worker (the plain claim runs after this one). The holder
-- is claiming that task's free slots anyway; the rest wait for the next claim.
SELECT coalesce(array_agg(t ORDER BY t), '{}')
FROM (SELECT DISTINCT t FROM unnest(%(tasks)s::text[]) AS x(t)) AS s
WHERE pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/limit/' || t, 0));

-- name: claim_limited
-- Up to %(limit)s queued jobs of the limited %(tasks)s within their free slots.
-- Per task: free = least(concurrency_limit - running, rate_limit - starts in the window).
-- Per key: free = least(task free, key_limit - running of the key, per-key rate room).
-- Fairness: keys with room are found by a skip scan over jobs_limited_queued_idx; the keys
-- with the fewest running jobs go first (ties in random order, so no key always loses), each
-- key gives at most its share of the batch, and the jobs are picked by how full their key
-- would be (water-filling), then priority and age. So a key with 10,000 jobs cannot starve
-- one with 10.
WITH RECURSIVE lim AS MATERIALIZED (
    SELECT t.name AS task,
           (t.limits ->> 'concurrency_limit')::int AS task_cap,
           (t.limits ->> 'key_limit')::int AS key_cap,
           (t.limits ->> 'rate_limit')::int AS rate_n,
           (t.limits ->> 'rate_period')::float8 AS rate_period,
           coalesce((t.limits ->> 'rate_per_key')::bool, false) AS rate_per_key
    FROM tasks AS t
    WHERE t.name = ANY(%(tasks)s::text[]) AND t.limits IS NOT NULL
), open AS MATERIALIZED (
    -- the claim checks paused queues itself, as the plain claim does; as an array, so the
    -- scan below stays an ordered index scan that stops at its limit (an anti-join against
    -- paused_queues made the planner sort every queued job of the task)
    SELECT coalesce(array_agg(q.name), '{}') AS queues FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM paused_queues AS p WHERE p.queue = q.name)
), margin AS MATERIALIZED (
    -- the most running jobs other workers could add that our snapshot does not show
    SELECT coalesce(2 * sum(w.concurrency), 0) AS n FROM workers AS w
    WHERE w.id <> %(worker_id)s
), free AS MATERIALIZED (
    -- least() skips NULLs: a limit not declared limits nothing
    SELECT l.*, least(
        l.task_cap - (SELECT count(*) FROM jobs AS j
                      WHERE j.state = 'running' AND j.task = l.task
                        AND j.concurrency_key IS NOT NULL AND j.locked_until >= now()),
        CASE WHEN l.rate_n IS NOT NULL AND NOT l.rate_per_key THEN
            l.rate_n - (SELECT count(*) FROM jobs AS j
                        WHERE j.task = l.task AND j.concurrency_key IS NOT NULL
                          AND j.started_at > now() - make_interval(secs => l.rate_period))
        END
    ) AS left_
    FROM lim AS l
), room AS MATERIALIZED (
    SELECT f.task, f.task_cap, f.key_cap, f.rate_n, f.rate_period, f.rate_per_key,
           CASE WHEN %(locked)s::bool THEN least(%(limit)s::int, f.left_)
                -- a pure concurrency_limit only: the margin bounds the rows others hold
                -- running, not how many they start in a rate window (one that finished
                -- within our claim still counts as a start)
                WHEN f.key_cap IS NULL AND f.rate_n IS NULL
                     AND f.left_ >= %(limit)s::int + (SELECT n FROM margin) THEN %(limit)s::int
                ELSE 0 END AS free
    FROM free AS f
), keys AS (
    -- only keys with a job we could claim now (runnable, in an open queue of ours, not
    -- skipped): a key whose jobs are all delayed or elsewhere would take a place in `chosen`
    -- and a share of the batch (n_keys) and starve the keys that can run
    SELECT r.task, (SELECT j.concurrency_key FROM jobs AS j
                    WHERE j.state = 'queued' AND j.task = r.task
                      AND j.concurrency_key IS NOT NULL
                      AND j.run_at <= now() AND j.queue = ANY((SELECT queues FROM open)::text[])
                      AND j.id <> ALL(%(skip_ids)s::bigint[])
                    ORDER BY j.concurrency_key LIMIT 1) AS k
    FROM room AS r WHERE r.free > 0
    UNION ALL
    SELECT s.task, (SELECT j.concurrency_key FROM jobs AS j
                    WHERE j.state = 'queued' AND j.task = s.task
                      AND j.concurrency_key > s.k
                      AND j.run_at <= now() AND j.queue = ANY((SELECT queues FROM open)::text[])
                      AND j.id <> ALL(%(skip_ids)s::bigint[])
                    ORDER BY j.concurrency_key LIMIT 1)
    FROM keys AS s WHERE s.k IS NOT NULL
), key_room AS MATERIALIZED (
    SELECT s.task, s.k, x.running, r.free AS task_free,
           least(r.free, r.key_cap - x.running,
                 CASE WHEN r.rate_n IS NOT NULL AND r.rate_per_key THEN
                     r.rate_n - (SELECT count(*) FROM jobs AS j
                                 WHERE j.task = s.task AND j.concurrency_key = s.k
                                   AND j.started_at > now() - make_interval(secs => r.rate_period))
                 END) AS free
    FROM keys AS s
    JOIN room AS r ON r.task = s.task
    CROSS JOIN LATERAL (SELECT count(*) AS running FROM jobs AS j
                        WHERE j.state = 'running' AND j.task = s.task
                          AND j.concurrency_key = s.k AND j.locked_until >= now()) AS x
    WHERE s.k IS NOT NULL
), chosen AS MATERIALIZED (
    SELECT c.*, count(*) OVER () AS n_keys
    FROM (SELECT * FROM key_room WHERE free > 0
          ORDER BY running, random() LIMIT %(limit)s) AS c
), candidates AS (
    SELECT c.id, c.priority, c.run_at, k.task, k.task_free,
           k.running + row_number() OVER (PARTITION BY k.task, k.k
                                          ORDER BY c.priority, c.run_at, c.id) AS fill
    FROM chosen AS k
    CROSS JOIN LATERAL (
        SELECT j.id, j.priority, j.run_at FROM jobs AS j
        WHERE j.state = 'queued' AND j.task = k.task AND j.concurrency_key = k.k
          AND j.run_at <= now() AND j.queue = ANY((SELECT queues FROM open)::text[])
          AND j.id <> ALL(%(skip_ids)s::bigint[])
        ORDER BY j.priority, j.run_at, j.id
        LIMIT least(k.free, greatest(1, ceil(%(limit)s::float8 / k.n_keys)::int))
        FOR UPDATE SKIP LOCKED
    ) AS c
), picked AS (
    SELECT id, fill, priority, run_at FROM (
        SELECT c.*, row_number() OVER (PARTITION BY c.task
                                       ORDER BY c.fill, c.priority, c.run_at, c.id) AS n
        FROM candidates AS c
    ) AS x
    WHERE x.n <= x.task_free
    ORDER BY fill, priority, run_at, id
    LIMIT %(limit)s
), claimed AS (
    UPDATE jobs AS j
    SET state = 'running',
        attempts = j.attempts + 1,
        locked_by = %(worker_id)s,
        locked_until = now() + make_interval(secs => %(lease_seconds)s),
        started_at = now()
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.queue, j.task, j.args, j.attempts, j.max_attempts,
              extract(epoch FROM now() - j.unrunnable_since)::float8 AS unrunnable_for,
              j.timeout_seconds, j.snoozes, j.trace_context
)
SELECT c.*, NULL::text[] AS need_lock FROM claimed AS c
UNION ALL
-- One last row, no job: whether the locked pass could claim anything this one left. Only for
-- a task the unlocked pass did not serve that has room (or per-key room to look for) and a
-- runnable job: so an idle limited task, or one at its cap, costs the worker one statement
-- per claim and never a lock. The tasks, so the locked pass locks those only.
SELECT NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
       NULL::float8, NULL::float8, NULL::int, NULL::jsonb,
       CASE WHEN %(locked)s::bool THEN '{}'::text[] ELSE ARRAY(
           SELECT f.task FROM free AS f JOIN room AS r ON r.task = f.task
           WHERE r.free = 0 AND (f.left_ IS NULL OR f.left_ > 0)
             AND EXISTS (SELECT 1 FROM jobs AS j
                         WHERE j.state = 'queued' AND j.task = f.task
                           AND j.concurrency_key IS NOT NULL AND j.run_at <= now()
                           AND j.queue = ANY((SELECT queues FROM open)::text[]))
           ORDER BY f.task) END

-- name: register_limits
-- A worker's declared limits into the catalogue (NULL: the task has none). The last worker to
-- register wins, for every worker at once (docs/limits.md: a rolling deploy).
UPDATE tasks AS t SET limits = f.limits
FROM unnest(%(names)s::text[], %(limits)s::jsonb[]) AS f(name, limits)
WHERE t.name = f.name AND t.limits IS DISTINCT FROM f.limits
RETURNING t.name;

-- name: limited_tasks
-- Every task with limits, for the workers' plain claim (which leaves them to claim_limited)
-- and the producers' keys. Few rows (the catalogue).
SELECT name, limits FROM tasks WHERE limits IS NOT NULL ORDER BY name;

-- name: unkeyed_jobs
-- Queued jobs of a limited task without a key (enqueued before the task had limits, or by a
-- producer that skipped the catalogue): the worker computes their keys with the producers'
-- own code (limits.adoption_keys) and stores them with set_keys, in this transaction.
-- Bounded; a scan of the queues' runnable index, so the worker runs it at start and then once
-- a minute, not per claim.
SELECT f.id, f.task, f.args FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (
    SELECT id, task, args FROM jobs
    WHERE state = 'queued' AND queue = q.name AND task = ANY(%(tasks)s::text[])
      AND concurrency_key IS NULL
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS f;

-- name: set_keys
UPDATE jobs AS j SET concurrency_key = f.key
FROM unnest(%(ids)s::bigint[], %(keys)s::text[]) AS f(id, key)
WHERE j.id = f.id AND j.state = 'queued' AND j.concurrency_key IS NULL
RETURNING j.id;

-- name: fail_unkeyed
-- A job whose key cannot be computed (the producer would have refused it): dead with why,
-- not queued for ever where no claim takes it.
UPDATE jobs AS j
SET state = 'dead', finished_at = now(), last_error = f.error,
    errors = j.errors || jsonb_build_object('attempt', j.attempts, 'at', now(),
                                            'error', f.error)
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS f(id, error)
WHERE j.id = f.id AND j.state = 'queued' AND j.concurrency_key IS NULL
RETURNING j.id;

-- name: unkey_unlimited
-- Queued jobs that carry a key although their task has no limits (any more: a limit removed,
-- or a job of a then-limited task retried after it was): the key dropped, so the plain claim,
-- which takes only jobs without one, claims them. Bounded, by jobs_limited_queued_idx; run
-- with adoption, once a minute.
UPDATE jobs AS j SET concurrency_key = NULL
FROM (SELECT id FROM jobs
      WHERE state = 'queued' AND task = ANY(%(tasks)s::text[]) AND concurrency_key IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.name = jobs.task
                                                   AND t.limits IS NOT NULL)
      LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) AS f
WHERE j.id = f.id
RETURNING j.id;

-- name: limit_stats
-- Per queue and limited task: runnable jobs, how many of them the limits let start now,
-- running jobs (the task's, and those in this queue), and the most that may run at once
-- (capacity; NULL: no bound, e.g. a per-key or rate limit without a task-wide one).
-- For stats, the API and the operator, which must not count work that cannot start.
-- Counts capped at %(cap)s like queue_stats.
SELECT q.queue, l.name AS task,
       rn.runnable,
       least(rn.runnable,
             -- a limit lowered below what runs: nothing may start (never a negative count);
             -- no concurrency_limit: no bound from it (greatest() would skip the NULL)
             greatest(0, coalesce((l.limits ->> 'concurrency_limit')::int - run.n,
                                  rn.runnable)),
             coalesce(per_key.startable, rn.runnable),
             CASE WHEN (l.limits ->> 'rate_limit') IS NOT NULL
                       AND NOT coalesce((l.limits ->> 'rate_per_key')::bool, false) THEN
                 greatest(0, (l.limits ->> 'rate_limit')::int - (
                     SELECT count(*) FROM jobs AS j
                     WHERE j.task = l.name AND j.concurrency_key IS NOT NULL
                       AND j.started_at > now()
                           - make_interval(secs => (l.limits ->> 'rate_period')::float8)))
             END) AS startable,
       run.n AS running,
       (SELECT count(*) FROM jobs AS j
        WHERE j.state = 'running' AND j.task = l.name AND j.concurrency_key IS NOT NULL
          AND j.queue = q.queue AND j.locked_until >= now()) AS running_here,
       (l.limits ->> 'concurrency_limit')::int AS capacity
FROM tasks AS l
CROSS JOIN LATERAL (SELECT DISTINCT queue FROM (
    SELECT l.queue UNION ALL SELECT unnest(%(queues)s::text[])) AS x) AS q
CROSS JOIN LATERAL (
    SELECT count(*) AS runnable FROM (
        SELECT 1 FROM jobs AS j
        WHERE j.state = 'queued' AND j.task = l.name AND j.concurrency_key IS NOT NULL
          AND j.queue = q.queue AND j.run_at <= now()
        LIMIT %(cap)s) AS x
) AS rn
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM jobs AS j
    WHERE j.state = 'running' AND j.task = l.name AND j.concurrency_key IS NOT NULL
      AND j.locked_until >= now()
) AS run
LEFT JOIN LATERAL (
    -- per key: its runnable jobs, less what its key_limit and its per-key rate hold back
    -- (each CASE NULL when that limit is not declared: least() skips it)
    SELECT sum(least(
               k.runnable,
               CASE WHEN (l.limits ->> 'key_limit') IS NOT NULL THEN
                   greatest(0, (l.limits ->> 'key_limit')::int - k.running) END,
               CASE WHEN k.rated THEN
                   greatest(0, (l.limits ->> 'rate_limit')::int - k.started) END))
               AS startable
    FROM (
        SELECT j.concurrency_key,
               count(*) AS runnable,
               (SELECT count(*) FROM jobs AS r
                WHERE r.state = 'running' AND r.task = l.name
                  AND r.concurrency_key = j.concurrency_key AND r.locked_until >= now())
                   AS running,
               bool_and(x.rated) AS rated,
               (SELECT count(*) FROM jobs AS r
                WHERE bool_and(x.rated) AND r.task = l.name
                  AND r.concurrency_key = j.concurrency_key
                  AND r.started_at > now() - make_interval(
                      secs => (l.limits ->> 'rate_period')::float8)) AS started
        FROM (SELECT concurrency_key FROM jobs
              WHERE state = 'queued' AND task = l.name AND concurrency_key IS NOT NULL
                AND queue = q.queue AND run_at <= now()
              LIMIT %(cap)s) AS j
        CROSS JOIN LATERAL (SELECT (l.limits ->> 'rate_limit') IS NOT NULL
                                   AND coalesce((l.limits ->> 'rate_per_key')::bool, false)
                                   AS rated) AS x
        GROUP BY j.concurrency_key
    ) AS k
    WHERE (l.limits ->> 'key_limit') IS NOT NULL
       OR ((l.limits ->> 'rate_limit') IS NOT NULL
           AND coalesce((l.limits ->> 'rate_per_key')::bool, false))
) AS per_key ON true
WHERE l.limits IS NOT NULL
  AND (%(queues)s::text[] = '{}' OR q.queue = ANY(%(queues)s::text[]))
  AND (rn.runnable > 0 OR run.n > 0);

-- name: next_firing
-- Seconds until the next firing of a schedule (not paused) on %(queues)s, negative when
-- overdue; NULL when none. The operator starts a worker ahead of it (scale from zero).
-- An app schedule no live worker has declared for two minutes (the scheduler's
-- STALE_SECONDS, as in due_schedules) counts only while its fire time is ahead or just
-- past: at zero replicas that is how its worker is woken, but one overdue for longer was
-- dropped from the code (no worker fires it) and would keep a pod up until it is retired.
SELECT extract(epoch FROM min(next_fire_at) - now())::float8 AS seconds
FROM schedules
WHERE queue = ANY(%(queues)s::text[]) AND NOT paused AND next_fire_at IS NOT NULL
  AND (source <> 'app' OR seen_at > now() - interval '120 seconds'
       OR next_fire_at > now() - interval '120 seconds');
