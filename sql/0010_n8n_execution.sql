-- n8n's own account of a failed attempt's execution, when the optional lookup ([n8n] api_url
-- and api_key) is configured: final status, the failing node, the error message, start and stop
-- times; sanitized like any payload. NULL until (or unless) the lookup answered.
ALTER TABLE communication_traces ADD COLUMN IF NOT EXISTS n8n_execution jsonb;
