-- Concurrency and rate limits (skiplock/limits.py, docs/limits.md).
--
-- A limited task's jobs are never claimed by the plain claim (queries.sql `claim`: the worker
-- passes them in skip_tasks), only by claim_limited, in one of two passes:
-- * unlocked (claim_limited_unlocked), one statement: only for a task-wide limit whose free slots
--   at our snapshot are at least our batch plus twice the concurrency of every other worker
--   registered. Claims we cannot see (committed after our snapshot, or not yet) are other
--   workers', and a worker never holds more than twice its concurrency running (its slots
--   plus the outcomes waiting to be written, see worker/state.py): so they cannot take the
--   room we count on, and far from the cap the claims of a limited task run side by side.
-- * locked, when the unlocked pass claimed less than the batch (near the cap, per-key limits,
--   rates): lock_limited then claim_limited, sent together in one pipeline (one round trip,
--   one implicit transaction until its Sync; db.py). Two statements, not one: a statement's
--   snapshot is taken when it starts, before any lock it takes, so a claim that locked inside
--   its own statement would not see the claim its lock waited out. claim_limited, a statement
--   of its own, sees every claim committed by whoever held the lock before us; it claims for
--   the tasks lock_limited locked only (passed on in a transaction-local setting, since the
--   pipeline cannot wait for the lock's answer).
-- A slot is a running job with a live lease: a crashed worker's slots free themselves when
-- its leases expire, with nothing to release and nothing to leak. A rate counts the rows of
-- limit_starts (one per attempt started, written by the claim itself; 0010_limit_starts.sql).

-- name: generic_plans
-- Sent first in a limited claim's pipeline (db.py claim_limited) and a stats call's (db.py
-- stats_rows), for that pipeline's statements only (local to its implicit transaction). The
-- limited claims are long statements, the locked one a recursive key walk: planning took
-- 1.0-1.2 ms, three to four times what running the unlocked pass takes, and the plan
-- cache's own choice kept planning them afresh at every claim. Their
-- best plan does not depend on their parameters (task and queue names, a batch size, ids
-- to skip), so the generic plan made once per connection serves every claim
-- (docs/limits.md "Cost"). The plain claim keeps the cache's choice: its generic plan ran at
-- half the speed of its custom ones. The stats call's queue_stats and limit_stats: the same
-- story (custom plans at every call, ~2.5 ms of planning for queue_stats alone at 1M rows),
-- and their plans hardly depend on their parameters either (each count an index probe by
-- queue or task; the branches on the queue list and high_attempts are one-time filters).
-- A generic plan is kept until the tables' statistics change (ANALYZE, autovacuum's too,
-- invalidates it), so a plan made on a small table is made again as it grows.
SELECT set_config('plan_cache_mode', 'force_generic_plan', true);

-- name: lock_limited
-- Serialises the limited claims of a task (not the plain claim, not other tasks). Never waits:
-- a task whose lock another claim holds is left out, so a holder that stalls (a slow link, a
-- paused VM) costs the others that task's claims for the moment, not every claim of every
-- worker (the plain claim runs after this one). The holder is claiming that task's free slots
-- anyway; the rest wait for the next claim. The tasks locked go to claim_limited through
-- skiplock.limit_locks, local to this transaction (and returned, for a caller that reads).
SELECT set_config('skiplock.limit_locks', coalesce(array_agg(t ORDER BY t), '{}')::text, true)
FROM (SELECT DISTINCT t FROM unnest(%(tasks)s::text[]) AS x(t)) AS s
WHERE pg_try_advisory_xact_lock(hashtextextended(current_schema() || '/limit/' || t, 0));

