-- D5: what remains of communication_traces rows older than retention.detail_days (src/retention.rs
-- folds them in and deletes them, batch by batch, in one transaction per batch). No payloads here.

-- Durations are kept as histograms, because percentiles cannot be merged but histograms can: a
-- day's rows are archived over several batches and runs, and p50/p95 are recomputed from the sum.
-- Bucket 0 holds 0 ms; bucket b >= 1 holds [2^((b-1)/4), 2^(b/4)) ms: four buckets per doubling,
-- each at most 19% wide, up to bucket 124, which ends at 2147483647 ms (the int4 maximum).
-- The bounds array (twice below: once per function, so neither depends on the search_path) lists
-- the lower bounds of buckets 1..124: ceil(2^(k/4)) for k = 0..123. A unit test in
-- src/retention.rs checks every copy against that formula.

-- The bucket of a duration (negative durations count as 0 ms).
CREATE OR REPLACE FUNCTION trace_proxy_duration_bucket(ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT width_bucket(ms, '{1,2,2,2,2,3,3,4,4,5,6,7,8,10,12,14,16,20,23,27,32,39,46,54,64,77,91,108,128,153,182,216,256,305,363,431,512,609,725,862,1024,1218,1449,1723,2048,2436,2897,3445,4096,4871,5793,6889,8192,9742,11586,13778,16384,19484,23171,27555,32768,38968,46341,55109,65536,77936,92682,110218,131072,155872,185364,220436,262144,311744,370728,440872,524288,623488,741456,881744,1048576,1246975,1482911,1763488,2097152,2493949,2965821,3526976,4194304,4987897,5931642,7053951,8388608,9975793,11863284,14107901,16777216,19951585,23726567,28215802,33554432,39903170,47453133,56431604,67108864,79806339,94906266,112863207,134217728,159612678,189812532,225726413,268435456,319225355,379625063,451452826,536870912,638450709,759250125,902905651,1073741824,1276901417,1518500250,1805811302}'::integer[]) $$;

-- The helpers below are PL/pgSQL loops over short arrays (a few dozen elements): several times
-- faster than the equivalent set-returning SQL, and the job calls them for every daily row it
-- touches.

-- A dense histogram (element i+1 = count of bucket i, up to the highest bucket used) from sparse
-- (bucket, count) pairs.
CREATE OR REPLACE FUNCTION trace_proxy_histogram(buckets integer[], counts bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    n   integer := coalesce(array_length(buckets, 1), 0);
    top integer := -1;
    h   bigint[];
BEGIN
    FOR i IN 1 .. n LOOP
        top := greatest(top, buckets[i]);
    END LOOP;
    IF top < 0 THEN
        RETURN '{}';
    END IF;
    h := array_fill(0::bigint, ARRAY[top + 1]);
    FOR i IN 1 .. n LOOP
        h[buckets[i] + 1] := h[buckets[i] + 1] + coalesce(counts[i], 0);
    END LOOP;
    RETURN h;
END
$$;

-- Element-wise sum of two histograms (the shorter is padded with zeros).
CREATE OR REPLACE FUNCTION trace_proxy_histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    n integer := greatest(coalesce(array_length(a, 1), 0), coalesce(array_length(b, 1), 0));
    h bigint[];
BEGIN
    IF n = 0 THEN
        RETURN '{}';
    END IF;
    h := array_fill(0::bigint, ARRAY[n]);
    FOR i IN 1 .. n LOOP
        h[i] := coalesce(a[i], 0) + coalesce(b[i], 0);
    END LOOP;
    RETURN h;
END
$$;

-- The sum of many histograms, e.g. a month of daily rows:
--   trace_proxy_histogram_quantile(trace_proxy_histogram_sum(duration_histogram), 0.99,
--                                  max(max_duration_ms))
CREATE OR REPLACE AGGREGATE trace_proxy_histogram_sum(bigint[]) (
    SFUNC = trace_proxy_histogram_add,
    STYPE = bigint[],
    INITCOND = '{}'
);

-- The q-quantile (nearest rank) of a histogram, reported as the largest duration of the bucket
-- holding it (so never below the true value, at most 19% above it), capped at the true maximum.
-- NULL for an empty histogram. Self-contained (no other trace_proxy_* function), because the
-- generated columns below call it whatever the search_path is (pg_restore sets it empty).
CREATE OR REPLACE FUNCTION trace_proxy_histogram_quantile(hist bigint[], q double precision, max_ms integer)
RETURNS integer
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    n      integer := coalesce(array_length(hist, 1), 0);
    total  bigint := 0;
    seen   bigint := 0;
    target bigint;
BEGIN
    FOR i IN 1 .. n LOOP
        total := total + coalesce(hist[i], 0);
    END LOOP;
    IF total = 0 THEN
        RETURN NULL;
    END IF;
    target := greatest(ceil(q * total), 1);
    FOR i IN 1 .. n LOOP
        seen := seen + coalesce(hist[i], 0);
        IF seen >= target THEN
            -- Element i is bucket i - 1; its largest duration is the next bucket's bound - 1.
            RETURN least(
                CASE
                    WHEN i <= 1 THEN 0
                    WHEN i >= 125 THEN 2147483647
                    ELSE ('{1,2,2,2,2,3,3,4,4,5,6,7,8,10,12,14,16,20,23,27,32,39,46,54,64,77,91,108,128,153,182,216,256,305,363,431,512,609,725,862,1024,1218,1449,1723,2048,2436,2897,3445,4096,4871,5793,6889,8192,9742,11586,13778,16384,19484,23171,27555,32768,38968,46341,55109,65536,77936,92682,110218,131072,155872,185364,220436,262144,311744,370728,440872,524288,623488,741456,881744,1048576,1246975,1482911,1763488,2097152,2493949,2965821,3526976,4194304,4987897,5931642,7053951,8388608,9975793,11863284,14107901,16777216,19951585,23726567,28215802,33554432,39903170,47453133,56431604,67108864,79806339,94906266,112863207,134217728,159612678,189812532,225726413,268435456,319225355,379625063,451452826,536870912,638450709,759250125,902905651,1073741824,1276901417,1518500250,1805811302}'::integer[])[i] - 1
                END,
                max_ms);
        END IF;
    END LOOP;
    RETURN max_ms;
END
$$;

-- One row per trace_id whose attempts have aged out of communication_traces. When a trace's
-- attempts age out in different runs the row is merged: counts add up, identity columns are the
-- earliest attempt's, final_* columns the latest attempt's (by requested_at, then attempt_number).
CREATE TABLE IF NOT EXISTS communication_trace_summaries (
    trace_id             text PRIMARY KEY,
    workflow_id          text NOT NULL,
    user_id              text NOT NULL,
    source_service       text NOT NULL,
    destination_service  text NOT NULL,
    action               text,
    execution_id         uuid,
    n8n_execution_id     text,
    attempt_count        integer NOT NULL,
    final_attempt_number integer NOT NULL,
    final_status         text NOT NULL,
    final_error_code     text,
    first_requested_at   timestamp NOT NULL,
    last_requested_at    timestamp NOT NULL,
    last_responded_at    timestamp,
    total_duration_ms    bigint NOT NULL,
    archived_at          timestamp NOT NULL
);

CREATE INDEX IF NOT EXISTS idx_trace_summaries_last_requested_at
    ON communication_trace_summaries (last_requested_at);
CREATE INDEX IF NOT EXISTS idx_trace_summaries_workflow_id
    ON communication_trace_summaries (workflow_id);
CREATE INDEX IF NOT EXISTS idx_trace_summaries_user_id
    ON communication_trace_summaries (user_id);

-- One row per UTC day (of requested_at) x workflow x source x destination x status. Merged, never
-- duplicated, when a day is archived over several batches or runs.
CREATE TABLE IF NOT EXISTS communication_trace_daily (
    day                 date NOT NULL,
    workflow_id         text NOT NULL,
    source_service      text NOT NULL,
    destination_service text NOT NULL,
    status              text NOT NULL,
    request_count       bigint NOT NULL,
    failure_count       bigint NOT NULL,
    duration_count      bigint NOT NULL,
    total_duration_ms   bigint NOT NULL,
    max_duration_ms     integer,
    duration_histogram  bigint[] NOT NULL,
    p50_duration_ms     integer GENERATED ALWAYS AS
        (trace_proxy_histogram_quantile(duration_histogram, 0.5, max_duration_ms)) STORED,
    p95_duration_ms     integer GENERATED ALWAYS AS
        (trace_proxy_histogram_quantile(duration_histogram, 0.95, max_duration_ms)) STORED,
    PRIMARY KEY (day, workflow_id, source_service, destination_service, status)
);

CREATE INDEX IF NOT EXISTS idx_trace_daily_workflow_id
    ON communication_trace_daily (workflow_id, day);
