-- Live workers, what each one's version can run, and whether its outcomes are being written.
-- A worker upserts its row at start, refreshes last_seen with its registry heartbeat and
-- deletes it on a clean exit; it is live while last_seen is younger than its lease.
CREATE TABLE workers (
    id                     text        PRIMARY KEY,
    queues                 text[]      NOT NULL,
    -- {task name: params} as this worker's version of each handler declares them
    tasks                  jsonb       NOT NULL,
    concurrency            integer     NOT NULL,
    lease_seconds          float8      NOT NULL,
    started_at             timestamptz NOT NULL DEFAULT now(),
    last_seen              timestamptz NOT NULL DEFAULT now(),
    running                integer     NOT NULL DEFAULT 0,
    pending_outcomes       integer     NOT NULL DEFAULT 0,
    -- age of the oldest outcome not yet written (NULL when none waits)
    oldest_pending_seconds float8,
    healthy                boolean     NOT NULL DEFAULT true,
    -- why the worker is not healthy: a dead service, outcomes not being written
    problem                text,
    CONSTRAINT workers_tasks_object CHECK (jsonb_typeof(tasks) = 'object')
);

-- Set when a worker found that no live worker can run a job (unknown task, arguments that fit
-- no registered signature); the job goes dead once this is older than the worker's grace.
-- Cleared when a real run re-queues the job (retry, rescue, release).
ALTER TABLE jobs ADD COLUMN unrunnable_since timestamptz;

-- Jobs waiting for a worker that can run them (few rows: the claim path never touches it).
-- Built concurrently (skiplock/migrator.py): on a big table the workers keep writing meanwhile.
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_unrunnable_idx ON jobs (queue)
    WHERE state = 'queued' AND unrunnable_since IS NOT NULL
