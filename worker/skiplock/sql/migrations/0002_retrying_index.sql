-- Retried jobs (second attempt onwards) that are not finished, for the high-retry count in
-- queue_stats: a small index, untouched by first attempts, so the claim path pays nothing.
-- Built concurrently (skiplock/migrator.py): on a big table the workers keep writing meanwhile.
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_retrying_idx ON jobs (queue, attempts)
    WHERE state IN ('queued', 'running') AND attempts > 1
