-- Control over jobs that already run: cancel requests, deadlines, snoozes, paused queues.

-- A cancel request for a running job: the worker running it learns it (NOTIFY on
-- <schema>_control, and the answer of its lease heartbeat) and stops the handler; whatever
-- outcome that worker writes afterwards, the job ends 'cancelled' (the completion statements
-- check this column), and an expired lease with a request ends it too instead of a re-run.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
-- who or what asked (the API's caller, the CLI's user and host, a bulk action), for the history
ALTER TABLE jobs ADD COLUMN cancel_reason text;
-- This job's own deadline per attempt (enqueue's timeout=); NULL: the task's own, if any.
ALTER TABLE jobs ADD COLUMN timeout_seconds float8;
-- Times the handler snoozed the job (raise Snooze): not attempts, bounded by the worker.
ALTER TABLE jobs ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
-- NOT VALID here, validated in the steps at the end: a validating ADD CONSTRAINT scans the
-- whole table holding a lock that stops every write (skiplock/migrator.py).
ALTER TABLE jobs ADD CONSTRAINT jobs_timeout_positive
    CHECK (timeout_seconds IS NULL OR (timeout_seconds > 0 AND timeout_seconds <= 31536000))
    NOT VALID;
ALTER TABLE jobs ADD CONSTRAINT jobs_cancel_reason_length
    CHECK (cancel_reason IS NULL OR length(cancel_reason) <= 1000) NOT VALID;

-- Queues no worker claims from (skiplock queue pause Q); the claim checks this table itself,
-- so a worker that missed the NOTIFY does not claim either.
CREATE TABLE paused_queues (
    queue     text        PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now(),
    paused_by text,
    CONSTRAINT paused_queues_queue_valid CHECK (length(queue) BETWEEN 1 AND 128),
    CONSTRAINT paused_queues_by_length CHECK (paused_by IS NULL OR length(paused_by) <= 1000)
);

-- step: no transaction
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_timeout_positive

-- step: no transaction
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_cancel_reason_length
