#!/usr/bin/env bash
# Benchmark D5 retention: `trace-proxy retention run` archiving ROWS detail rows
# (plus a smaller run in the same invocation, to show memory stays flat).
#
#   bench/retention.sh
#   ROWS=200000 SMALL_ROWS=0 bench/retention.sh
#
# For each size it re-creates a dedicated database, generates the rows with
# generate_series (60 workflows with a skewed spread, 20000 users, 60 days
# older than the 30-day cutoff, 20% of traces with two attempts, ~6% failed,
# a few old pending/in_progress rows, small JSON payloads) plus KEEP_ROWS
# recent rows that must survive, then runs the release binary under
# /usr/bin/time -v and reports wall time and peak RSS, and checks the counts:
# rows left = KEEP_ROWS, sum(summaries.attempt_count) = sum(daily.request_count)
# = rows archived.
#
# Environment (all optional):
#   ROWS                detail rows to archive                  (1000000)
#   SMALL_ROWS          rows of the comparison run; 0 = none    (100000)
#   KEEP_ROWS           recent rows that must not be archived   (10000)
#   BATCH_SIZE          retention.batch_size                    (5000)
#   BENCH_DATABASE_URL  admin URL (loopback only)   (postgres://postgres@127.0.0.1:5432/postgres)
#   BENCH_KEEP_DB       1 = leave the bench database behind     (0)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/retention

ROWS=${ROWS:-1000000}
SMALL_ROWS=${SMALL_ROWS:-100000}
KEEP_ROWS=${KEEP_ROWS:-10000}
BATCH_SIZE=${BATCH_SIZE:-5000}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_KEEP_DB=${BENCH_KEEP_DB:-0}

BENCH_DB=trace_proxy_retention_bench
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TMP=""


