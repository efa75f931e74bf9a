-- D3: every attempt is its own row, numbered 1, 2, 3... per trace. No two rows may share
-- (trace_id, attempt_number): the proxy numbers attempts atomically against this index.
CREATE UNIQUE INDEX IF NOT EXISTS idx_traces_trace_attempt
    ON communication_traces (trace_id, attempt_number);
