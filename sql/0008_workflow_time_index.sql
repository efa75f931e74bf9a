-- Memory Explorer (src/api/ui.rs) and the query API: a workflow's overview (its trend, error codes
-- and duration percentiles over the last hour/day/week) reads one workflow's rows in a
-- `requested_at` range, and `/api/traces?workflowId=` pages them newest first. The spec's
-- idx_traces_workflow_id (workflow_id) alone finds every row the workflow ever had (a busy one:
-- much of the table) and filters and sorts them; this one reads exactly the range, in order, with
-- `id` last as the keyset tie-breaker (as in 0006). The overview's columns ride along (INCLUDE),
-- so its pass over a busy workflow's week reads the index only, not the rows. It costs every
-- insert one more index entry; the D2 update writes a new entry in every index anyway (it is
-- never HOT: overall_status is indexed since 0001).
CREATE INDEX IF NOT EXISTS idx_traces_workflow_time
    ON communication_traces (workflow_id, requested_at, id)
    INCLUDE (overall_status, duration_ms, error_code);

-- As in 0006: on a large existing table, create it beforehand with CREATE INDEX CONCURRENTLY
-- (same name and definition); IF NOT EXISTS then makes this migration a no-op.