cleanup() {
    local rc=$?
    if [[ $BENCH_KEEP_DB != 1 && -n ${PSQL:-} ]]; then
        "$PSQL" -X -q "$BENCH_DATABASE_URL" -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if ((rc == 0)); then
            rm -rf "$TMP"
        else
            printf 'bench/retention: failed (exit %d); files kept in %s\n' "$rc" "$TMP" >&2
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


validate_settings() {
    int_at_least ROWS 1
    int_at_least SMALL_ROWS 0
    int_at_least KEEP_ROWS 0
    int_at_least BATCH_SIZE 1
    require_loopback_database_url
}


install_time() {
    [[ -x /usr/bin/time ]] || apt_install time
}

build() {
    log "cargo build --release --bin trace-proxy"
    (cd "$REPO" && cargo build --release --bin trace-proxy) || die "cargo build failed"
    BIN=$(cargo_target_dir)/release/trace-proxy
    [[ -x $BIN ]] || die "no binary at $BIN"
}

write_config() {
    cat >"$TMP/proxy.toml" <<EOF
[database]
url = "$DB_URL"
run_migrations = true

[retention]
detail_days = 30
summary_days = 0
batch_size = $BATCH_SIZE
interval_secs = 0

[log]
level = "warn"

[[routes]]
name = "n8n"
upstream = "http://127.0.0.1:5678"
source_service = "bilko-app"
destination_service = "n8n"
EOF
}

psql_bench() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$DB_URL" "$@"; }

# $1 rows older than the cutoff; KEEP_ROWS recent ones besides.
prepare_database() {
    local rows=$1
    log "re-creating database $BENCH_DB"
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
        -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
        -c "CREATE DATABASE $BENCH_DB" >/dev/null
    "$BIN" migrate --config "$TMP/proxy.toml" >/dev/null
    log "generating $rows old + $KEEP_ROWS recent detail rows"
    local started=$SECONDS
    # Rows come in blocks of 10 = 8 traces: six with one attempt, two with
    # two attempts 30 s apart. Per-trace attributes come from hashes of the
    # trace number, so both attempts of a trace agree.
    psql_bench -v rows="$rows" -v keep="$KEEP_ROWS" -v now="'$NOW'" <<'SQL'
SET client_min_messages = warning;
CREATE TEMP TABLE spec AS SELECT * FROM (VALUES (:rows::int8, false), (:keep::int8, true)) AS s(n, recent);
INSERT INTO communication_traces (
    id, trace_id, execution_id, attempt_number, source_service, destination_service,
    workflow_id, action, user_id, requested_at, responded_at, duration_ms,
    request_payload, response_payload, overall_status, error_code, error_detail,
    n8n_execution_id, http_method, http_target, http_status, route_name,
    request_bytes, response_bytes)
SELECT gen_random_uuid(),
    CASE WHEN s.recent THEN 'recent-' ELSE 'bench-' END || t.k,
    CASE WHEN t.h1 % 3 = 0 THEN gen_random_uuid() END,
    t.attempt,
    CASE WHEN t.h2 % 100 < 85 THEN 'bilko-app' ELSE 'n8n' END,
    CASE WHEN t.h2 % 100 < 85 THEN 'n8n' ELSE 'bilko-app' END,
    'wf-' || floor(power((t.h1 % 1000) / 1000.0, 2) * 60)::int,
    (ARRAY['trigger-workflow', 'approve', 'callback', NULL])[(t.h2 % 4)::int4 + 1],
    'user-' || (t.h3 % 20000),
    r.at,
    CASE WHEN r.state IN ('pending', 'in_progress') THEN NULL
         ELSE r.at + make_interval(secs => r.ms / 1000.0) END,
    CASE WHEN r.state IN ('pending', 'in_progress') THEN NULL ELSE r.ms END,
    jsonb_build_object('orderId', t.k, 'items', t.h2 % 5 + 1, 'note', 'bench'),
    CASE WHEN r.state = 'success' THEN jsonb_build_object('ok', true, 'executionId', t.k::text) END,
    r.state,
    CASE r.code WHEN '' THEN NULL ELSE r.code END,
    CASE r.code WHEN '' THEN NULL ELSE 'bench failure' END,
    CASE WHEN r.state = 'success' THEN t.k::text END,
    'POST', '/webhook/wf-' || (t.h1 % 60),
    CASE WHEN r.state = 'success' THEN 200 WHEN r.code = 'HTTP_500' THEN 500 END,
    'n8n', 60, 40
FROM spec AS s
CROSS JOIN LATERAL generate_series(0, s.n - 1) AS i
CROSS JOIN LATERAL (
    SELECT (i / 10) * 8 + (ARRAY[0,1,2,3,4,5,6,6,7,7])[(i % 10)::int4 + 1] AS k,
           (ARRAY[1,1,1,1,1,1,1,2,1,2])[(i % 10)::int4 + 1] AS attempt
) AS a
CROSS JOIN LATERAL (
    SELECT a.k, a.attempt,
        abs(hashint8(a.k)::int8) AS h1, abs(hashint8(a.k + 7919)::int8) AS h2,
        abs(hashint8(a.k + 104729)::int8) AS h3, abs(hashint8(i + 15485863)::int8) AS hr
) AS t
CROSS JOIN LATERAL (
    SELECT
        CASE WHEN s.recent
             THEN :now::timestamp - make_interval(secs => t.h3 % (29 * 86400))
             ELSE :now::timestamp - interval '31 days' - make_interval(secs => t.h3 % (60 * 86400))
        END + make_interval(secs => (t.attempt - 1) * 30) AS at,
        (exp(ln(15.0) + (t.hr % 1000) / 1000.0 * 6.5))::int4 AS ms,
        CASE WHEN t.hr % 1000 < 937 THEN 'success'
             WHEN t.hr % 1000 < 997 THEN 'failed'
             WHEN t.hr % 1000 < 999 THEN 'pending'
             ELSE 'in_progress' END AS state,
        CASE WHEN t.hr % 1000 < 937 OR t.hr % 1000 >= 997 THEN ''
             ELSE (ARRAY['HTTP_500', 'TIMEOUT', 'CONNECTION_FAILED'])[(t.hr % 3)::int4 + 1] END AS code
) AS r;
VACUUM ANALYZE communication_traces;
SQL
    log "generated in $((SECONDS - started)) s"
}

# Prints "elapsed_s peak_rss_kb" of one measured retention pass; the pass's report goes to $2.
measure() {
    local rows=$1 report=$2
    /usr/bin/time -v "$BIN" retention run --config "$TMP/proxy.toml" --now "$NOW" \
        >"$report" 2>"$TMP/time.txt" || {
        cat "$TMP/time.txt" >&2
        die "retention run failed"
    }
    local wall rss
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$TMP/time.txt")
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TMP/time.txt")
    [[ -n $wall && -n $rss ]] || die "cannot parse /usr/bin/time output"
    # h:mm:ss or m:ss.ss -> seconds
    local secs
    secs=$(awk -v t="$wall" 'BEGIN { n = split(t, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }')
    # The counts must add up.
    local check
    check=$(psql_bench -At -F ' ' -c "SELECT (SELECT count(*) FROM communication_traces),
        (SELECT coalesce(sum(attempt_count), 0) FROM communication_trace_summaries),
        (SELECT coalesce(sum(request_count), 0) FROM communication_trace_daily),
        (SELECT count(*) FROM communication_trace_summaries),
        (SELECT count(*) FROM communication_trace_daily)")
    local left summarized daily summaries days
    read -r left summarized daily summaries days <<<"$check"
    [[ $left == "$KEEP_ROWS" ]] || die "expected $KEEP_ROWS detail rows left, found $left"
    [[ $summarized == "$rows" && $daily == "$rows" ]] ||
        die "counts do not add up: $rows archived, summaries $summarized, daily $daily"
    printf '%s %s %s %s\n' "$secs" "$rss" "$summaries" "$days"
}

main() {
    validate_settings
    TMP=$(mktemp -d)
    PSQL=$(command -v psql) || die "psql not found (install postgresql-client)"
    install_time
    build
    DB_URL=$(bench_database_url)
    NOW=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    write_config

    local sizes=()
    ((SMALL_ROWS > 0)) && sizes+=("$SMALL_ROWS")
    sizes+=("$ROWS")
    declare -A SECS RSS SUMMARIES DAYS
    local n out
    for n in "${sizes[@]}"; do
        prepare_database "$n"
        log "retention run over $n rows (batch_size $BATCH_SIZE)"
        out=$(measure "$n" "$TMP/report-$n.txt")
        local secs rss summaries days
        read -r secs rss summaries days <<<"$out"
        SECS[$n]=$secs RSS[$n]=$rss SUMMARIES[$n]=$summaries DAYS[$n]=$days
        sed 's/^/    /' "$TMP/report-$n.txt" >&2
    done

    echo
    echo "trace-proxy retention run, batch_size $BATCH_SIZE, $KEEP_ROWS recent rows kept, as of $NOW"
    printf '%-12s %10s %12s %12s %14s %12s\n' "rows" "elapsed_s" "rows/s" "peak_rss_MB" "summaries" "daily_rows"
    for n in "${sizes[@]}"; do
        printf '%-12s %10s %12s %12s %14s %12s\n' "$n" "${SECS[$n]}" \
            "$(awk -v n="$n" -v s="${SECS[$n]}" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')" \
            "$(awk -v k="${RSS[$n]}" 'BEGIN { printf "%.1f", k / 1024 }')" \
            "${SUMMARIES[$n]}" "${DAYS[$n]}"
    done
    if ((SMALL_ROWS > 0)); then
        printf 'peak RSS ratio %s rows / %s rows: %s (1.00 = flat)\n' "$ROWS" "$SMALL_ROWS" \
            "$(awk -v a="${RSS[$ROWS]}" -v b="${RSS[$SMALL_ROWS]}" 'BEGIN { printf "%.2f", a / b }')"
    fi
    echo "counts checked: detail left = $KEEP_ROWS, sum(attempt_count) = sum(request_count) = rows archived"
}

main "$@"
