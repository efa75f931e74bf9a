-- Columns trace-proxy adds beside DATA-002's. All nullable, so the specification's own insert
-- (and drizzle's $inferInsert) keeps working unchanged.
ALTER TABLE communication_traces
    ADD COLUMN IF NOT EXISTS http_method    text,    -- request method
    ADD COLUMN IF NOT EXISTS http_target    text,    -- path and query as received
    ADD COLUMN IF NOT EXISTS http_status    integer, -- upstream response status (NULL: none received)
    ADD COLUMN IF NOT EXISTS route_name     text,    -- the [[routes]] entry that served it
    ADD COLUMN IF NOT EXISTS request_bytes  bigint,  -- request body size actually forwarded
    ADD COLUMN IF NOT EXISTS response_bytes bigint;  -- response body size streamed to the client