-- name: claim_limited
-- Up to %(limit)s queued jobs of the limited %(tasks)s within their free slots (locked: of
-- those lock_limited locked in this transaction).
-- Per task: free = least(concurrency_limit - running, rate_limit - starts in the window).
-- Per key: free = least(task free, key_limit - running of the key, per-key rate room).
-- Fairness, at a cost bounded by the batch: the keys with runnable jobs are walked by a skip
-- scan over jobs_limited_queued_idx, at most max(16, %(limit)s) keys per task per claim,
-- starting after the key the previous claim stopped at
-- (%(key_cursor)s, {task: key}, kept by the caller and returned in the last row) and wrapping
-- around, so every key comes round however many there are. Of those, the keys with the
-- fewest running jobs go first (ties in random order), each
-- gives at most its share of the batch, and the jobs are picked by how full their key would
-- be (water-filling), then priority and age. So a key with 10,000 jobs cannot starve one
-- with 10, and 1,000 keys cost a claim of 200 what 200 keys do.
WITH RECURSIVE lim AS MATERIALIZED (
    SELECT t.name AS task,
           (t.limits ->> 'concurrency_limit')::int AS task_cap,
           (t.limits ->> 'key_limit')::int AS key_cap,
           (t.limits ->> 'rate_limit')::int AS rate_n,
           (t.limits ->> 'rate_period')::float8 AS rate_period,
           coalesce((t.limits ->> 'rate_per_key')::bool, false) AS rate_per_key
    FROM tasks AS t
    WHERE t.name = ANY(%(tasks)s::text[]) AND t.limits IS NOT NULL
      AND (NOT %(locked)s::bool OR t.name = ANY(coalesce(
          nullif(current_setting('skiplock.limit_locks', true), '')::text[], '{}')))
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
            l.rate_n - (SELECT count(*) FROM limit_starts AS s
                        WHERE s.task = l.task
                          AND s.started_at > now() - make_interval(secs => l.rate_period))
        END
    ) AS left_
    FROM lim AS l
), room AS MATERIALIZED (
    SELECT f.task, f.task_cap, f.key_cap, f.rate_n, f.rate_period, f.rate_per_key,
           %(key_cursor)s::jsonb ->> f.task AS start,
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
    -- and a share of the batch (n_keys) and starve the keys that can run.
    -- The first row is the cursor itself (n = 0, no key walked; NULL: start at the first
    -- key). Each step takes the next key, wrapping around once to the first key (phase 1)
    -- and stopping where the walk began, or after the batch's number of keys (at least 16):
    -- the claim's cost is bounded by its batch however many keys there are, and the next
    -- claim goes on from where this one stopped. (The keys' running counts are taken after
    -- the walk, in key_room: inside it they made the statement's planning three times as
    -- long.)
    SELECT r.task, r.start, 0 AS phase, r.start AS k, 0 AS n
    FROM room AS r WHERE r.free > 0
    UNION ALL
    SELECT s.task, s.start, w.phase, w.k, s.n + 1
    FROM keys AS s
    CROSS JOIN LATERAL (
        SELECT (SELECT j.concurrency_key FROM jobs AS j
                WHERE j.state = 'queued' AND j.task = s.task AND j.concurrency_key > s.k
                  AND j.run_at <= now() AND j.queue = ANY((SELECT queues FROM open)::text[])
                  AND j.id <> ALL(%(skip_ids)s::bigint[])
                ORDER BY j.concurrency_key LIMIT 1) AS k
        -- OFFSET 0 keeps this a subquery of its own, evaluated once per step: pulled up,
        -- each mention of g.k below ran the index probe again (six per key walked)
        OFFSET 0
    ) AS g
    CROSS JOIN LATERAL (
        SELECT CASE WHEN g.k IS NOT NULL THEN g.k
                    -- past the last key (or no cursor): the first key
                    WHEN s.phase = 0 THEN (
                        SELECT j.concurrency_key FROM jobs AS j
                        WHERE j.state = 'queued' AND j.task = s.task
                          AND j.concurrency_key IS NOT NULL AND j.run_at <= now()
                          AND j.queue = ANY((SELECT queues FROM open)::text[])
                          AND j.id <> ALL(%(skip_ids)s::bigint[])
                        ORDER BY j.concurrency_key LIMIT 1) END AS k,
               CASE WHEN g.k IS NOT NULL THEN s.phase ELSE 1 END AS phase
    ) AS w
    WHERE w.k IS NOT NULL AND s.n < greatest(16, %(limit)s::int)
      -- phase 1 stops where phase 0 began
      AND NOT (w.phase = 1 AND s.start IS NOT NULL AND w.k > s.start)
), key_room AS MATERIALIZED (
    SELECT s.task, s.k, x.running, r.free AS task_free,
           least(r.free, r.key_cap - x.running,
                 CASE WHEN r.rate_n IS NOT NULL AND r.rate_per_key THEN
                     r.rate_n - (SELECT count(*) FROM limit_starts AS ls
                                 WHERE ls.task = s.task AND ls.concurrency_key = s.k
                                   AND ls.started_at
                                       > now() - make_interval(secs => r.rate_period))
                 END) AS free
    FROM keys AS s
    JOIN room AS r ON r.task = s.task
    CROSS JOIN LATERAL (SELECT count(*) AS running FROM jobs AS j
                        WHERE j.state = 'running' AND j.task = s.task
                          AND j.concurrency_key = s.k AND j.locked_until >= now()) AS x
    WHERE s.n > 0
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
    {{claim_set}}
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))  -- as in queries.sql claim
    RETURNING {{claimed_columns}}, j.concurrency_key
), started AS (
    -- the starts ledger: every attempt started of a rate-limited task, a retry too (a job's
    -- started_at is overwritten by its next attempt, so counting jobs let a job failing fast
    -- start more often than its rate)
    INSERT INTO limit_starts (task, concurrency_key)
    SELECT c.task, c.concurrency_key FROM claimed AS c JOIN lim AS l ON l.task = c.task
    WHERE l.rate_n IS NOT NULL
), pruned AS (
    -- and its rows older than their window, a bounded number per claim (twice what a claim
    -- adds, so the table stays about one window of starts), by the locked pass only (the only
    -- one that claims for a rate); rows another claim is pruning are left to it
    DELETE FROM limit_starts AS s
    WHERE %(locked)s::bool AND s.ctid = ANY(ARRAY(
        SELECT x.ctid FROM lim AS l JOIN limit_starts AS x ON x.task = l.task
        WHERE l.rate_n IS NOT NULL
          AND x.started_at <= now() - make_interval(secs => l.rate_period)
        LIMIT 2 * %(limit)s::int
        FOR UPDATE OF x SKIP LOCKED))
)
SELECT c.id, c.queue, c.task, c.args, c.attempts, c.max_attempts, c.unrunnable_for,
       c.timeout_seconds, c.snoozes, c.trace_context, NULL::text[] AS need_lock,
       NULL::jsonb AS key_cursor
