-- Periodic jobs (docs/schedules.md): one schedule list, declared in code (@app.periodic,
-- source 'app') or as a JobSchedule custom resource (source 'crd:<namespace>/<name>'), fired
-- by every worker's scheduler service with no leader. Exactly once per firing: a worker
-- advances next_fire_at only from the value it read (the winner of that UPDATE enqueues) and
-- records the firing under its (schedule, fire time) key with ON CONFLICT DO NOTHING, in the
-- same statement. All times are the database's (now()), never a worker's clock.
CREATE TABLE schedules (
    name           text        PRIMARY KEY,
    task           text        NOT NULL,
    queue          text        NOT NULL,
    -- a cron expression (5 fields, evaluated in `timezone`) or, instead, a fixed interval
    -- in seconds aligned to the Unix epoch
    cron           text,
    every_seconds  integer,
    timezone       text        NOT NULL DEFAULT 'UTC',
    args           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- what a firing found more than grace_seconds late gets: skip it, run once for all of
    -- them, or backfill the latest backfill_limit of them
    missed         text        NOT NULL DEFAULT 'once',
    backfill_limit integer     NOT NULL DEFAULT 0,
    grace_seconds  float8      NOT NULL DEFAULT 60,
    -- each job's run_at is its fire time plus up to this many seconds, chosen at random
    jitter_seconds float8      NOT NULL DEFAULT 0,
    priority       smallint    NOT NULL DEFAULT 0,
    paused         boolean     NOT NULL DEFAULT false,
    source         text        NOT NULL,
    -- the next fire time not yet handled (NULL until a scheduler has computed one)
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    -- firings the missed policy dropped, in all
    missed_total   bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- an app schedule: when a worker whose code declares it last said so (a schedule no
    -- live worker declares any more is retired; see docs/schedules.md)
    seen_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_name_valid CHECK (length(name) BETWEEN 1 AND 256),
    CONSTRAINT schedules_task_valid CHECK (length(task) BETWEEN 1 AND 256),
    CONSTRAINT schedules_queue_valid CHECK (length(queue) BETWEEN 1 AND 128),
    CONSTRAINT schedules_one_cadence CHECK ((cron IS NULL) <> (every_seconds IS NULL)),
    CONSTRAINT schedules_cron_length CHECK (cron IS NULL OR length(cron) <= 256),
    CONSTRAINT schedules_every_positive
        CHECK (every_seconds IS NULL OR every_seconds BETWEEN 1 AND 31536000),
    CONSTRAINT schedules_timezone_length CHECK (length(timezone) BETWEEN 1 AND 64),
    CONSTRAINT schedules_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT schedules_args_size CHECK (pg_column_size(args) <= 65536),
    CONSTRAINT schedules_missed_valid CHECK (missed IN ('skip', 'once', 'backfill')),
    CONSTRAINT schedules_backfill_range CHECK (backfill_limit BETWEEN 0 AND 1000),
    CONSTRAINT schedules_grace_range CHECK (grace_seconds >= 0 AND grace_seconds <= 31536000),
    CONSTRAINT schedules_jitter_range CHECK (jitter_seconds >= 0 AND jitter_seconds <= 86400),
    CONSTRAINT schedules_source_valid CHECK (source = 'app' OR source LIKE 'crd:%')
);
-- The schedulers' scan: what is due.
CREATE INDEX schedules_next_fire_idx ON schedules (next_fire_at);

-- One row per firing enqueued: the (schedule, fire time) key that makes a firing happen once,
-- however many schedulers race for it. Rows older than a week are pruned by the schedulers
-- (next_fire_at has long moved past them).
CREATE TABLE schedule_firings (
    schedule  text        NOT NULL,
    fire_at   timestamptz NOT NULL,
    job_id    bigint      NOT NULL,
    -- the database time the firing was enqueued, and whether the missed policy let it run
    -- late (more than grace_seconds after fire_at)
    fired_at  timestamptz NOT NULL DEFAULT now(),
    late      boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (schedule, fire_at)
);
CREATE INDEX schedule_firings_fired_idx ON schedule_firings (fired_at);
