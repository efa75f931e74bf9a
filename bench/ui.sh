#!/usr/bin/env bash
# Memory Explorer benchmark (issue 11): loads ROWS rows (default 1,000,000: 30 days of traffic)
# into a dedicated database with SQL generate_series, starts trace-proxy with its admin
# listener, and reports the server time of each explorer page: the /api calls the view makes
# when it opens, sent at once as the page does, timed until the last answer is read
# (examples/query_load.rs):
#   list           GET /api/traces?fields=*&payloads=none                 (Traces, newest page)
#   list-failed    GET /api/traces?status=failed&fields=*&payloads=none   (Traces, failed only)
#   trace          GET /api/traces/{id}?fields=*&payloads=full
#                + GET /api/traces/{id}/diff?payloads=full                (Trace, random id)
#   overview-hour  GET /api/overview?window=hour                          (Overview)
#   overview-day   GET /api/overview?window=day                           (Overview, default)
#   overview-week  GET /api/overview?window=week                          (Overview)
#   workflow       GET /api/overview?window=week&workflowId={id}
#                + GET /api/workflows/{id}/failures?limit=20&...          (Workflow, random id)
# p50/p90/p99 over REQUESTS pages each, over one connection and over CONCURRENCY. The overview
# keeps the current window for a few seconds (src/api/overview.rs), so most of those pages are
# answered from memory; the *-cold patterns ask with `until=now`, which is always read from the
# database, and show what a first view (or a refresh) costs: COLD_REQUESTS pages each. It also
# prints EXPLAIN ANALYZE of the overview's statements at full size.
#
#   bench/ui.sh
#
# Environment (all optional):
#   BENCH_DATABASE_URL  admin database URL      (postgres://postgres@127.0.0.1:5432/postgres)
#   ROWS                rows to load                                        (1000000)
#   REQUESTS            pages per pattern and run                           (500)
#   COLD_REQUESTS       pages per *-cold pattern and run                    (100)
#   CONCURRENCY         connections of the loaded run                       (4)
#   BENCH_PORT_BASE     proxy port; admin = +1                              (19180)
#
# Everything listens on 127.0.0.1. The database trace_proxy_bench_ui is dropped and re-created
# at the start and left behind for inspection.
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/ui

BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
ROWS=${ROWS:-1000000}
REQUESTS=${REQUESTS:-500}
COLD_REQUESTS=${COLD_REQUESTS:-100}
CONCURRENCY=${CONCURRENCY:-4}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-19180}
int_at_least ROWS 1000
int_at_least REQUESTS 1
int_at_least COLD_REQUESTS 1
int_at_least CONCURRENCY 1

BENCH_DB=trace_proxy_bench_ui
TRACES=$((ROWS / 2))
WORKFLOWS=200
USERS=20000
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

trap stop_proxy_and_clean EXIT
admin_bench_setup

# 30 days ending now, evenly spread (~0.4 attempts/s). Traces of two attempts; the first attempt
# of every 6th trace failed and its retry succeeded, plus a few other failures. Workflows are
# skewed the way real traffic is: wf-0 carries about a sixth of it, most carry little. The last
# 30 attempts are still pending or in progress.
log "loading $ROWS rows ($TRACES traces x 2 attempts, $WORKFLOWS workflows, $USERS users, 30 days)"
load_start=$(date +%s.%N)
"${PSQL[@]}" "$DB_URL" <<EOF
INSERT INTO communication_traces (id, trace_id, attempt_number, source_service,
    destination_service, workflow_id, action, user_id, requested_at, responded_at, duration_ms,
    request_payload, response_payload, overall_status, error_code, error_detail, execution_id,
    http_method, http_target, http_status, route_name, n8n_execution_id)
SELECT gen_random_uuid(), 't' || t, a, 'bilko-app',
       CASE WHEN t % 10 = 0 THEN 'bilko-app' ELSE 'n8n' END,
       wf, 'trigger-workflow', 'user-' || (t % $USERS),
       at, CASE WHEN st IN ('success', 'failed') THEN at + make_interval(secs => d / 1000.0) END,
       CASE WHEN st IN ('success', 'failed') THEN d END,
       jsonb_build_object('order', t, 'attempt', a, 'workflow', wf,
                          'items', jsonb_build_array(jsonb_build_object('sku', 'A-' || (t % 97), 'qty', 1 + t % 4)),
                          'customer', jsonb_build_object('name', 'bench ' || t, 'tier', t % 5, 'password', '[REDACTED]')),
       CASE WHEN st = 'failed' THEN jsonb_build_object('message', 'n8n is busy')
            WHEN st = 'success' THEN jsonb_build_object('ok', true, 'executionId', t::text, 'result', repeat('r', 200)) END,
       st,
       CASE WHEN st = 'failed' THEN CASE WHEN t % 4 = 0 THEN 'TIMEOUT' WHEN t % 4 = 1 THEN 'HTTP_500' ELSE 'HTTP_503' END END,
       CASE WHEN st = 'failed' THEN 'upstream answered 503; retrying in 120 ms' END,
       CASE WHEN t % 3 = 0 THEN md5((t / 4)::text)::uuid END,
       'POST', '/webhook/' || wf, CASE WHEN st = 'failed' THEN 503 WHEN st = 'success' THEN 200 END, 'n8n',
       CASE WHEN st = 'success' THEN t::text END
