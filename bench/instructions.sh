#!/usr/bin/env bash
# CPU cost per proxied request as instructions counted by valgrind's callgrind: unlike seconds,
# the count does not move with whatever else the machine is doing, so two builds compare on a
# shared machine. Each binary runs under callgrind, recording into its own bench database; after
# a warm-up the counters are zeroed, wrk sends POSTs for DURATION seconds, the counters are
# dumped, and instructions / completed requests is printed. Rounds alternate the binaries.
#
#   bench/instructions.sh                                  # this checkout's release build
#   BASELINE_BIN=/path/to/older/trace-proxy bench/instructions.sh   # A/B against another build
#
# Environment (all optional):
#   BASELINE_BIN        another trace-proxy binary, measured alternately with this one
#   ROUNDS              measurements per binary                   (2)
#   DURATION            seconds of each measured run              (20)
#   CONNS               wrk connections                           (4)
#   BENCH_PORT_BASE     first port; upstream = base, proxies = base+1..   (28180)
#   BENCH_DATABASE_URL  admin database URL    (postgres://postgres@127.0.0.1:5432/postgres)
#   ANNOTATE            print the N functions with the most instructions of their own (self
#                       cost, callgrind_annotate) for each measured run of this build   (0)
#   WORKLOAD            post: wrk POSTs for DURATION seconds, instructions per request;
#                       sse: SSE_STREAMS event streams at once through the proxy, each of
#                       SSE_EVENTS events SSE_INTERVAL_MS apart (examples/stream.rs),
#                       instructions per event (the streams' requests and rows included:
#                       SSE_STREAMS requests against SSE_STREAMS x SSE_EVENTS events)   (post)
#   SSE_STREAMS, SSE_EVENTS, SSE_INTERVAL_MS                              (100, 50, 200)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=instructions

BASELINE_BIN=${BASELINE_BIN:-}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-20}
CONNS=${CONNS:-4}
ANNOTATE=${ANNOTATE:-0}
WORKLOAD=${WORKLOAD:-post}
SSE_STREAMS=${SSE_STREAMS:-100}
SSE_EVENTS=${SSE_EVENTS:-50}
SSE_INTERVAL_MS=${SSE_INTERVAL_MS:-200}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-28180}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=trace_proxy_bench_instructions
HOST=127.0.0.1
UPSTREAM_PORT=$BENCH_PORT_BASE
int_at_least ROUNDS 1
int_at_least DURATION 1
int_at_least CONNS 1
int_at_least ANNOTATE 0
for v in SSE_STREAMS SSE_EVENTS SSE_INTERVAL_MS; do int_at_least "$v" 1; done
case $WORKLOAD in
post) UNIT=request ;;
sse) UNIT=event ;;
*) die "WORKLOAD must be post or sse (got '$WORKLOAD')" ;;
esac
require_loopback_database_url
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

