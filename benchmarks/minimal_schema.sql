-- The physical reference's schema (benchmarks.run, raw SQL): what a job queue needs at least,
-- a table with two partial indexes (the claim's order among queued rows, the lease among
-- running ones), no result row, no trigger, no constraint beyond the primary key.
CREATE TABLE mjobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text        NOT NULL DEFAULT 'default',
    task         text        NOT NULL,
    args         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state        text        NOT NULL DEFAULT 'queued',
    priority     smallint    NOT NULL DEFAULT 0,
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 5,
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    locked_by    text,
    started_at   timestamptz,
    finished_at  timestamptz
);
CREATE INDEX mjobs_runnable_idx ON mjobs (queue, priority, run_at, id) WHERE state = 'queued';
CREATE INDEX mjobs_running_idx ON mjobs (queue, locked_until) WHERE state = 'running';
