#!/usr/bin/env bash
# Memory ceiling of idle and half-sent connections: a release trace-proxy (header deadline
# HEAD_DEADLINE), CONNS connections each sending HEAD_BYTES of a request head that never ends
# (examples/idle_conns), the proxy's resident memory before, with all of them open, and after
# the deadline has closed them.
#
#   bench/idle.sh                                   # 10,000 connections, 8 KiB heads
#   CONNS=10000 HEAD_BYTES=0 bench/idle.sh          # connections that send nothing
#
# Environment (all optional): CONNS (10000), HEAD_BYTES (8192), HEAD_DEADLINE (10s),
# BENCH_PORT_BASE (28400), BENCH_DATABASE_URL (postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/idle

CONNS=${CONNS:-10000}
HEAD_BYTES=${HEAD_BYTES:-8192}
HEAD_DEADLINE=${HEAD_DEADLINE:-10s}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-28400}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=trace_proxy_bench_idle
HOST=127.0.0.1
int_at_least CONNS 1
int_at_least HEAD_BYTES 0
int_at_least BENCH_PORT_BASE 1024
require_loopback_database_url
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROXY_PORT=$BENCH_PORT_BASE
ADMIN_PORT=$((BENCH_PORT_BASE + 1))

PROXY_PID=""
TMP=$(mktemp -d)
PSQL=$(find_pg_tool psql)
trap stop_proxy_drop_db EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "cargo build --release --bin trace-proxy --example idle_conns"
(cd "$REPO" && cargo build --release --bin trace-proxy --example idle_conns >&2)
TARGET_DIR=$(cargo_target_dir)
recreate_bench_db
for port in "$PROXY_PORT" "$ADMIN_PORT"; do
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
done
start_bench_proxy "http://$HOST:9" "max_connections = $((CONNS + 100))
header_read_timeout = \"$HEAD_DEADLINE\""
wait_s=$(( $(to_ms "$HEAD_DEADLINE" | cut -d. -f1) / 1000 + 3 ))
"$TARGET_DIR/release/examples/idle_conns" "$HOST:$PROXY_PORT" "$PROXY_PID" "$CONNS" "$HEAD_BYTES" "$wait_s"
