-- DATA-002: communication_traces exactly as the specification defines it (drizzle-orm schema in
-- shared/models/traces.ts). IF NOT EXISTS: bilko-app may already have created it with drizzle.
CREATE TABLE IF NOT EXISTS communication_traces (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    trace_id            text NOT NULL,
    execution_id        uuid,
    attempt_number      integer NOT NULL DEFAULT 1,
    source_service      text NOT NULL,
    destination_service text NOT NULL,
    workflow_id         text NOT NULL,
    action              text,
    user_id             text NOT NULL,
    requested_at        timestamp NOT NULL,
    responded_at        timestamp,
    duration_ms         integer,
    request_payload     jsonb,
    response_payload    jsonb,
    overall_status      text NOT NULL DEFAULT 'pending',
    error_code          text,
    error_detail        text,
    n8n_execution_id    text
);

CREATE INDEX IF NOT EXISTS idx_traces_trace_id ON communication_traces(trace_id);
CREATE INDEX IF NOT EXISTS idx_traces_execution_id ON communication_traces(execution_id);
CREATE INDEX IF NOT EXISTS idx_traces_workflow_id ON communication_traces(workflow_id);
CREATE INDEX IF NOT EXISTS idx_traces_requested_at ON communication_traces(requested_at);
CREATE INDEX IF NOT EXISTS idx_traces_status ON communication_traces(overall_status);
