#!/usr/bin/env bash
# Streaming through trace-proxy against direct and a plain nginx reverse proxy — with
# `proxy_buffering off` (it streams, as trace-proxy does) and with its default buffering — in one
# run, with a streaming stand-in upstream (examples/stream.rs):
#   1. a BIG_MB response downloaded through each (best of 3): MB/s, and trace-proxy's peak
#      resident memory (VmHWM) after the downloads;
#   2. one event stream of SSE_EVENTS events SSE_INTERVAL_MS apart through each: how long each
#      event takes from the upstream sending it to the client reading it (p50 / p99 / max);
#   3. STREAMS event streams open at once through each: the same delays, and trace-proxy's
#      resident memory once every stream has its first event and at the end.
# Rows go to their own database (trace_proxy_bench_stream), dropped at the end.
#
#   bench/stream.sh
#   BIG_MB=1000 STREAMS=2000 bench/stream.sh
#
# Environment (all optional):
#   BIG_MB              size of the large response in MB (10^6 bytes)      (100)
#   SSE_EVENTS          events per stream                                  (100)
#   SSE_INTERVAL_MS     milliseconds between events                        (20)
#   STREAMS             concurrent streams of step 3                       (1000)
#   STREAM_EVENTS       events per stream in step 3 (1 s apart)            (10)
#   BENCH_PORT_BASE     upstream = base, trace-proxy = +1, admin = +2, nginx = +3 (streaming)
#                       and +4 (buffering), baseline = +5 (admin +6)       (28600)
#   BASELINE_BIN        another trace-proxy binary (e.g. an earlier build), measured as target
#                       "baseline" in every step, recording into a database of its own
#   BENCH_DATABASE_URL  admin database URL    (postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/stream

BIG_MB=${BIG_MB:-100}
SSE_EVENTS=${SSE_EVENTS:-100}
SSE_INTERVAL_MS=${SSE_INTERVAL_MS:-20}
STREAMS=${STREAMS:-1000}
STREAM_EVENTS=${STREAM_EVENTS:-10}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-28600}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=trace_proxy_bench_stream
BASELINE_BIN=${BASELINE_BIN:-}
[[ -z $BASELINE_BIN || -x $BASELINE_BIN ]] || die "BASELINE_BIN '$BASELINE_BIN' is not an executable"
for v in BIG_MB SSE_EVENTS SSE_INTERVAL_MS STREAMS STREAM_EVENTS; do int_at_least "$v" 1; done
int_at_least BENCH_PORT_BASE 1024
require_loopback_database_url
HOST=127.0.0.1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UPSTREAM_PORT=$BENCH_PORT_BASE
PROXY_PORT=$((BENCH_PORT_BASE + 1))
ADMIN_PORT=$((BENCH_PORT_BASE + 2))
NGINX_PORT=$((BENCH_PORT_BASE + 3))
NGINX_BUF_PORT=$((BENCH_PORT_BASE + 4))
BASELINE_PORT=$((BENCH_PORT_BASE + 5))

