-- D4: which redaction rules fired for a row, never the values. Nullable (NULL = no rule fired),
-- so the specification's own insert keeps working. Shape:
--   {"request_payload": [{"rule": "key:*password*", "path": "$.user.password", "count": 1}, ...],
--    "http_target": [...], "response_payload": [...], ...}
-- so an agent can tell "a token was present and removed" from "no token was sent".
ALTER TABLE communication_traces
    ADD COLUMN IF NOT EXISTS redactions jsonb;
