-- Every index costs each proxied request twice: an entry at the D1 insert and another at the D2
-- update (never HOT: overall_status is indexed). Two of the specification's single-column indexes
-- were second indexes on a column that already leads a composite one, and one indexed a column
-- that is mostly NULL. Same names, fewer index writes per request:
--
-- * idx_traces_trace_id becomes the unique (trace_id, attempt_number) index (0003's
--   idx_traces_trace_attempt, renamed): it serves every trace_id lookup as before, returns a
--   chain already ordered by attempt, and still guards attempt numbering (D3).
-- * idx_traces_workflow_id becomes the (workflow_id, requested_at, id) INCLUDE (...) index (0008's
--   idx_traces_workflow_time, renamed): every workflow_id lookup is served by its leading column.
-- * idx_traces_execution_id is partial: execution_id is NULL unless bilko-app sends
--   X-Execution-Id, and `execution_id = $1` never looks for NULL, so rows without one stay out.
--
-- Dropping and renaming are instant; the partial index is built in this migration's transaction,
-- which blocks writes while it runs. On a large existing table, create it beforehand as
-- idx_traces_execution_id_partial with CREATE INDEX CONCURRENTLY (same definition); this
-- migration then only swaps the names.
DROP INDEX IF EXISTS idx_traces_trace_id;
ALTER INDEX IF EXISTS idx_traces_trace_attempt RENAME TO idx_traces_trace_id;
DROP INDEX IF EXISTS idx_traces_workflow_id;
ALTER INDEX IF EXISTS idx_traces_workflow_time RENAME TO idx_traces_workflow_id;
CREATE INDEX IF NOT EXISTS idx_traces_execution_id_partial
    ON communication_traces (execution_id)
    WHERE execution_id IS NOT NULL;
DROP INDEX IF EXISTS idx_traces_execution_id;
ALTER INDEX idx_traces_execution_id_partial RENAME TO idx_traces_execution_id;
