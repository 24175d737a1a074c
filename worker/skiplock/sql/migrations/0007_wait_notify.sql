-- Client.wait() (skiplock/waiting.py): a notification when jobs finish, so that a waiting
-- producer is woken at once instead of polling.
--
-- Once per statement, not per row (as notify_jobs_inserted): a completion batch of 400 jobs
-- sends one or two notifications on <schema>_done, each a comma-separated list of the ids
-- that statement left finished, in chunks of 300 ids (at most ~6.3 kB, under NOTIFY's 8000
-- byte payload limit). A trigger catches every way a job finishes (the worker's completion
-- and failure batches, a cancel of a queued job, a rescue that ends a job dead, a bulk
-- action), where a NOTIFY in each statement would have to be kept in step with all of them.
-- It fires for every UPDATE of jobs (claims, lease renewals too): transition tables cannot
-- be combined with a column list, and a statement-level trigger that finds no finished row
-- sends nothing. A finished row updated again (rare) is announced again: a waiter re-reads
-- the job, so a repeat is harmless.
CREATE FUNCTION notify_jobs_finished() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids text;
BEGIN
    FOR ids IN
        SELECT string_agg(f.id::text, ',')
        FROM (SELECT id, (row_number() OVER ()) / 300 AS chunk FROM finished
              WHERE state IN ('succeeded', 'dead', 'cancelled')) AS f
        GROUP BY f.chunk
    LOOP
        PERFORM pg_notify(TG_TABLE_SCHEMA || '_done', ids);
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE ON jobs
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION notify_jobs_finished();

-- The producer's trace context (skiplock/tracing.py, the otel extra): W3C traceparent and
-- tracestate as a JSON object, so the worker's span of the job's first attempt is the
-- producer's child. NULL without OpenTelemetry (a nullable column without a default: no
-- table rewrite, no scan).
ALTER TABLE jobs ADD COLUMN trace_context jsonb;
