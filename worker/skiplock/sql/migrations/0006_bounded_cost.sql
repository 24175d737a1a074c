-- Bounded data and bounded searches.

-- A ceiling on what one job or result may hold, for every producer (Client, the API, raw SQL):
-- a claim loads `concurrency` jobs into a worker at once, so one 200 MB job is an
-- out-of-memory, then the next worker's. Client and the API refuse far less, with a clearer
-- message (SKIPLOCK_MAX_ARGS_BYTES, SKIPLOCK_MAX_RESULT_BYTES, at most 8 MiB of JSON each);
-- 64 MiB stays above anything they let through (stored jsonb is up to ~6x its JSON text, for
-- a list of small numbers). pg_column_size is the datum's size, read from its header (no
-- detoasting); a CHECK runs before the row is compressed, so it sees the whole value.
-- NOT VALID here, validated in the steps below (no write-blocking scan: skiplock/migrator.py).
ALTER TABLE jobs ADD CONSTRAINT jobs_args_size CHECK (pg_column_size(args) <= 67108864)
    NOT VALID;
ALTER TABLE results ADD CONSTRAINT results_result_size
    CHECK (result IS NULL OR pg_column_size(result) <= 67108864) NOT VALID;

-- The jobs list's error text filter (`error=`, a substring, as LIKE '%text%') through a
-- trigram index instead of a scan of every job. Partial: a job without an error (most of
-- them, and every new one) costs enqueue nothing here. pg_trgm ships with PostgreSQL
-- (contrib) and is a trusted extension: the database owner may create it. It goes into
-- public, not the Skiplock schema: there is one per database, and several Skiplock schemas
-- may share it.
-- Where pg_trgm is not installed (an embedded or minimal PostgreSQL without contrib) or may
-- not be created, the index is left out with a NOTICE: the filter still works, by a scan.
-- The index itself is a step below (built concurrently, with the operator class of whatever
-- schema pg_trgm lives in, e.g. "extensions" on Supabase).
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
END
$$;

-- The created_after / created_before filters: created_at grows with the table, so a BRIN
-- index (a few pages for millions of rows, next to nothing per insert) narrows a time range
-- to the blocks that hold it.
-- step: no transaction
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_created_brin_idx ON jobs USING brin (created_at)

-- step: no transaction
-- only if: EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_trgm')
-- with trgm: SELECT n.nspname FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_last_error_trgm_idx
    ON jobs USING gin (last_error {trgm}.gin_trgm_ops) WHERE last_error IS NOT NULL

-- step: no transaction
ALTER TABLE jobs VALIDATE CONSTRAINT jobs_args_size

-- step: no transaction
ALTER TABLE results VALIDATE CONSTRAINT results_result_size