FROM (
    SELECT g / 2 AS t, g % 2 + 1 AS a,
           'wf-' || floor($WORKFLOWS * power(((g / 2)::bigint * 2654435761 % 1000003) / 1000003.0, 3))::int AS wf,
           (now() AT TIME ZONE 'utc') - interval '30 days' + g * (interval '30 days' / $ROWS) AS at,
           (5 + ((g::bigint * 7919) % 997) * ((g::bigint * 31) % 7 + 1) / 3)::int AS d,
           CASE WHEN g >= $ROWS - 30 THEN (CASE WHEN g % 2 = 0 THEN 'pending' ELSE 'in_progress' END)
                WHEN (g % 2 = 0 AND (g / 2) % 6 = 0) OR g % 97 = 5 THEN 'failed'
                ELSE 'success' END AS st
    FROM generate_series(0, $ROWS - 1) g
) s;
VACUUM ANALYZE communication_traces;
EOF
load_end=$(date +%s.%N)
awk -v a="$load_start" -v b="$load_end" -v n="$ROWS" 'BEGIN { printf "loaded %d rows in %.1f s\n", n, b - a }'

"${PSQL[@]}" "$DB_URL" -At -F ' ' <<'EOF'
SELECT 'rows ' || count(*) || ', failed ' || count(*) FILTER (WHERE overall_status = 'failed')
    || ', last week ' || count(*) FILTER (WHERE requested_at >= (now() AT TIME ZONE 'utc') - interval '7 days')
    || ', wf-0 ' || count(*) FILTER (WHERE workflow_id = 'wf-0') FROM communication_traces;
SELECT 'table ' || pg_size_pretty(pg_table_size('communication_traces')) || ', all indexes ' || pg_size_pretty(pg_indexes_size('communication_traces'));
EOF

echo
echo "---- EXPLAIN ANALYZE of the overview's statements at $ROWS rows (last week; wf-0 is the busiest workflow) ----"
# The week the overview shows now: 168 hours ending at the next full hour.
UNTIL=$("${PSQL[@]}" "$DB_URL" -At -c "SELECT date_trunc('hour', now() AT TIME ZONE 'utc') + interval '1 hour'")
SINCE=$("${PSQL[@]}" "$DB_URL" -At -c "SELECT timestamp '$UNTIL' - interval '7 days'")
WEEK="requested_at >= '$SINCE' AND requested_at < '$UNTIL'"
BUCKET="floor(extract(epoch FROM requested_at - '$SINCE')::float8 / 3600)::int"
explain_query "buckets + totals" "SELECT grouping(b), b, count(*), count(*) FILTER (WHERE overall_status = 'failed'), percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms), percentile_disc(0.95) WITHIN GROUP (ORDER BY duration_ms) FROM (SELECT $BUCKET AS b, overall_status, duration_ms FROM communication_traces WHERE $WEEK) w GROUP BY GROUPING SETS ((b), ())"
explain_query "top workflows and error codes" "SELECT grouping(workflow_id), workflow_id, error_code, count(*), count(*) FILTER (WHERE overall_status = 'failed') FROM communication_traces WHERE $WEEK GROUP BY GROUPING SETS ((workflow_id), (error_code))"
explain_query "buckets + totals of wf-0" "SELECT grouping(b), b, count(*), percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms) FROM (SELECT $BUCKET AS b, duration_ms FROM communication_traces WHERE $WEEK AND workflow_id = 'wf-0') w GROUP BY GROUPING SETS ((b), ())"

start_admin_proxy

echo
echo "---- explorer pages: $REQUESTS pages per run, random ids ----"
for pattern in list list-failed trace overview-hour overview-day overview-week workflow \
    overview-day-cold overview-week-cold workflow-cold; do
    n=$REQUESTS
    [[ $pattern == *-cold ]] && n=$COLD_REQUESTS
    # Warm-up: connections, the query pool, and the pages of the indexes the pattern reads.
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" 10 2 "$TRACES" "$WORKFLOWS" "$USERS" >/dev/null
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" "$n" 1 "$TRACES" "$WORKFLOWS" "$USERS"
    "$LOAD" "$HOST:$ADMIN_PORT" "$TOKEN" "$pattern" "$n" "$CONCURRENCY" "$TRACES" "$WORKFLOWS" "$USERS"
done
