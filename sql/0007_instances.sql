-- Crash recovery (src/recovery.rs): every proxy process registers an instance id and heartbeats
-- `last_seen`; every row it inserts carries that id, so the pending rows of a process that died
-- can be found and resolved by any live replica. Nullable: the specification's own insert (and
-- rows written before this migration) leave it NULL.
ALTER TABLE communication_traces
    ADD COLUMN IF NOT EXISTS proxy_instance uuid;

CREATE TABLE IF NOT EXISTS trace_proxy_instances (
    id         uuid PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now(),
    hostname   text
);

-- Partial: only unresolved rows (the requests in flight, plus orphans) enter it, so finding the
-- orphans of a dead instance reads a handful of entries whatever the table size. A row leaves it
-- with its D2 update (which is never HOT anyway: overall_status is indexed since 0001).
CREATE INDEX IF NOT EXISTS idx_traces_unresolved_by_instance
    ON communication_traces (proxy_instance, requested_at)
    WHERE overall_status IN ('pending', 'in_progress');
