-- The migrator's own bookkeeping (skiplock/migrator.py). It runs with search_path set to the
-- configured schema.

-- name: migrations_table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_steps_table
-- The steps run outside a transaction (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT), each
-- recorded when done, so an interrupted migration resumes at its first unfinished step.
CREATE TABLE IF NOT EXISTS schema_migration_steps (
    version    integer NOT NULL,
    step       integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (version, step)
);

-- name: applied_migrations
SELECT version FROM schema_migrations;

-- name: applied_migration_steps
SELECT version, step FROM schema_migration_steps;

-- name: record_migration
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: record_migration_step
INSERT INTO schema_migration_steps (version, step) VALUES (%(version)s, %(step)s)
ON CONFLICT DO NOTHING;

-- name: invalid_index
-- An index of this schema left INVALID by an interrupted CREATE INDEX CONCURRENTLY.
SELECT c.relname FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE c.relname = %(name)s AND c.relnamespace = current_schema()::regnamespace
  AND NOT i.indisvalid;

-- name: existing_tables
-- Of %(tables)s, those that exist in %(schema)s (a transactional part may create the others;
-- a table of the same name in public, say an application's own `jobs`, is not ours), in
-- order; and the server's deadlock_timeout in seconds (skiplock/migrator.py
-- lock_budget).
SELECT ARRAY(SELECT t FROM unnest(%(tables)s::text[]) AS t
             WHERE to_regclass(quote_ident(%(schema)s) || '.' || quote_ident(t)) IS NOT NULL
             ORDER BY t) AS tables,
       extract(epoch FROM current_setting('deadlock_timeout')::interval)::float8
           AS deadlock_timeout;
