-- Retried jobs (second attempt onwards) that are not finished, for the high-retry count in
-- queue_stats: a small index, untouched by first attempts, so the claim path pays nothing.
CREATE INDEX jobs_retrying_idx ON jobs (queue, attempts)
    WHERE state IN ('queued', 'running') AND attempts > 1;
