-- jobs_limited_started_idx (0008) counted a rate limit's starts from jobs.started_at. Since
-- 0010 the claim counts the starts ledger (limit_starts) instead, so the index was written and
-- never read: two index entries more for every limited job, one when it starts and one when
-- it finishes (a non-HOT update inserts into every index whose predicate the new row meets).
-- Dropping it cut the finish of a limited job by a third and the global limit's claim cost
-- (docs/limits.md, "Cost", has the figures).
-- A worker older than 0010 still counts rates from jobs.started_at: during a rolling deploy
-- from such a version its rate-limited claims scan the task's jobs until it is replaced.
-- step: no transaction
DROP INDEX CONCURRENTLY IF EXISTS jobs_limited_started_idx
