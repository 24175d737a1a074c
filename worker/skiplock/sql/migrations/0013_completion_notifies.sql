-- The worker's completions send their own finish NOTIFY, one per statement, instead of one
-- trigger call per finished job (0007's row trigger was about a fifth of a completion's
-- server time: docs/benchmarks.md, "The finish notify, one per completion statement").
--
-- complete_succeeded and complete_failed (sql/queries.sql) flip wake_on_finish on each job
-- they finish and send one pg_notify on <schema>_done naming those jobs ("12,13,14", in chunks
-- of 300 ids), which every wait hub parses, of this release and of the earlier ones. The
-- flip is how the trigger below tells their rows from any other finish: a statement that
-- leaves wake_on_finish as it was (a cancel, a rescue that ends a job dead, a bulk action, a
-- worker of an earlier release) is still notified row by row, as 0007 made it. So every
-- finished job is announced whatever mix of versions runs, and in any order of deploying
-- code and running this migration: a worker of this release on a schema before this
-- migration is announced twice (its own notify and the row trigger), a repeat a hub ignores.
--
-- wake_on_finish (0012: a waiter asks for the notify) is not read by the trigger any more:
-- every finish is announced, so the flag a hub sets is no longer needed, and once a job has
-- finished its value says nothing. The one trigger is replaced in one transaction, so no
-- finish falls between the two.
DROP TRIGGER jobs_notify_finished ON jobs;
CREATE TRIGGER jobs_notify_finished
    AFTER UPDATE OF state ON jobs
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'dead', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state
          AND OLD.wake_on_finish = NEW.wake_on_finish)
    EXECUTE FUNCTION notify_jobs_finished();
