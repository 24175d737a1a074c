-- The whole Skiplock schema as it stands (tests prove the migrations produce exactly this).

CREATE TYPE job_state AS ENUM ('queued', 'running', 'succeeded', 'dead', 'cancelled');

CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue        text        NOT NULL DEFAULT 'default',
    task         text        NOT NULL,
    args         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state        job_state   NOT NULL DEFAULT 'queued',
    priority     smallint    NOT NULL DEFAULT 0,
    attempts     integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 5,
    run_at       timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    locked_by    text,
    last_error   text,
    -- one entry per failed attempt: {attempt, error, worker, at}
    errors       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    unique_key   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    -- set when no live worker could run the job (see 0003_worker_registry.sql)
    unrunnable_since timestamptz,
    -- job control (see 0004_job_control.sql)
    cancel_requested_at timestamptz,
    cancel_reason text,
    timeout_seconds float8,
    snoozes      integer     NOT NULL DEFAULT 0,
    -- the producer's trace context (see 0007_wait_notify.sql)
    trace_context jsonb,
    CONSTRAINT jobs_queue_valid CHECK (length(queue) BETWEEN 1 AND 128),
    CONSTRAINT jobs_task_valid CHECK (length(task) BETWEEN 1 AND 256),
    CONSTRAINT jobs_args_object CHECK (jsonb_typeof(args) = 'object'),
    CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
    -- "running" always implies a lease, so a crashed worker's job always comes back.
    CONSTRAINT jobs_running_has_lease CHECK (
        state <> 'running' OR (locked_until IS NOT NULL AND locked_by IS NOT NULL)
    ),
    CONSTRAINT jobs_terminal_has_finish CHECK (
        state NOT IN ('succeeded', 'dead', 'cancelled') OR finished_at IS NOT NULL
    ),
    CONSTRAINT jobs_timeout_positive
        CHECK (timeout_seconds IS NULL OR (timeout_seconds > 0 AND timeout_seconds <= 31536000)),
    CONSTRAINT jobs_cancel_reason_length
        CHECK (cancel_reason IS NULL OR length(cancel_reason) <= 1000),
    -- a ceiling for every producer, above what Client and the API let through (see
    -- 0006_bounded_cost.sql)
    CONSTRAINT jobs_args_size CHECK (pg_column_size(args) <= 67108864)
);

-- The claim scan: only queued rows, in claim order.
CREATE INDEX jobs_runnable_idx ON jobs (queue, priority, run_at, id) WHERE state = 'queued';
-- Lease checks (rescue, in-flight and stuck counts) touch only running rows.
CREATE INDEX jobs_running_idx ON jobs (queue, locked_until) WHERE state = 'running';
-- Dead-job listing and rate.
CREATE INDEX jobs_dead_idx ON jobs (queue, finished_at) WHERE state = 'dead';
-- Unfinished retries (second attempt onwards), for the high-retry count.
CREATE INDEX jobs_retrying_idx ON jobs (queue, attempts)
    WHERE state IN ('queued', 'running') AND attempts > 1;
-- Pruning finished jobs by age.
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- Idempotent enqueue: one job per unique key for as long as the job row exists.
CREATE UNIQUE INDEX jobs_unique_key_idx ON jobs (unique_key) WHERE unique_key IS NOT NULL;

-- The error text filter (LIKE '%text%') and the created_at range filters (0006_bounded_cost.sql).
-- Where pg_trgm is not installed (an embedded or minimal PostgreSQL without contrib) or may
-- not be created, the index is left out with a NOTICE: the filter still works, by a scan.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm') THEN
        IF NOT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_trgm') THEN
            RAISE NOTICE 'pg_trgm is not available: the error text filter will scan';
            RETURN;
        END IF;
        BEGIN
            CREATE EXTENSION pg_trgm SCHEMA public;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE NOTICE 'pg_trgm may not be created here: the error text filter will scan';
            RETURN;
        END;
    END IF;
    EXECUTE format(
        'CREATE INDEX jobs_last_error_trgm_idx ON jobs USING gin (last_error %I.gin_trgm_ops)'
        ' WHERE last_error IS NOT NULL',
        (SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace
         WHERE e.extname = 'pg_trgm'));
