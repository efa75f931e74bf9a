-- Query API (src/api/, src/store/query.rs): the indexes DATA-002's query patterns need beyond the
-- five the specification creates. Each index costs every proxy insert (and the D2 update, which
-- is never HOT because overall_status is indexed), so only patterns without a serving index get
-- one:
--   getTraceChain      trace_id = $1 ORDER BY attempt_number   -> idx_traces_trace_attempt (0003)
--   execution traces   execution_id = $1                       -> idx_traces_execution_id (0001)
--   search / stats     requested_at ranges, newest first       -> idx_traces_requested_at (0001)
--   getRecentFailures  workflow_id = $1 AND status = 'failed' ORDER BY requested_at DESC
--                                                              -> idx_traces_failures (below)
--   getUserHistory     user_id = $1 ORDER BY requested_at DESC -> idx_traces_user_history (below)
-- `id` is the tie-breaker of the stable newest-first order and of the keyset cursor, so it is
-- the last key column: a LIMIT query reads exactly the rows it returns, in order, with no sort.
--
-- Partial: only failed rows enter this index, so successful traffic (the bulk) pays nothing for
-- it; a row enters it once, when its D2 update marks it failed.
CREATE INDEX IF NOT EXISTS idx_traces_failures
    ON communication_traces (workflow_id, requested_at, id)
    WHERE overall_status = 'failed';

-- Every row: user history has no narrower predicate. Also serves /api/traces?userId=.
CREATE INDEX IF NOT EXISTS idx_traces_user_history
    ON communication_traces (user_id, requested_at, id);

-- Note: migrations run in one transaction, so on an already large table these builds block
-- writes while they run. To avoid that, create both indexes beforehand with
-- CREATE INDEX CONCURRENTLY (same names); IF NOT EXISTS then makes this migration a no-op.
