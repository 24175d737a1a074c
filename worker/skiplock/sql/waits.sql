-- Waiting for jobs to finish (skiplock/waiting.py): a producer's Client.wait().

-- name: wait_outcomes
-- The jobs among %(ids)s that are finished (or gone: pruned or deleted, state NULL), with
-- what a waiter returns or raises. Called with the ids a completion NOTIFY named (one
-- notification per finished job, or one per worker completion statement since 0013), with
-- new waiters' ids that wake_on_finish did not flag (finished already, gone, or flagged),
-- and for every waiter now and then (the fallback when a notification was missed).
SELECT i.id, j.state::text AS state, r.result, j.last_error, j.cancel_reason
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN jobs AS j ON j.id = i.id
LEFT JOIN results AS r ON r.job_id = i.id
WHERE j.id IS NULL OR j.state IN ('succeeded', 'dead', 'cancelled');

-- name: wake_on_finish
-- Ask for the finish NOTIFY of the jobs among %(ids)s (new waiters' jobs) that are not
-- finished (0012; since 0013 every finish is notified and the trigger reads no flag). Returns
-- the ids flagged here; the others (finished, gone, or flagged already) are read at once with
-- wait_outcomes, in a later statement: its snapshot sees a finish that committed while this
-- one waited for the row. Rows locked in id order, as the worker's completions and lease
-- renewals lock them (no deadlock with either); NO KEY: a results row's foreign-key check
-- is not blocked. Already flagged rows are not written again (a reconnect re-asks for all).
WITH picked AS (
    SELECT id FROM jobs
    WHERE id = ANY(%(ids)s::bigint[])
      AND state NOT IN ('succeeded', 'dead', 'cancelled') AND NOT wake_on_finish
    ORDER BY id
    FOR NO KEY UPDATE
)
UPDATE jobs AS j
SET wake_on_finish = true
FROM picked
WHERE j.id = picked.id
RETURNING j.id;

-- name: wait_lock_timeout
-- For wake_on_finish only (local to its transaction: the hub's other statements, and a
-- pooled server connection, keep their own): it waits at most this long for a row another
-- transaction holds (a worker's statements hold one for milliseconds; a stray open
-- transaction could hold it until the statement timeout, and every other waiter of the hub
-- would wait too). A flag refused by it is retried at the next poll, which covers the job.
-- And its commit waits for no WAL flush: it holds the row until then, and a worker's claim
-- skips a row it holds (a flag lost in a crash is harmless: the hub's reconnect flags again).
SELECT set_config('lock_timeout', '1s', true), set_config('synchronous_commit', 'off', true);