END
$$;
CREATE INDEX jobs_created_brin_idx ON jobs USING brin (created_at);

-- Jobs waiting for a worker that can run them (few rows: the claim path never touches it).
CREATE INDEX jobs_unrunnable_idx ON jobs (queue)
    WHERE state = 'queued' AND unrunnable_since IS NOT NULL;

-- A hot, update-heavy table: vacuum it early and leave room for HOT updates.
ALTER TABLE jobs SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE TABLE results (
    job_id     bigint      PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    result     jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT results_result_size CHECK (result IS NULL OR pg_column_size(result) <= 67108864)
);

-- What running workers can execute, so enqueue can reject unknown tasks and bad arguments.
CREATE TABLE tasks (
    name         text        PRIMARY KEY,
    params       jsonb       NOT NULL,
    max_attempts integer     NOT NULL,
    queue        text        NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

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

-- Queues no worker claims from (see 0004_job_control.sql).
CREATE TABLE paused_queues (
    queue     text        PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text,
    CONSTRAINT paused_queues_queue_valid CHECK (length(queue) BETWEEN 1 AND 128),
    CONSTRAINT paused_queues_by_length CHECK (paused_by IS NULL OR length(paused_by) <= 1000)
);

-- Idempotency keys: one request per key, kept apart from the jobs so that pruning jobs does
-- not free a key (see 0005_idempotency_keys.sql).
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash text,
    request      jsonb,
    job_ids      bigint[]    NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_key_length CHECK (length(key) BETWEEN 1 AND 255),
    CONSTRAINT idempotency_keys_hash_hex
        CHECK (request_hash IS NULL OR request_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT idempotency_keys_request_size
        CHECK (request IS NULL OR pg_column_size(request) <= 8192)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Wake idle workers once per inserting statement (not per row), one notification per queue.
CREATE FUNCTION notify_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    FOR q IN SELECT DISTINCT queue FROM inserted LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_jobs', q);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_inserted
    AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION notify_jobs_inserted();

-- Wake waiting producers (Client.wait): one notification per job that became finished, its
-- id the payload (see 0007_wait_notify.sql).
CREATE FUNCTION notify_jobs_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_done', NEW.id::text);
    RETURN NULL;
END;
$$;

-- Its trigger, for waited jobs only, is below with their flag (0012_wake_on_finish.sql).

-- Concurrency and rate limits (see 0008_limits.sql): columns added after the tables' own, as
-- the migration adds them.
ALTER TABLE tasks ADD COLUMN limits jsonb;
ALTER TABLE jobs ADD COLUMN concurrency_key text;
CREATE INDEX jobs_limited_queued_idx ON jobs (task, concurrency_key, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_limited_running_idx ON jobs (task, concurrency_key, locked_until)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX jobs_runnable_unlimited_idx ON jobs (queue, priority, run_at, id)
    WHERE state = 'queued' AND concurrency_key IS NULL;
-- Rate limits' ledger of starts, and which registered limits win (see 0010_limit_starts.sql).
CREATE TABLE limit_starts (
    task            text        NOT NULL,
    concurrency_key text        NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX limit_starts_task_idx ON limit_starts (task, started_at);
CREATE INDEX limit_starts_key_idx ON limit_starts (task, concurrency_key, started_at);
CREATE TABLE task_limit_definitions (
    task          text        NOT NULL,
    definition    jsonb       NOT NULL,
    introduced_at timestamptz NOT NULL DEFAULT now(),
    registered_at timestamptz NOT NULL DEFAULT now(),
    declared_by   text[]      NOT NULL DEFAULT '{}',
    PRIMARY KEY (task, definition)
);

-- Periodic jobs (see 0009_schedules.sql).
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

-- Waited jobs flagged (see 0012_wake_on_finish.sql): a waiter's hub sets the flag. Since
-- 0013_completion_notifies.sql the worker's completions flip it on the jobs they finish and
-- send one notify per statement; the trigger announces every other finish row by row.
ALTER TABLE jobs ADD COLUMN wake_on_finish boolean NOT NULL DEFAULT false;
CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state
          AND OLD.wake_on_finish = NEW.wake_on_finish)
    EXECUTE FUNCTION notify_jobs_finished();
