-- Limits, second round (docs/limits.md): a ledger of starts for rate limits, and which
-- registered definition of a task's limits wins.

-- Rate limits count these rows, not jobs.started_at: a retry overwrote a job's started_at,
-- so a job failing fast started more often than its rate. The limited claim writes one row
-- per attempt it starts of a rate-limited task, in the claim statement itself, and prunes
-- rows older than the task's window in the same statement (a bounded number per claim), so
-- the table holds about one window of starts. The key is '' for a task limited as a whole.
CREATE TABLE limit_starts (
    task            text        NOT NULL,
    concurrency_key text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX limit_starts_task_idx ON limit_starts (task, started_at);
CREATE INDEX limit_starts_key_idx ON limit_starts (task, concurrency_key, started_at);
-- Seeded with the starts of the current window as the jobs show them (each job's latest
-- attempt), so the first window after the upgrade is not counted from zero. Workers of the
-- previous version write no rows here while the rollout lasts (docs/limits.md says so).
INSERT INTO limit_starts (task, concurrency_key, started_at)
SELECT j.task, j.concurrency_key, j.started_at
FROM jobs AS j JOIN tasks AS t ON t.name = j.task
WHERE j.concurrency_key IS NOT NULL AND j.started_at IS NOT NULL
  AND t.limits ? 'rate_period'
  AND j.started_at > now() - make_interval(secs => (t.limits ->> 'rate_period')::float8);

-- Every definition of a task's limits a worker has registered ('null' for "no limits"):
-- when it was first registered, and the workers that declared it. tasks.limits is the
-- newest-introduced definition that a live worker declares, so a restarting pod of an older
-- version no longer rewrites the limit for everybody; once no live worker declares the
-- newer one (a finished rollback), the newest of the rest wins again.
CREATE TABLE task_limit_definitions (
    task          text        NOT NULL,
    definition    jsonb       NOT NULL,
    introduced_at timestamptz NOT NULL DEFAULT now(),
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- ids of the workers (workers.id) that registered it; dead ones are dropped as others
    -- register
    declared_by   text[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (task, definition)
);
