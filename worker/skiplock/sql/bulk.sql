-- Bulk actions over a jobs filter, in bounded batches with a cursor.
--
-- The filter is the job_filter fragment (queries.sql), the very one search_jobs lists with, so
-- a bulk action acts on exactly the jobs the list shows; these queries include it, never copy
-- it. A batch walks the list's own order, newest first, the cursor being the list's before_id
-- (id < cursor): ids never change, so the cursor holds whatever the jobs do meanwhile, and jobs
-- enqueued after the first batch have higher ids and are never reached (but for one enqueued
-- within about a second of it: a producer's ids are taken up to a second ahead, see
-- skiplock/job_ids.py). A bulk action thus
-- acts on what matched when it started, and ends even while producers keep adding matching
-- jobs (walking upwards, it would chase them, acting on jobs nobody confirmed).

-- name: count_matching
-- How many jobs match (the confirmation before a bulk action), capped at %(cap)s as
-- queue_stats is, so the count stays bounded on a huge table.
SELECT count(*) AS n
FROM (SELECT 1 FROM jobs AS j WHERE {{job_filter}} LIMIT %(cap)s) AS x;

-- name: bulk_pick
-- One batch: the next %(limit)s matching ids past the cursor, then a lock on each that is free
-- (SKIP LOCKED: never wait on, or deadlock with, a worker's claim or completion) and still
-- matches (the lock re-reads the row as it is now; it may have changed since the first look).
-- The action then runs on `ids` in the same transaction. Examined ids that were not locked are
-- skipped, and the cursor (last_id) moves past every examined one.
WITH examined AS MATERIALIZED (
    SELECT j.id FROM jobs AS j
    WHERE {{job_filter}}
    ORDER BY j.id DESC
    LIMIT %(limit)s
), locked AS (
    -- = ANY(array) keeps this on the primary key (an IN subquery may hash-join a table scan)
    SELECT j.id FROM jobs AS j
    WHERE j.id = ANY(ARRAY(SELECT id FROM examined)) AND {{job_filter}}
    FOR UPDATE SKIP LOCKED
)
-- array_agg reads every row of `locked`, so each lock is taken before the action runs
SELECT (SELECT count(*) FROM examined) AS examined,
       (SELECT min(id) FROM examined) AS last_id,
       coalesce((SELECT array_agg(id ORDER BY id DESC) FROM locked), '{}') AS ids;

-- name: bulk_retry
-- The picked jobs that are dead or cancelled, queued again exactly as retry_job does (one more
-- attempt if none is left, the cancel request cleared); the others are skipped.
UPDATE jobs
SET state = 'queued', run_at = now(), finished_at = NULL, unrunnable_since = NULL,
    cancel_requested_at = NULL, cancel_reason = NULL,
    max_attempts = greatest(max_attempts, attempts + 1)
WHERE id = ANY(%(ids)s::bigint[]) AND state IN ('dead', 'cancelled')
RETURNING id, queue;

-- name: bulk_delete
-- The picked jobs, deleted with their results (ON DELETE CASCADE); never a running job: its
-- worker holds it and would write its outcome to nothing (cancel it first). Those are skipped.
DELETE FROM jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'running'
RETURNING id;

-- name: copy_jobs
-- enqueue_many's fast path (both clients): no unique keys, no run_at, no deadline. The
-- producer's trace context rides along (NULL outside a span): enqueue_many inside a span
-- must not lose COPY for it; so does a limited task's concurrency key (NULL for the rest).
-- The rows are COPY text rendered by copy_data.py, block by block as they are prepared.
COPY jobs (queue, task, args, priority, max_attempts, trace_context, concurrency_key)
FROM STDIN;