PROXY_PID="" UPSTREAM_PID="" NGINX_PID="" BASELINE_PID=""
TMP=$(mktemp -d)
chmod 711 "$TMP" # nginx workers reach their temp paths below it
PSQL=$(find_pg_tool psql)
cleanup() {
    for pid in $BASELINE_PID $NGINX_PID $UPSTREAM_PID; do kill "$pid" 2>/dev/null || true; done
    [[ -n $BASELINE_PID ]] && wait "$BASELINE_PID" 2>/dev/null
    if [[ -n $BASELINE_BIN ]]; then
        "$PSQL" -X -q "$BENCH_DATABASE_URL" -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS ${BENCH_DB}_baseline WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    stop_proxy_drop_db
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

command -v nginx >/dev/null || apt_install nginx
log "cargo build --release --bin trace-proxy --example stream"
(cd "$REPO" && cargo build --release --quiet --bin trace-proxy --example stream >&2)
TARGET_DIR=$(cargo_target_dir)
STREAM=$TARGET_DIR/release/examples/stream
recreate_bench_db

for port in "$UPSTREAM_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$NGINX_PORT" "$NGINX_BUF_PORT"; do
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
done
"$STREAM" upstream "$HOST:$UPSTREAM_PORT" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_for_port "$UPSTREAM_PORT" "$UPSTREAM_PID" 10 "stream upstream" "$TMP/upstream.log"

start_private_nginx auto 8192 "
    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://$HOST:$UPSTREAM_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
    }
    server {
        listen $HOST:$NGINX_BUF_PORT;
        location / {
            proxy_pass http://$HOST:$UPSTREAM_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" "$NGINX_PORT"

start_bench_proxy "http://$HOST:$UPSTREAM_PORT" "max_connections = 100000"

declare -A PORT=([direct]=$UPSTREAM_PORT [nginx]=$NGINX_PORT [nginx-buffered]=$NGINX_BUF_PORT [trace-proxy]=$PROXY_PORT)
TARGETS="direct nginx nginx-buffered trace-proxy"

# The baseline: the same configuration on its own ports, database and journal.
if [[ -n $BASELINE_BIN ]]; then
    (BENCH_DB=${BENCH_DB}_baseline recreate_bench_db)
    PROXY_PORT=$BASELINE_PORT ADMIN_PORT=$((BENCH_PORT_BASE + 6)) BENCH_DB=${BENCH_DB}_baseline \
        start_bench_proxy "http://$HOST:$UPSTREAM_PORT" "max_connections = 100000" baseline "$BASELINE_BIN"
    BASELINE_PID=$STARTED_PID
    PORT[baseline]=$BASELINE_PORT
    TARGETS="$TARGETS baseline"
fi
BYTES=$((BIG_MB * 1000000))

echo "# 1. one ${BIG_MB} MB response (best of 3)"
declare -A MBS
for target in $TARGETS; do
    best=0
    for _ in 1 2 3; do
        read -r _ _ rate < <("$STREAM" big "http://$HOST:${PORT[$target]}/big/$BYTES")
        best=$(awk -v a="$best" -v b="$rate" 'BEGIN { print (b > a ? b : a) }')
    done
    MBS[$target]=$best
    printf '  %-15s %8.1f MB/s\n' "$target" "$best"
done
hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY_PID/status")
awk -v p="${MBS[trace-proxy]}" -v n="${MBS[nginx]}" -v b="${MBS[nginx-buffered]}" \
    'BEGIN { printf "  trace-proxy / nginx: %.2f (streaming), %.2f (buffered)\n", (n > 0 ? p / n : 0), (b > 0 ? p / b : 0) }'
echo "  trace-proxy peak resident memory so far: $hwm MB"

echo
echo "# 2. one event stream, $SSE_EVENTS events ${SSE_INTERVAL_MS} ms apart: delay upstream -> client (ms)"
printf '  %-15s %8s %8s %8s %7s\n' target p50 p99 max events
for target in $TARGETS; do
    read -r p50 p99 max n < <("$STREAM" sse "http://$HOST:${PORT[$target]}/sse/$SSE_EVENTS/$SSE_INTERVAL_MS" 1 0)
    printf '  %-15s %8s %8s %8s %7s\n' "$target" "$p50" "$p99" "$max" "$n"
done

echo
echo "# 3. $STREAMS event streams at once, $STREAM_EVENTS events 1 s apart: delay (ms)"
printf '  %-15s %8s %8s %8s %7s\n' target p50 p99 max events
for target in direct nginx ${BASELINE_BIN:+baseline}; do
    read -r p50 p99 max n < <("$STREAM" sse "http://$HOST:${PORT[$target]}/sse/$STREAM_EVENTS/1000" "$STREAMS" 0)
    printf '  %-15s %8s %8s %8s %7s\n' "$target" "$p50" "$p99" "$max" "$n"
done
idle=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status")
read -r p50 p99 max n open_kib end_kib < \
    <("$STREAM" sse "http://$HOST:$PROXY_PORT/sse/$STREAM_EVENTS/1000" "$STREAMS" "$PROXY_PID")
printf '  %-15s %8s %8s %8s %7s\n' trace-proxy "$p50" "$p99" "$max" "$n"
awk -v i="$idle" -v o="$open_kib" -v e="$end_kib" -v s="$STREAMS" 'BEGIN {
    printf "  trace-proxy resident memory: %.1f MB before, %.1f MB with every stream open, %.1f MB at the end (%.1f KiB per stream)\n",
        i / 1024, o / 1024, e / 1024, (o - i) / s }'

sleep 1
rows=$("$PSQL" -X -A -t -q "$(bench_database_url)" -c \
    "SELECT count(*) || ' rows, ' || count(*) FILTER (WHERE overall_status = 'success') || ' success' FROM communication_traces")
echo
echo "trace-proxy rows: $rows (requests: $((3 + 1 + STREAMS)))"
