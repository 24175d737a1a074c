-- Concurrency and rate limits (skiplock/limits.py, sql/limits.sql, docs/limits.md).

-- Each task's limits as the worker that registered it last declares them (NULL: none). The
-- claim reads them here, so every worker enforces the same numbers at any moment.
ALTER TABLE tasks ADD COLUMN limits jsonb;

-- A limited task's job carries its key, set at enqueue: '' when the task is limited as a
-- whole. NULL for every other job, so the indexes below hold limited jobs only and the plain
-- claim and the enqueue of unlimited jobs pay nothing for them.
ALTER TABLE jobs ADD COLUMN concurrency_key text;

-- The limited claim's scan: queued jobs of one task and key, in claim order; its distinct keys
-- by a skip scan (fairness across keys).
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_limited_queued_idx
    ON jobs (task, concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL

-- The slots taken: running limited jobs per task and key (few rows: at most the limits).
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_limited_running_idx
    ON jobs (task, concurrency_key, locked_until)
    WHERE state = 'running' AND concurrency_key IS NOT NULL

-- Rate limits: the starts of a limited task within its window.
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_limited_started_idx
    ON jobs (task, started_at)
    WHERE concurrency_key IS NOT NULL AND started_at IS NOT NULL

-- The plain claim's scan (queries.sql `claim`): runnable jobs without a key, so a backlog of
-- limited jobs queued ahead of unlimited work is not walked row by row at every claim (the
-- skip list is a filter, not an index condition). jobs_runnable_idx stays: workers of the
-- previous version still claim with the old predicate during a rolling deploy. A later
-- migration drops it, once no worker of a version before this one can be running.
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_runnable_unlimited_idx
    ON jobs (queue, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL
