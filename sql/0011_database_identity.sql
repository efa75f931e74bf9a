-- This database's own identity: one random id, made once. The spool journal remembers the id of
-- the database its records belong to, so a journal is never replayed into another database
-- (a proxy restarted with another database.url).
CREATE TABLE IF NOT EXISTS trace_proxy_identity (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
INSERT INTO trace_proxy_identity (id)
SELECT gen_random_uuid() WHERE NOT EXISTS (SELECT 1 FROM trace_proxy_identity);
