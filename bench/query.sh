#!/usr/bin/env bash
# Query API benchmark (issue 6): loads ROWS rows (default 1,000,000) into a dedicated database
# with SQL generate_series, starts trace-proxy with its admin listener, and reports the latency
# of DATA-002's three query patterns through the HTTP API:
#   chain     GET /api/traces/{traceId}                       (getTraceChain)
#   failures  GET /api/workflows/{workflowId}/failures?limit=50 (getRecentFailures)
#   history   GET /api/users/{userId}/history?limit=50         (getUserHistory)
# each over one connection (pure latency) and over CONCURRENCY connections, with random ids
# (examples/query_load.rs drives the requests). It also prints EXPLAIN ANALYZE of each pattern
# at full size, the index sizes, and the write cost of the two indexes migration 0006 adds
# (pending insert + final update, as D1/D2 do, with and without them, alternated in one run).
#
#   bench/query.sh
#
# Environment (all optional):
#   BENCH_DATABASE_URL  admin database URL      (postgres://postgres@127.0.0.1:5432/postgres)
#   ROWS                rows to load                                        (1000000)
#   REQUESTS            requests per pattern and run                        (2000)
#   CONCURRENCY         connections of the loaded run                       (4)
#   BENCH_PORT_BASE     proxy port; admin = +1                              (19080)
#   WRITE_ROWS          rows of each write-cost round                       (100000)
#
# Everything listens on 127.0.0.1. The database trace_proxy_bench_query is dropped and
# re-created at the start and left behind for inspection.
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/query

BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROWS=${ROWS:-1000000}
REQUESTS=${REQUESTS:-2000}
CONCURRENCY=${CONCURRENCY:-4}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-19080}
WRITE_ROWS=${WRITE_ROWS:-100000}

BENCH_DB=trace_proxy_bench_query
TRACES=$((ROWS / 2))
WORKFLOWS=1000
USERS=50000
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

trap stop_proxy_and_clean EXIT
admin_bench_setup

log "loading $ROWS rows ($TRACES traces x 2 attempts, $WORKFLOWS workflows, $USERS users, 29 days)"
load_start=$(date +%s.%N)
"${PSQL[@]}" "$DB_URL" <<EOF
INSERT INTO communication_traces (id, trace_id, attempt_number, source_service,
    destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms,
    request_payload, response_payload, overall_status, error_code, error_detail, execution_id,
    http_method, http_target, http_status, route_name)
SELECT gen_random_uuid(), 't' || t, a, 'bilko-app',
       CASE WHEN t % 10 = 0 THEN 'bilko-app' ELSE 'n8n' END,
       'wf-' || (t % $WORKFLOWS), 'trigger-workflow', 'user-' || (t % $USERS),
       at, at + make_interval(secs => d / 1000.0), d,
       jsonb_build_object('order', t, 'attempt', a, 'items', jsonb_build_array(1, 2, 3),
                          'customer', jsonb_build_object('name', 'bench ' || t, 'tier', t % 5)),
       CASE WHEN failed THEN '"busy"'::jsonb ELSE jsonb_build_object('ok', true, 'executionId', t::text) END,
       CASE WHEN failed THEN 'failed' ELSE 'success' END,
       CASE WHEN failed THEN CASE WHEN t % 4 = 0 THEN 'TIMEOUT' ELSE 'HTTP_503' END END,
       CASE WHEN failed THEN 'upstream answered 503; retrying in 120 ms' END,
       CASE WHEN t % 3 = 0 THEN md5((t / 4)::text)::uuid END,
       'POST', '/webhook/wf-' || (t % $WORKFLOWS), CASE WHEN failed THEN 503 ELSE 200 END, 'n8n'
FROM (
    SELECT g / 2 AS t, g % 2 + 1 AS a,
           (now() AT TIME ZONE 'utc') - interval '29 days' + g * (interval '29 days' / $ROWS) AS at,
           (((g::bigint * 7919) % 2500) + 5)::int AS d,
           -- the first attempt of every 6th trace failed (its retry succeeded), plus a few others
           (g % 2 = 0 AND (g / 2) % 6 = 0) OR g % 97 = 5 AS failed
    FROM generate_series(0, $ROWS - 1) g
) s;
ANALYZE communication_traces;
EOF
load_end=$(date +%s.%N)
awk -v a="$load_start" -v b="$load_end" -v n="$ROWS" 'BEGIN { printf "loaded %d rows in %.1f s\n", n, b - a }'

"${PSQL[@]}" "$DB_URL" -At -F ' ' <<'EOF'
SELECT 'rows ' || count(*) || ', failed ' || count(*) FILTER (WHERE overall_status = 'failed') FROM communication_traces;
SELECT 'table ' || pg_size_pretty(pg_table_size('communication_traces')) || ', all indexes ' || pg_size_pretty(pg_indexes_size('communication_traces'));
SELECT '  ' || rpad(indexrelid::regclass::text, 28) || pg_size_pretty(pg_relation_size(indexrelid))
FROM pg_index WHERE indrelid = 'communication_traces'::regclass ORDER BY 1;
EOF

