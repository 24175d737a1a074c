-- Job control: cancel requests, snoozes, paused queues.

-- name: cancel_jobs
-- Cancel jobs by id: a queued job at once; a running one gets a cancel request, stored here
-- and sent to its worker (NOTIFY %(channel)s 'cancel:<id>'; the lease heartbeat's answer
-- carries it too). Whatever that worker writes afterwards, the job ends cancelled. Finished
-- jobs, and running jobs already asked, are left as they are. Returns each job acted on with
-- its state now ('cancelled', or 'running' for a request).
WITH picked AS (
    SELECT id FROM jobs
    WHERE id = ANY(%(ids)s::bigint[])
      AND (state = 'queued' OR (state = 'running' AND cancel_requested_at IS NULL))
    ORDER BY id
    FOR UPDATE
), done AS (
    UPDATE jobs AS j
    SET state = CASE WHEN j.state = 'queued' THEN 'cancelled'::job_state ELSE j.state END,
        finished_at = CASE WHEN j.state = 'queued' THEN now() ELSE j.finished_at END,
        errors = CASE WHEN j.state = 'queued'
                      THEN j.errors || jsonb_build_object(
                          'attempt', j.attempts, 'at', now(),
                          'error', format('cancelled while queued by %%s', %(reason)s::text))
                      ELSE j.errors END,
        cancel_requested_at = now(),
        cancel_reason = %(reason)s,
        unrunnable_since = NULL
    FROM picked
    WHERE j.id = picked.id
    RETURNING j.id, j.state::text AS state
)
SELECT d.id, d.state
FROM done AS d
-- one notification per running job (queued ones need none); pg_notify returns void
LEFT JOIN LATERAL (SELECT pg_notify(%(channel)s, 'cancel:' || d.id) AS sent
                   WHERE d.state = 'running') AS n ON true
ORDER BY d.id;

-- name: cancel_requests
-- The cancel requests among the runs a worker holds: its poll while LISTEN is unavailable.
SELECT id, cancel_reason
FROM jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state = 'running' AND locked_by = %(worker_id)s
  AND cancel_requested_at IS NOT NULL;

-- name: snooze
-- Fenced: back to queued at database time + %(delays)s, the attempt not counted and the snooze
-- counted. A job whose cancel was requested ends cancelled instead.
UPDATE jobs AS j
SET state = CASE WHEN j.cancel_requested_at IS NULL THEN 'queued'::job_state
                 ELSE 'cancelled'::job_state END,
    attempts = CASE WHEN j.cancel_requested_at IS NULL THEN j.attempts - 1 ELSE j.attempts END,
    snoozes = CASE WHEN j.cancel_requested_at IS NULL THEN j.snoozes + 1 ELSE j.snoozes END,
    run_at = CASE WHEN j.cancel_requested_at IS NULL
                  THEN now() + make_interval(secs => f.delay) ELSE j.run_at END,
    finished_at = CASE WHEN j.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    errors = CASE WHEN j.cancel_requested_at IS NULL THEN j.errors
                  ELSE j.errors || jsonb_build_object(
                      'attempt', j.attempts, 'worker', j.locked_by, 'at', now(),
                      'error', format('cancelled as requested by %%s (the handler snoozed)',
                                      j.cancel_reason)) END,
    locked_by = NULL, locked_until = NULL, unrunnable_since = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[], %(delays)s::float8[])
    AS f(id, attempt, delay)
WHERE j.id = f.id AND j.state::text = 'running' AND j.locked_by = %(worker_id)s
  AND j.attempts = f.attempt
RETURNING j.id, j.state::text;

-- name: pause_queue
-- Stop claims from a queue (running jobs finish); NOTIFY tells workers at once, and the claim
-- checks paused_queues itself. Returns the row (already paused: the first pause is kept).
WITH paused AS (
    INSERT INTO paused_queues (queue, paused_by) VALUES (%(queue)s, %(by)s)
    ON CONFLICT (queue) DO NOTHING
    RETURNING queue, paused_at, paused_by
)
SELECT p.queue, p.paused_at, p.paused_by, true AS newly_paused
FROM paused AS p
LEFT JOIN LATERAL (SELECT pg_notify(%(channel)s, 'pause:' || p.queue)) AS n ON true
UNION ALL
SELECT q.queue, q.paused_at, q.paused_by, false
FROM paused_queues AS q
WHERE q.queue = %(queue)s AND NOT EXISTS (SELECT 1 FROM paused);

-- name: resume_queue
-- Claims from the queue again; idle workers are woken on the jobs channel as for an insert.
WITH resumed AS (
    DELETE FROM paused_queues WHERE queue = %(queue)s RETURNING queue
)
SELECT r.queue
FROM resumed AS r
LEFT JOIN LATERAL (SELECT pg_notify(%(jobs_channel)s, r.queue)) AS n ON true;

-- name: paused_queues
SELECT queue, paused_at, paused_by FROM paused_queues ORDER BY queue;