FROM claimed AS c
UNION ALL
-- One last row, no job: whether the locked pass could claim anything this one left. Only for
-- a task the unlocked pass did not serve that has room (or per-key room to look for) and a
-- runnable job: so an idle limited task, or one at its cap, costs the worker one statement
-- per claim and never a lock. The tasks, so the locked pass locks those only. And where each
-- task's walk over its keys stopped: the next claim starts after it.
SELECT NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
       NULL::float8, NULL::float8, NULL::int, NULL::jsonb,
       CASE WHEN %(locked)s::bool THEN '{}'::text[] ELSE ARRAY(
           SELECT f.task FROM free AS f JOIN room AS r ON r.task = f.task
           WHERE r.free = 0 AND (f.left_ IS NULL OR f.left_ > 0)
             -- a runnable job: the first key in index order, as in claim_limited_unlocked
             AND (SELECT j.concurrency_key FROM jobs AS j
                  WHERE j.state = 'queued' AND j.task = f.task
                    AND j.concurrency_key IS NOT NULL AND j.run_at <= now()
                    AND j.queue = ANY((SELECT queues FROM open)::text[])
                  ORDER BY j.concurrency_key LIMIT 1) IS NOT NULL
           ORDER BY f.task) END,
       (SELECT jsonb_object_agg(w.task, w.k) FROM (
            SELECT DISTINCT ON (s.task) s.task, s.k FROM keys AS s WHERE s.n > 0
            ORDER BY s.task, s.n DESC) AS w)

