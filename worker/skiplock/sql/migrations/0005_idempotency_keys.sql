-- Idempotency keys (Stripe's rule): a key names one request. The same key with the same
-- request answers with the first request's job(s); with a different request it is a conflict.
-- Keys live in their own table so that pruning jobs does not free them: a key is kept for
-- SKIPLOCK_IDEMPOTENCY_RETENTION after its first use, and for as long as any of its jobs
-- exists (`skiplock prune` deletes the rest).
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    -- sha256 (hex) of the canonical request (skiplock/idempotency.py); NULL for keys carried
    -- over from jobs.unique_key, whose request is unknown: those replay their job
    request_hash text,
    -- the request's fields as compared (args by their hash), to say what differs in a conflict
    request      jsonb,
    -- the job (or, for a batch, the jobs in order) the key's request created
    job_ids      bigint[]    NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_key_length CHECK (length(key) BETWEEN 1 AND 255),
    CONSTRAINT idempotency_keys_hash_hex
        CHECK (request_hash IS NULL OR request_hash ~ '^[0-9a-f]{64}$'),
    CONSTRAINT idempotency_keys_request_size
        CHECK (request IS NULL OR pg_column_size(request) <= 8192)
);
-- Pruning keys by age.
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Every stored job's unique_key becomes a key of this table, so the rule holds for them too.
INSERT INTO idempotency_keys (key, job_ids, created_at)
SELECT unique_key, ARRAY[id], created_at FROM jobs
WHERE unique_key IS NOT NULL AND length(unique_key) <= 255;
