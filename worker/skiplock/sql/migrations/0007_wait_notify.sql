-- Client.wait() (skiplock/waiting.py): a notification when jobs finish, so that a waiting
-- producer is woken at once instead of polling.
--
-- One notification per job that became finished, its id as the payload (the hub reads the
-- ids of many at once). A row trigger restricted to the finishing transition, not a
-- statement trigger with a transition table: that one ran for EVERY UPDATE of jobs (a
-- transition table cannot be combined with a column list), claims and lease renewals
-- included, and cost them ~5 % each; here a lease renewal (no state in its SET) never looks
-- at the trigger, a claim only evaluates its WHEN, and only a finishing row calls the
-- function. A trigger catches every way a job finishes (the worker's completion and failure
-- batches, a cancel of a queued job, a rescue that ends a job dead, a bulk action), where a
-- NOTIFY in each statement would have to be kept in step with all of them. A completion
-- batch of 400 sends 400 small notifications, delivered at its commit, that the hub reads in
-- one query.
CREATE FUNCTION notify_jobs_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_done', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION notify_jobs_finished();

-- The producer's trace context (skiplock/tracing.py, the otel extra): W3C traceparent and
-- tracestate as a JSON object, so the worker's span of the job's first attempt is the
-- producer's child. NULL without OpenTelemetry (a nullable column without a default: no
-- table rewrite, no scan).
ALTER TABLE jobs ADD COLUMN trace_context jsonb;