-- name: claim_limited_unlocked
-- The first, unlocked pass (see the top of this file), as a statement of its own: it claims
-- only for tasks whose limits are a concurrency_limit alone (no key limit, no rate: their
-- jobs carry the key ''), when their free slots are at least %(limit)s plus the margin, by
-- the task's queued jobs in claim order — no key walk, no water-filling, no starts ledger,
-- so far from the cap a limited task's claim costs about what the plain claim does. The
-- last row names the tasks the locked pass (claim_limited) may find more of.
WITH lim AS MATERIALIZED (
    SELECT t.name AS task,
           (t.limits ->> 'concurrency_limit')::int AS task_cap,
           (t.limits ->> 'key_limit') IS NULL AND (t.limits ->> 'rate_limit') IS NULL
               AS task_wide,
           (t.limits ->> 'rate_limit')::int AS rate_n,
           (t.limits ->> 'rate_period')::float8 AS rate_period,
           coalesce((t.limits ->> 'rate_per_key')::bool, false) AS rate_per_key
    FROM tasks AS t
    WHERE t.name = ANY(%(tasks)s::text[]) AND t.limits IS NOT NULL
), open AS MATERIALIZED (
    SELECT coalesce(array_agg(q.name), '{}') AS queues FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM paused_queues AS p WHERE p.queue = q.name)
), margin AS MATERIALIZED (
    -- the most running jobs other workers could add that our snapshot does not show
    SELECT coalesce(2 * sum(w.concurrency), 0) AS n FROM workers AS w
    WHERE w.id <> %(worker_id)s
), free AS MATERIALIZED (
    SELECT l.task, l.task_wide, least(
        l.task_cap - (SELECT count(*) FROM jobs AS j
                      WHERE j.state = 'running' AND j.task = l.task
                        AND j.concurrency_key IS NOT NULL AND j.locked_until >= now()),
        CASE WHEN l.rate_n IS NOT NULL AND NOT l.rate_per_key THEN
            l.rate_n - (SELECT count(*) FROM limit_starts AS s
                        WHERE s.task = l.task
                          AND s.started_at > now() - make_interval(secs => l.rate_period))
        END
    ) AS left_
    FROM lim AS l
), room AS MATERIALIZED (
    SELECT f.task, f.left_,
           CASE WHEN f.task_wide AND f.left_ >= %(limit)s::int + (SELECT n FROM margin)
                THEN %(limit)s::int ELSE 0 END AS free,
           count(*) FILTER (WHERE f.task_wide
                                  AND f.left_ >= %(limit)s::int + (SELECT n FROM margin))
               OVER () AS n_tasks
    FROM free AS f
), picked AS (
    SELECT c.id FROM room AS r
    CROSS JOIN LATERAL (
        SELECT j.id FROM jobs AS j
        WHERE j.state = 'queued' AND j.task = r.task AND j.concurrency_key = ''
          AND j.run_at <= now() AND j.queue = ANY((SELECT queues FROM open)::text[])
          AND j.id <> ALL(%(skip_ids)s::bigint[])
        ORDER BY j.priority, j.run_at, j.id
        -- several tasks served: each its share of the batch
        LIMIT ceil(%(limit)s::float8 / r.n_tasks)::int
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE r.free > 0
    LIMIT %(limit)s
), claimed AS (
    UPDATE jobs AS j
    {{claim_set}}
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))  -- as in queries.sql claim
    RETURNING {{claimed_columns}}
)
SELECT c.*, NULL::text[] AS need_lock, NULL::jsonb AS key_cursor FROM claimed AS c
UNION ALL
-- One last row, no job: the tasks the locked pass could claim more of. A task not served
-- here that has room and a runnable job; and one served here with runnable jobs under a key
-- other than '' (queued when the task had per-key limits): those are the locked pass's, whose
-- key walk finds them. An idle limited task, or one at its cap, costs one statement and no
-- lock. Whether a runnable job exists is the first key in jobs_limited_queued_idx's order,
-- not EXISTS: the planner drops an EXISTS's ORDER BY and LIMIT and, with most of the table
-- matching in its statistics, chose a seq scan that read every finished job ahead of the
-- first queued one (29 ms a claim behind 300,000 finished jobs; tests/integration
-- test_limits_ledger.py).
SELECT NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::int, NULL::int,
       NULL::float8, NULL::float8, NULL::int, NULL::jsonb,
       ARRAY(
           SELECT r.task FROM room AS r
           WHERE (r.free = 0 AND (r.left_ IS NULL OR r.left_ > 0)
                  AND (SELECT j.concurrency_key FROM jobs AS j
                       WHERE j.state = 'queued' AND j.task = r.task
                         AND j.concurrency_key IS NOT NULL AND j.run_at <= now()
                         AND j.queue = ANY((SELECT queues FROM open)::text[])
                       ORDER BY j.concurrency_key LIMIT 1) IS NOT NULL)
              OR (r.free > 0
                  AND (SELECT j.concurrency_key FROM jobs AS j
                       WHERE j.state = 'queued' AND j.task = r.task
                         AND j.concurrency_key > '' AND j.run_at <= now()
                         AND j.queue = ANY((SELECT queues FROM open)::text[])
                       ORDER BY j.concurrency_key LIMIT 1) IS NOT NULL)
           ORDER BY r.task),
       NULL::jsonb

