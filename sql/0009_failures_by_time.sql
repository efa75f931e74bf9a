-- Recurring failures (/api/failures/recurring) read
-- every failed attempt of a time window across all workflows:
--   overall_status = 'failed' AND requested_at >= $1 AND requested_at < $2
--   ORDER BY requested_at DESC LIMIT $3
-- idx_traces_failures leads with workflow_id, so it cannot serve a window over all workflows;
-- without this index the query reads the whole window of all traffic.
--
-- Write cost: partial, so only failed rows enter it (successful traffic, the bulk, pays
-- nothing); a row enters it once, when its D2 update marks it failed (that update is never HOT
-- anyway, overall_status is indexed since 0001).
CREATE INDEX IF NOT EXISTS idx_traces_failures_by_time
    ON communication_traces (requested_at, id)
    WHERE overall_status = 'failed';

-- As in 0006: on a large existing table, create it beforehand with CREATE INDEX CONCURRENTLY
-- (same name); IF NOT EXISTS then makes this migration a no-op.