echo
echo "---- EXPLAIN ANALYZE at $ROWS rows (the API's SQL, one random id each) ----"
COLS="id, trace_id, execution_id, attempt_number, source_service, destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms, request_payload, response_payload, overall_status, error_code, error_detail, n8n_execution_id"
explain_query "chain" "SELECT $COLS FROM communication_traces WHERE trace_id = 't$((RANDOM * 7 % TRACES))' ORDER BY attempt_number LIMIT 1001"
explain_query "failures" "SELECT $COLS FROM communication_traces WHERE workflow_id = 'wf-$((RANDOM % WORKFLOWS))' AND overall_status = 'failed' ORDER BY requested_at DESC, id DESC LIMIT 51"
explain_query "history" "SELECT $COLS FROM communication_traces WHERE user_id = 'user-$((RANDOM % USERS))' ORDER BY requested_at DESC, id DESC LIMIT 51"

start_admin_proxy

echo
echo "---- API latency, $REQUESTS requests per run, random ids ----"
for pattern in chain failures history; do
    # Warm-up: connections, the query pool, and the first pages of the indexes.
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" 200 2 "$TRACES" "$WORKFLOWS" "$USERS" >/dev/null
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" "$REQUESTS" 1 "$TRACES" "$WORKFLOWS" "$USERS"
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" "$REQUESTS" "$CONCURRENCY" "$TRACES" "$WORKFLOWS" "$USERS"
done
if kill -TERM "$PROXY_PID"; then
    wait "$PROXY_PID" || true
fi
PROXY_PID=""

echo
echo "---- write cost of migration 0006's indexes ($WRITE_ROWS rows: pending insert, then final update) ----"
"${PSQL[@]}" "$DB_URL" <<'EOF'
SET client_min_messages = warning;
DROP TABLE IF EXISTS wc_without, wc_with;
CREATE TABLE wc_without (LIKE communication_traces INCLUDING DEFAULTS);
CREATE TABLE wc_with (LIKE communication_traces INCLUDING DEFAULTS);
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['wc_without', 'wc_with'] LOOP
        -- 0001 + 0003: the spec's five indexes, the primary key and the attempt unique index.
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (id)', t);
        EXECUTE format('CREATE INDEX ON %I (trace_id)', t);
        EXECUTE format('CREATE INDEX ON %I (execution_id)', t);
        EXECUTE format('CREATE INDEX ON %I (workflow_id)', t);
        EXECUTE format('CREATE INDEX ON %I (requested_at)', t);
        EXECUTE format('CREATE INDEX ON %I (overall_status)', t);
        EXECUTE format('CREATE UNIQUE INDEX ON %I (trace_id, attempt_number)', t);
    END LOOP;
    CREATE INDEX ON wc_with (workflow_id, requested_at, id) WHERE overall_status = 'failed';
    CREATE INDEX ON wc_with (user_id, requested_at, id);
END $$;
-- A plain function (the bench database is dedicated); dropped at the end.
CREATE OR REPLACE FUNCTION bench_write_round(tbl text, n int, round int) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz;
BEGIN
    EXECUTE format('TRUNCATE %I', tbl);
    t0 := clock_timestamp();
    -- D1: pending rows (not in the partial failures index)...
    EXECUTE format($q$INSERT INTO %I (id, trace_id, attempt_number, source_service, destination_service,
        workflow_id, user_id, requested_at, request_payload)
        SELECT gen_random_uuid(), 'w' || %s || '-' || g, 1, 'bilko-app', 'n8n', 'wf-' || (g %% 1000),
               'user-' || (g %% 50000), now() AT TIME ZONE 'utc', jsonb_build_object('n', g)
        FROM generate_series(1, %s) g$q$, tbl, round, n);
    -- ...then D2: the final update (8% become failed and enter it).
    EXECUTE format($q$UPDATE %I SET overall_status = CASE WHEN random() < 0.08 THEN 'failed' ELSE 'success' END,
        responded_at = requested_at, duration_ms = 12, response_payload = '{"ok": true}'$q$, tbl);
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;
EOF
for round in 1 2 3; do
    for tbl in wc_without wc_with; do
        ms=$("${PSQL[@]}" "$DB_URL" -At -c "SELECT round(bench_write_round('$tbl', $WRITE_ROWS, $round))")
        printf 'round %s  %-11s %6s ms\n' "$round" "$tbl" "$ms"
        echo "$tbl $ms" >>"$TMP/write_cost"
    done
done
awk '{ s[$1] += $2 } END { printf "with/without 0006 indexes: %.2fx the write time (sum of 3 rounds: %d ms vs %d ms)\n", s["wc_with"] / s["wc_without"], s["wc_with"], s["wc_without"] }' "$TMP/write_cost"
"${PSQL[@]}" "$DB_URL" -c "DROP TABLE wc_without, wc_with" -c "DROP FUNCTION bench_write_round"