-- name: register_limits
-- A worker's declared limits into the catalogue (NULL: the task has none). Which definition
-- wins (docs/limits.md, rolling deploys): the newest-introduced one (first registered last)
-- that a live worker declares. So a restarting pod of an older version re-registers its
-- definition without taking it back for everybody; once no live worker declares the newer
-- one (a rollback done), the newest of those still declared wins. %(worker_id)s: the
-- registering worker (NULL: unknown; its definition then competes for this registration
-- only). 'null' stands for "no limits" in task_limit_definitions.
WITH f AS MATERIALIZED (
    -- `seen`: the task's limits in this statement's snapshot, for the compare-and-set below
    SELECT f.name, coalesce(f.limits, 'null'::jsonb) AS definition, t.limits AS seen
    FROM unnest(%(names)s::text[], %(limits)s::jsonb[]) AS f(name, limits)
    JOIN tasks AS t ON t.name = f.name
), live AS MATERIALIZED (
    SELECT coalesce(array_agg(w.id), '{}') AS ids FROM workers AS w
    WHERE w.last_seen >= now() - make_interval(secs => w.lease_seconds)
), declared AS (
    INSERT INTO task_limit_definitions AS d (task, definition, declared_by)
    SELECT f.name, f.definition,
           CASE WHEN %(worker_id)s::text IS NULL THEN '{}'::text[]
                ELSE ARRAY[%(worker_id)s::text] END
    FROM f
    ON CONFLICT (task, definition) DO UPDATE
    SET registered_at = now(),
        -- the declarers still live, and this one (a bounded list: live workers only)
        declared_by = ARRAY(SELECT DISTINCT x FROM unnest(d.declared_by || excluded.declared_by)
                                                   AS u(x)
                            WHERE x = ANY((SELECT ids FROM live)::text[])
                               OR x = ANY(excluded.declared_by))
    RETURNING d.task, d.definition, d.introduced_at
), winner AS (
    -- this statement's snapshot does not show `declared`'s rows: the definition just declared
    -- competes from there, the others (declared by a live worker) from the table
    SELECT DISTINCT ON (c.task) c.task, c.definition FROM (
        SELECT dc.task, dc.definition, dc.introduced_at FROM declared AS dc
        UNION ALL
        SELECT d.task, d.definition, d.introduced_at
        FROM task_limit_definitions AS d JOIN f ON f.name = d.task
        WHERE d.definition <> f.definition
          AND d.declared_by && (SELECT ids FROM live)::text[]
    ) AS c
    ORDER BY c.task, c.introduced_at DESC, c.definition::text
)
-- Compare-and-set: a registration or settle that committed since this snapshot (its row is
-- re-checked under READ COMMITTED) may have written a newer winner; this statement then
-- leaves the row alone instead of putting an older definition back (the next heartbeat's
-- settle_limits decides again from what is committed).
UPDATE tasks AS t SET limits = nullif(w.definition, 'null'::jsonb)
FROM winner AS w JOIN f ON f.name = w.task
WHERE t.name = w.task AND t.limits IS DISTINCT FROM nullif(w.definition, 'null'::jsonb)
  AND t.limits IS NOT DISTINCT FROM f.seen
RETURNING t.name;

-- name: settle_limits
-- The registry heartbeat's read of every task with limits (limited_tasks), after putting
-- right which definition wins: the newest-introduced one a live worker declares. A
-- registration only settles its own tasks at its own moment; this catches up when the
-- workers that declared the winner have gone since (the last pod of a rollback started
-- before the last pod of the newer version stopped). Writes only when a task's winner
-- changed; a task no live worker declares a definition of keeps what it has.
WITH live AS MATERIALIZED (
    SELECT coalesce(array_agg(w.id), '{}') AS ids FROM workers AS w
    WHERE w.last_seen >= now() - make_interval(secs => w.lease_seconds)
), winner AS MATERIALIZED (
    -- `seen`: the task's limits in this snapshot, for the compare-and-set (register_limits)
    SELECT DISTINCT ON (d.task) d.task, d.definition, t.limits AS seen
    FROM task_limit_definitions AS d JOIN tasks AS t ON t.name = d.task
    WHERE d.declared_by && (SELECT ids FROM live)::text[]
    ORDER BY d.task, d.introduced_at DESC, d.definition::text
), settled AS (
    UPDATE tasks AS t SET limits = nullif(w.definition, 'null'::jsonb)
    FROM winner AS w
    WHERE t.name = w.task AND t.limits IS DISTINCT FROM nullif(w.definition, 'null'::jsonb)
      AND t.limits IS NOT DISTINCT FROM w.seen
    RETURNING t.name, t.limits
)
-- the snapshot shows the rows before `settled` changed them: those from `settled` instead
SELECT name, limits FROM tasks
WHERE limits IS NOT NULL AND name NOT IN (SELECT s.name FROM settled AS s)
UNION ALL
SELECT name, limits FROM settled WHERE limits IS NOT NULL
ORDER BY name;

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
                     -- the starts ledger, as the claim counts them
                     SELECT count(*) FROM limit_starts AS s
                     WHERE s.task = l.name
                       AND s.started_at > now()
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
               (SELECT count(*) FROM limit_starts AS r
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
