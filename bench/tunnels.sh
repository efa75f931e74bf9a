#!/usr/bin/env bash
# Memory of open WebSocket tunnels: a release trace-proxy in front of a WebSocket echo upstream
# (examples/tunnels), tunnels opened in steps, the proxy's resident memory at each step and the
# memory per tunnel above the idle proxy. Rows go to their own database, dropped at the end.
#
#   bench/tunnels.sh                  # steps 0,250,500,1000
#   STEPS=0,1000,2000 bench/tunnels.sh
#
# Environment (all optional):
#   STEPS               tunnel counts to measure at                  (0,250,500,1000)
#   BENCH_PORT_BASE     first port; upstream = base, proxy = base+1, admin = base+2  (28300)
#   BENCH_DATABASE_URL  admin database URL    (postgres://postgres@127.0.0.1:5432/postgres)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/tunnels

STEPS=${STEPS:-0,250,500,1000}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-28300}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=trace_proxy_bench_tunnels
HOST=127.0.0.1
int_at_least BENCH_PORT_BASE 1024
require_loopback_database_url
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UPSTREAM_PORT=$BENCH_PORT_BASE
PROXY_PORT=$((BENCH_PORT_BASE + 1))
ADMIN_PORT=$((BENCH_PORT_BASE + 2))

PROXY_PID=""
TMP=$(mktemp -d)
PSQL=$(find_pg_tool psql)
trap stop_proxy_drop_db EXIT

# Two file descriptors per tunnel in the proxy, two in the example.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "cargo build --release --bin trace-proxy --example tunnels"
(cd "$REPO" && cargo build --release --bin trace-proxy --example tunnels >&2)
TARGET_DIR=$(cargo_target_dir)

recreate_bench_db

for port in "$UPSTREAM_PORT" "$PROXY_PORT" "$ADMIN_PORT"; do
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
done
start_bench_proxy "http://$HOST:$UPSTREAM_PORT" "max_connections = 100000"

log "opening tunnels in steps of $STEPS"
"$TARGET_DIR/release/examples/tunnels" "$HOST:$UPSTREAM_PORT" "$HOST:$PROXY_PORT" "$PROXY_PID" "$STEPS"
