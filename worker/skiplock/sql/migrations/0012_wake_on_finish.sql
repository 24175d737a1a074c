-- The finish NOTIFY (0007) only for jobs somebody waits on. Until now the row trigger called
-- its PL/pgSQL function for every job that finished, waited on or not: about half of a
-- completion's server time in the raw pgbench cycle (docs/benchmarks.md, "The finish notify
-- only for waited jobs"). A waiter's hub (skiplock/waiting.py) sets wake_on_finish on the jobs
-- it waits for, after its LISTEN and before it reads their state; the trigger's WHEN tests
-- the flag first, so a job nobody waits on is passed over by the executor's own check of the
-- condition and no function runs for it.
--
-- A new column with a constant default: no table rewrite, no scan (the ACCESS EXCLUSIVE lock
-- is brief and taken under the migrator's lock_timeout). The trigger is replaced in the same
-- transaction: no moment without one.
--
-- Rolling deploy: a client older than this migration waits without setting the flag, so its
-- waits are no longer woken by the notify but by its hub's poll (every 2 s at most,
-- docs/python-api.md); they still finish. A client of this version against a schema before
-- this migration finds no column; its hub then skips the flag (the old trigger notifies every
-- job anyway) and tries again with each new waiter.
ALTER TABLE jobs ADD COLUMN wake_on_finish boolean NOT NULL DEFAULT false;

DROP TRIGGER jobs_notify_finished ON jobs;
CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.wake_on_finish AND NEW.state IN ('succeeded', 'dead', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION notify_jobs_finished();