UPSTREAM_PID=""
RUNNING_PID=""
TMP=$(mktemp -d)
cleanup() {
    for pid in $RUNNING_PID $UPSTREAM_PID; do
        kill "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

command -v valgrind >/dev/null || apt_install valgrind
command -v wrk >/dev/null || apt_install wrk
log "cargo build --release --bin trace-proxy --example bench_upstream --example stream"
(cd "$REPO" && cargo build --release --bin trace-proxy --example bench_upstream --example stream >&2)
TARGET_DIR=$(cargo_target_dir)
PSQL=$(find_pg_tool psql)
log "re-creating database $BENCH_DB"
"$PSQL" -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
    -c "DROP DATABASE IF EXISTS $BENCH_DB" -c "CREATE DATABASE $BENCH_DB"
DB_URL=$(bench_database_url)
write_wrk_script
if [[ $WORKLOAD == sse ]]; then
    ensure_port_free "$UPSTREAM_PORT" "set BENCH_PORT_BASE to a free range"
    "$TARGET_DIR/release/examples/stream" upstream "$HOST:$UPSTREAM_PORT" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    wait_for_port "$UPSTREAM_PORT" "$UPSTREAM_PID" 10 "stream upstream" "$TMP/upstream.log"
else
    start_upstream "set BENCH_PORT_BASE to a free range"
fi

# The measured load against port $1, its output into file $2; prints the units it completed.
load() {
    local port=$1 out=$2
    if [[ $WORKLOAD == sse ]]; then
        "$TARGET_DIR/release/examples/stream" sse \
            "http://$HOST:$port/sse/$SSE_EVENTS/$SSE_INTERVAL_MS" "$SSE_STREAMS" 0 >"$out"
        awk '{ print $4 }' "$out" # events read
    else
        wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$TMP/post.lua" "http://$HOST:$port/webhook/bench" >"$out"
        wrk_requests "$out"
    fi
}

# Measures binary $1 as $2 on port $3; prints "<requests> <instructions>".
measure() {
    local bin=$1 name=$2 port=$3
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
    cat >"$TMP/$name.toml" <<TOML
[server]
listen = "$HOST:$port"

[database]
url = "$DB_URL"

[admin]
listen = ""

[[routes]]
name = "bench"
path_prefix = "/"
upstream = "http://$HOST:$UPSTREAM_PORT"
source_service = "bilko-app"
destination_service = "n8n"
TOML
    mkdir -p "$TMP/$name-spool"
    TRACE_PROXY_SPOOL_DIR="$TMP/$name-spool" RUST_LOG=warn valgrind --tool=callgrind \
        --callgrind-out-file="$TMP/$name.cg" "$bin" serve --config "$TMP/$name.toml" \
        >"$TMP/$name.log" 2>&1 &
    RUNNING_PID=$!
    wait_for_port "$port" "$RUNNING_PID" 120 "$name" "$TMP/$name.log"
    if [[ $WORKLOAD == sse ]]; then
        "$TARGET_DIR/release/examples/stream" sse "http://$HOST:$port/sse/5/100" 10 0 >/dev/null
    else
        wrk -t1 -c"$CONNS" -d5s -s "$TMP/post.lua" "http://$HOST:$port/webhook/bench" >/dev/null
    fi
    callgrind_control -z "$RUNNING_PID" >/dev/null
    local units
    units=$(load "$port" "$TMP/$name.load")
    callgrind_control -d "$RUNNING_PID" >/dev/null
    kill -INT "$RUNNING_PID"
    wait "$RUNNING_PID" || true
    RUNNING_PID=""
    # The dump after zeroing holds the measured run alone.
    local ir
    ir=$(awk '/^summary:/ { print $2 }' "$TMP/$name.cg.1")
    if ((ANNOTATE > 0)) && [[ $name == trace-proxy-* ]]; then
        cp "$TMP/$name.cg.1" "/tmp/instructions-$name.cg"
        log "callgrind profile kept: /tmp/instructions-$name.cg"
        # Without debug information callgrind_annotate also lists the thread entry points at
        # ~100%; those are skipped.
        callgrind_annotate --inclusive=no --threshold=100 "$TMP/$name.cg.1" 2>/dev/null |
            awk -v n="$ANNOTATE" '/file:function/ { on = 1; next }
                on && NF && !/\((99\.[0-9]+|100\.0)%\)/ && ++k <= n { print }' >&2
    fi
    echo "$units $ir"
}

declare -a NAMES=(trace-proxy) BINS=("$TARGET_DIR/release/trace-proxy")
if [[ -n $BASELINE_BIN ]]; then
    NAMES+=(baseline)
    BINS+=("$BASELINE_BIN")
fi
declare -A SUM_REQ SUM_IR
printf '%-12s %6s %10s %16s %14s\n' target round "${UNIT}s" instructions "instr/$UNIT"
port=$((BENCH_PORT_BASE + 1))
for ((round = 1; round <= ROUNDS; round++)); do
    for i in "${!NAMES[@]}"; do
        # Alternate the order every round, so neither binary always goes first.
        ((round % 2 == 0)) && i=$((${#NAMES[@]} - 1 - i))
        name=${NAMES[$i]}
        read -r req ir < <(measure "${BINS[$i]}" "$name-$round" "$port")
        port=$((port + 1))
        ((req > 0)) || die "$name completed no ${UNIT}s"
        printf '%-12s %6d %10d %16d %14d\n' "$name" "$round" "$req" "$ir" $((ir / req))
        SUM_REQ[$name]=$((${SUM_REQ[$name]:-0} + req))
        SUM_IR[$name]=$((${SUM_IR[$name]:-0} + ir))
    done
done
echo
for name in "${NAMES[@]}"; do
    printf '%-12s instructions per %s over all rounds: %d\n' "$name" "$UNIT" \
        $((SUM_IR[$name] / SUM_REQ[$name]))
done
if [[ -n $BASELINE_BIN ]]; then
    awk -v a="${SUM_IR[trace-proxy]}" -v b="${SUM_REQ[trace-proxy]}" \
        -v c="${SUM_IR[baseline]}" -v d="${SUM_REQ[baseline]}" \
        -v u="$UNIT" 'BEGIN { printf "trace-proxy / baseline instructions per %s: %.3f\n", u, (a / b) / (c / d) }'
fi
