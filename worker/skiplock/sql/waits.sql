-- Waiting for jobs to finish (skiplock/waiting.py): a producer's Client.wait().

-- name: wait_outcomes
-- The jobs among %(ids)s that are finished (or gone: pruned or deleted, state NULL), with
-- what a waiter returns or raises. Called with the ids a completion NOTIFY named (one
-- notification per finished job, see 0007_wait_notify.sql), with new waiters' ids,
-- and for every waiter now and then (the fallback when a notification was missed).
SELECT i.id, j.state::text AS state, r.result, j.last_error, j.cancel_reason
FROM unnest(%(ids)s::bigint[]) AS i(id)
LEFT JOIN jobs AS j ON j.id = i.id
LEFT JOIN results AS r ON r.job_id = i.id
WHERE j.id IS NULL OR j.state IN ('succeeded', 'dead', 'cancelled');
