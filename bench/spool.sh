#!/usr/bin/env bash
# Benchmark the durable spool (`database.on_unavailable = "spool"`, src/record/spool/) in one run:
#
#  1. Throughput with PostgreSQL reachable ("db") and unreachable ("spool": `[database] url`
#     points at a closed loopback port, so every pending row and final update goes to the
#     fsync'd journal instead), side by side, each run with its own fresh `[spool] dir`, and
#     the ratio spool / db. For the spool run it also records N, the requests wrk completed,
#     the spool gauges from /metrics just before the proxy is stopped, and the journal on disk
#     (bytes of *.journal, and its records counted frame by frame after the proxy exited).
#     Each proxy's peak resident memory (VmHWM) is reported too.
#  2. Drain: the spool-mode proxy is stopped with SIGTERM (it must exit 0), a new proxy starts
#     on the SAME spool dir with the real database URL, and the wall time from its start until
#     /metrics shows `trace_proxy_spool_records 0` with every journal record replayed (polled
#     every 50 ms) and the table holds the spool run's rows, all final, is reported with the
#     records replayed and records/s.
#
#   bench/spool.sh
#   DURATION=20 bench/spool.sh
#
# Row accounting: wrk counts only the requests it saw answered. When a wrk run stops, up to
# CONNS requests are still in flight; the proxy has already journaled their pending rows and
# finishes them (the upstream answers, or the client is gone) before it exits, so they become
# rows too. With a warm-up and a measured wrk run per proxy, the spool run's rows must lie in
# [N, N + 2 * CONNS]. Each request is two journal records (start + finish), so the journal
# must hold exactly 2 * rows records (the script fails otherwise), all of which the drain
# must replay. Rows must be unique (count(*) = count(DISTINCT id)) and all final
# (success/failed); the script fails otherwise, and when a proxy does not exit 0 on SIGTERM.
#
# Environment (all optional):
#   BENCH_DATABASE_URL  admin database URL (loopback only) (postgres://postgres@127.0.0.1:5432/postgres)
#   BENCH_PATH          request path                                  (/webhook/bench)
#   CONNS               wrk connections (wrk -t2)                     (32)
#   DURATION            seconds of each measured wrk run              (8)
#   WARMUP              seconds of the warm-up before each run        (2)
#   DRAIN_TIMEOUT       seconds the drain may take before failing     (300)
#   BENCH_KEEP_DB       1 = leave the bench database behind           (0)
#
# Everything listens on and is sent to 127.0.0.1 only, on ephemeral ports picked at the start.
# The database trace_proxy_bench_spool is dropped and re-created at the start and dropped at
# the end (unless BENCH_KEEP_DB=1, or the run failed). Logs and spool dirs live in a temp dir,
# kept on failure.
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/spool

# ---------------------------------------------------------------- settings

BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_PATH=${BENCH_PATH:-/webhook/bench}
CONNS=${CONNS:-32}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
BENCH_KEEP_DB=${BENCH_KEEP_DB:-0}

BENCH_DB=trace_proxy_bench_spool
HOST=127.0.0.1
# What to do when a port picked as free is taken when it is used.
PICKED_FREE="it was picked as free a moment ago; run again"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Results, keyed by run ("db", "spool").
declare -A RPS P50 P99 ERRS REQS SPOOLED EXIT_CODE PEAK_RSS

# PIDs of the processes this script started; cleanup stops exactly these.
UPSTREAM_PID=""
PROXY_PID=""
TMP=""
PSQL=""

# ---------------------------------------------------------------- helpers

# Stops process $1: SIGTERM, up to 10 s to exit, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    local pid
    # Only ever the PIDs we recorded ourselves.
    for pid in $PROXY_PID $UPSTREAM_PID; do
        stop_pid "$pid"
    done
    # Kept after a failure, for inspection.
    if [[ $BENCH_KEEP_DB != 1 && -n $PSQL ]] && ((rc == 0)); then
        "$PSQL" -X -q "$BENCH_DATABASE_URL" -c "SET client_min_messages = warning" \
            -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [[ -n $TMP && -d $TMP ]]; then
        if ((rc == 0)); then
            rm -rf "$TMP"
        else
            printf '%s: failed (exit %d); logs and spool dirs kept in %s, database %s kept\n' \
                "$BENCH_NAME" "$rc" "$TMP" "$BENCH_DB" >&2
        fi
    fi
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap does the cleanup.
trap 'exit 130' INT
trap 'exit 143' TERM

validate_settings() {
    int_at_least CONNS 2 # wrk -t2 needs at least 2 connections
    int_at_least DURATION 1
    int_at_least WARMUP 1
    int_at_least DRAIN_TIMEOUT 1
    require_loopback_database_url
}

# $1 distinct free loopback ports, space-separated: all bound at once (so they differ), then
# released for our processes to take.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

psql_bench() { "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 "$PROXY_DB_URL" "$@"; }

# /metrics of the admin listener on port $1 into file $2; fails when it does not answer.
fetch_metrics() { curl -fsS -m 2 -o "$2" "http://$HOST:$1/metrics" 2>/dev/null; }

# The value of metric $1 in the /metrics file $2 (empty when absent).
metric() { awk -v n="$1" '$1 == n { print $2; exit }' "$2"; }

# Bytes and number of the journal's segment files in spool dir $1.
journal_bytes() { find "$1" -maxdepth 1 -name '*.journal' -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
journal_files() { find "$1" -maxdepth 1 -name '*.journal' | wc -l; }

# "records starts finishes" of the journal in spool dir $1, read frame by frame
# (u32 LE length | u32 LE crc32 | JSON payload with "op": "start" / "finish").
journal_records() {
    python3 - "$1" <<'EOF'
import glob, json, os, struct, sys, zlib
n = starts = finishes = 0
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.journal"))):
    with open(path, "rb") as f:
        data = f.read()
    off = 0
    while off + 8 <= len(data):
        length, crc = struct.unpack_from("<II", data, off)
        payload = data[off + 8 : off + 8 + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        n += 1
        op = json.loads(payload).get("op")
        starts += op == "start"
        finishes += op == "finish"
        off += 8 + length
print(n, starts, finishes)
EOF
}

# ---------------------------------------------------------------- setup

install_tools() {
    command -v wrk >/dev/null || apt_install wrk
}

build() {
    log "cargo build --release --bin trace-proxy --example bench_upstream"
    (cd "$REPO" && cargo build --release --bin trace-proxy --example bench_upstream) || die "cargo build failed"
    TARGET_DIR=$(cargo_target_dir)
    BIN=$TARGET_DIR/release/trace-proxy
    [[ -x $BIN ]] || die "no binary at $BIN"
}

prepare_database() {
    log "re-creating database $BENCH_DB"
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
        -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
        -c "CREATE DATABASE $BENCH_DB" >/dev/null
}

# Config $TMP/$1.toml: proxy on port $2, admin (/metrics) on $3, database URL $4, spool dir
# $5, route name $6 (the route name tells the runs' rows apart in the one table).
write_config() {
    local name=$1 port=$2 admin_port=$3 db_url=$4 spool_dir=$5 route=$6
    cat >"$TMP/$name.toml" <<EOF
[server]
listen = "$HOST:$port"

[admin]
listen = "$HOST:$admin_port"

[database]
url = "$db_url"
on_unavailable = "spool"

[spool]
dir = "$spool_dir"

[[routes]]
name = "$route"
path_prefix = "/"
upstream = "http://$HOST:$UPSTREAM_PORT"
source_service = "bilko-app"
destination_service = "n8n"
EOF
}

# Starts the proxy with config $TMP/$1.toml, logging at level $2 to $TMP/$1.log; PROXY_PID.
launch_proxy() {
    local name=$1 level=$2
    RUST_LOG=$level "$BIN" serve --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    PROXY_PID=$!
}

# SIGTERM to the running proxy (run $1); it must exit 0 within the shutdown timeout.
stop_proxy() {
    local name=$1 rc=0
    # Peak resident memory of the whole run (VmHWM), in MiB.
    PEAK_RSS[$name]=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$PROXY_PID/status" 2>/dev/null || echo "?")
    log "$name: SIGTERM to the proxy (pid $PROXY_PID)"
    kill -TERM "$PROXY_PID"
    wait "$PROXY_PID" || rc=$?
    PROXY_PID=""
    EXIT_CODE[$name]=$rc
    if ((rc != 0)); then
        tail -n 30 "$TMP/$name.log" >&2 || true
        die "$name: the proxy exited $rc on SIGTERM, not 0 (log: $TMP/$name.log)"
    fi
}

# ---------------------------------------------------------------- measuring

run_wrk() {
    local out=$1 secs=$2 url=$3
    wrk -t2 -c"$CONNS" -d"${secs}s" --latency -s "$TMP/post.lua" "$url" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "wrk failed against $url"
        }
}

# Warm-up plus measured wrk run against the proxy of run $1 on port $2.
load() {
    local name=$1 port=$2
    local url="http://$HOST:$port$BENCH_PATH"
    local warm="$TMP/wrk-$name-warmup.txt" out="$TMP/wrk-$name.txt"
    log "$name: warm-up ${WARMUP}s, then ${DURATION}s, wrk -t2 -c$CONNS"
    run_wrk "$warm" "$WARMUP" "$url"
    run_wrk "$out" "$DURATION" "$url"
    RPS[$name]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    P50[$name]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99[$name]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    # Non-2xx/3xx answers plus socket errors, over both wrk runs.
    ERRS[$name]=$(awk '
        /Non-2xx or 3xx responses:/ { n += $NF }
        /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
        END { print n + 0 }' "$warm" "$out")
    REQS[$name]=$(($(wrk_requests "$warm") + $(wrk_requests "$out")))
}

# Waits (up to 5 s) until the spool gauges on admin port $1 stop moving for 0.5 s, so the
# requests in flight when wrk stopped are journaled too; leaves the last sample in $2.
settle_metrics() {
    local port=$1 file=$2 last="" now stable=0 i
    for ((i = 0; i < 50; i++)); do
        fetch_metrics "$port" "$file" || die "no /metrics on $HOST:$port"
        now="$(metric trace_proxy_spool_records "$file")/$(metric trace_proxy_spooled_total "$file")"
        if [[ $now == "$last" ]]; then
            ((++stable >= 5)) && return
        else
            stable=0
            last=$now
        fi
        sleep 0.1
    done
}

# Run "db": PostgreSQL reachable.
run_db() {
    local name=db
    write_config "$name" "$DB_PROXY_PORT" "$DB_ADMIN_PORT" "$PROXY_DB_URL" "$TMP/spool-db" bench-db
    ensure_port_free "$DB_PROXY_PORT" "$PICKED_FREE"
    ensure_port_free "$DB_ADMIN_PORT" "$PICKED_FREE"
    launch_proxy "$name" warn
    # Longer deadline: the proxy runs its migrations before it listens.
    wait_for_port "$DB_PROXY_PORT" "$PROXY_PID" 30 "$name proxy" "$TMP/$name.log"
    load "$name" "$DB_PROXY_PORT"
    settle_metrics "$DB_ADMIN_PORT" "$TMP/metrics-$name.txt"
    SPOOLED[$name]=$(metric trace_proxy_spooled_total "$TMP/metrics-$name.txt")
    stop_proxy "$name"
    DB_ROWS=$(psql_bench -c "SELECT count(*) FROM communication_traces WHERE route_name = 'bench-db'")
    DB_FINAL=$(psql_bench -c "SELECT count(*) FROM communication_traces
        WHERE route_name = 'bench-db' AND overall_status IN ('success', 'failed')")
}

# Run "spool": `[database] url` at a port nothing listens on.
run_spool() {
    local name=spool
    local dead_url="postgres://postgres@$HOST:$DEAD_DB_PORT/$BENCH_DB"
    write_config "$name" "$SPOOL_PROXY_PORT" "$SPOOL_ADMIN_PORT" "$dead_url" "$SPOOL_DIR" bench-spool
    ensure_port_free "$DEAD_DB_PORT" "$PICKED_FREE"
    ensure_port_free "$SPOOL_PROXY_PORT" "$PICKED_FREE"
    ensure_port_free "$SPOOL_ADMIN_PORT" "$PICKED_FREE"
    launch_proxy "$name" warn
    wait_for_port "$SPOOL_PROXY_PORT" "$PROXY_PID" 30 "$name proxy" "$TMP/$name.log"
    load "$name" "$SPOOL_PROXY_PORT"
    settle_metrics "$SPOOL_ADMIN_PORT" "$TMP/metrics-$name.txt"
    local m="$TMP/metrics-$name.txt"
    SPOOLED[$name]=$(metric trace_proxy_spooled_total "$m")
    GAUGE_RECORDS=$(metric trace_proxy_spool_records "$m")
    GAUGE_BYTES=$(metric trace_proxy_spool_bytes "$m")
    DISK_BYTES_LIVE=$(journal_bytes "$SPOOL_DIR")
    ((${SPOOLED[$name]:-0} > 0)) || die "spool run journaled nothing: is something listening on $HOST:$DEAD_DB_PORT?"
    stop_proxy "$name"
    DISK_BYTES=$(journal_bytes "$SPOOL_DIR")
    DISK_FILES=$(journal_files "$SPOOL_DIR")
    read -r J_RECORDS J_STARTS J_FINISHES <<<"$(journal_records "$SPOOL_DIR")"
}

# A new proxy on the spool run's dir, the real database URL: time until the journal is empty
# and the rows are in.
run_drain() {
    local name=drain m="$TMP/metrics-drain.txt"
    write_config "$name" "$DRAIN_PROXY_PORT" "$DRAIN_ADMIN_PORT" "$PROXY_DB_URL" "$SPOOL_DIR" bench-spool
    ensure_port_free "$DRAIN_PROXY_PORT" "$PICKED_FREE"
    ensure_port_free "$DRAIN_ADMIN_PORT" "$PICKED_FREE"
    log "drain: new proxy on the same spool dir ($J_RECORDS records) with the real database"
    local started=$EPOCHREALTIME finished="" records replayed counts total nonfinal
    FIRST_SAMPLE=""
    launch_proxy "$name" info
    while :; do
        kill -0 "$PROXY_PID" 2>/dev/null || {
            tail -n 30 "$TMP/$name.log" >&2 || true
            die "drain proxy exited early (log: $TMP/$name.log)"
        }
        if fetch_metrics "$DRAIN_ADMIN_PORT" "$m"; then
            records=$(metric trace_proxy_spool_records "$m")
            replayed=$(metric trace_proxy_replayed_total "$m")
            [[ -n $FIRST_SAMPLE ]] || FIRST_SAMPLE="spool_records=${records:-?} replayed_total=${replayed:-?} at +$(
                awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }')s"
            # spool_records is 0 as well before the proxy has opened the journal: done only once
            # every record found in it has been replayed.
            if [[ $records == 0 ]] && ((${replayed:-0} >= J_RECORDS)); then
                counts=$(psql_bench -F ' ' -c "SELECT count(*),
                    count(*) FILTER (WHERE overall_status NOT IN ('success', 'failed'))
                    FROM communication_traces WHERE route_name = 'bench-spool'")
                read -r total nonfinal <<<"$counts"
                if ((total > 0 && nonfinal == 0)); then
                    finished=$EPOCHREALTIME
                    break
                fi
            fi
        fi
        awk -v a="$started" -v b="$EPOCHREALTIME" -v t="$DRAIN_TIMEOUT" 'BEGIN { exit !(b - a < t) }' ||
            die "drain not done after ${DRAIN_TIMEOUT}s (last /metrics: records=${records:-?} replayed=${replayed:-?}; log: $TMP/$name.log)"
        sleep 0.05
    done
    DRAIN_SECS=$(awk -v a="$started" -v b="$finished" 'BEGIN { printf "%.3f", b - a }')
    DRAIN_REPLAYED=$replayed
    DRAIN_RATE=$(awk -v n="$replayed" -v s="$DRAIN_SECS" 'BEGIN { printf "%.0f", (s > 0 ? n / s : 0) }')
    stop_proxy "$name"
}

# The spool run's rows: unique, final, as many as wrk's requests plus those in flight.
check_rows() {
    local counts
    counts=$(psql_bench -F ' ' -c "SELECT count(*), count(DISTINCT id), count(DISTINCT trace_id),
        count(*) FILTER (WHERE overall_status IN ('success', 'failed')),
        count(*) FILTER (WHERE overall_status = 'success'),
        count(*) FILTER (WHERE error_code = 'OUTCOME_UNKNOWN')
        FROM communication_traces WHERE route_name = 'bench-spool'")
    read -r ROWS ROWS_DISTINCT TRACES_DISTINCT ROWS_FINAL ROWS_SUCCESS ROWS_UNKNOWN <<<"$counts"
    INFLIGHT_MAX=$((2 * CONNS))
    local n=${REQS[spool]}
    ((ROWS == ROWS_DISTINCT && ROWS == TRACES_DISTINCT)) ||
        die "duplicate rows: $ROWS rows, $ROWS_DISTINCT distinct ids, $TRACES_DISTINCT distinct trace ids"
    ((ROWS_FINAL == ROWS)) || die "$((ROWS - ROWS_FINAL)) of $ROWS rows are not final after the drain"
    ((ROWS >= n && ROWS <= n + INFLIGHT_MAX)) ||
        die "$ROWS rows for $n requests wrk completed: outside [$n, $((n + INFLIGHT_MAX))]"
    ((DRAIN_REPLAYED == J_RECORDS)) ||
        die "the drain replayed $DRAIN_REPLAYED records; the journal held $J_RECORDS"
}

# ---------------------------------------------------------------- report

print_results() {
    local r n=${REQS[spool]}
    echo
    echo "throughput: warm-up ${WARMUP}s + ${DURATION}s, wrk -t2 -c$CONNS, POST $BENCH_PATH; $(nproc) cores"
    printf '%-6s %10s %9s %9s %7s %10s %9s %10s %12s\n' run rps "p50 ms" "p99 ms" errors requests spooled "exit(TERM)" "peak RSS MiB"
    for r in db spool; do
        printf '%-6s %10s %9s %9s %7s %10s %9s %10s %12s\n' "$r" "${RPS[$r]}" "${P50[$r]}" "${P99[$r]}" \
            "${ERRS[$r]}" "${REQS[$r]}" "${SPOOLED[$r]:-0}" "${EXIT_CODE[$r]}" "${PEAK_RSS[$r]}"
    done
    awk -v s="${RPS[spool]}" -v d="${RPS[db]}" \
        'BEGIN { printf "spool / db rps: %.3f\n", (d > 0 ? s / d : 0) }'
    printf 'db run rows: %s (%s final) for %s requests wrk completed\n' "$DB_ROWS" "$DB_FINAL" "${REQS[db]}"
    printf 'spool run, /metrics before SIGTERM: trace_proxy_spool_records %s, trace_proxy_spool_bytes %s (*.journal on disk then: %s bytes)\n' \
        "$GAUGE_RECORDS" "$GAUGE_BYTES" "$DISK_BYTES_LIVE"
    printf 'spool run, journal after exit: %s bytes in %s *.journal files, %s records (%s start + %s finish), %s bytes/request\n' \
        "$DISK_BYTES" "$DISK_FILES" "$J_RECORDS" "$J_STARTS" "$J_FINISHES" \
        "$(awk -v b="$DISK_BYTES" -v n="$J_STARTS" 'BEGIN { printf "%.0f", (n > 0 ? b / n : 0) }')"
    echo
    echo "drain: new proxy on the spool dir, real database; wall time from its start to spool_records 0 + rows final"
    printf '%-9s %9s %10s %8s %10s %10s %8s %10s %12s\n' replayed seconds records/s rows "requests N" "rows - N" final "exit(TERM)" "peak RSS MiB"
    printf '%-9s %9s %10s %8s %10s %10s %8s %10s %12s\n' "$DRAIN_REPLAYED" "$DRAIN_SECS" "$DRAIN_RATE" "$ROWS" \
        "$n" "$((ROWS - n))" "$ROWS_FINAL" "${EXIT_CODE[drain]}" "${PEAK_RSS[drain]}"
    printf 'rows: %s success, %s failed (%s OUTCOME_UNKNOWN); %s distinct ids; rows - N must be in [0, %s] (in flight at the end of the two wrk runs)\n' \
        "$ROWS_SUCCESS" "$((ROWS_FINAL - ROWS_SUCCESS))" "$ROWS_UNKNOWN" "$ROWS_DISTINCT" "$INFLIGHT_MAX"
    printf 'first /metrics answer of the drain proxy: %s\n' "$FIRST_SAMPLE"
    # Every journaled pending row must have its final update journaled too (also when the
    # client was gone before the pending row was synced).
    if ((J_STARTS != ROWS || J_FINISHES != ROWS)); then
        die "the journal held $J_STARTS starts and $J_FINISHES finishes for $ROWS rows"
    fi
}

# ---------------------------------------------------------------- main

main() {
    validate_settings
    PROXY_DB_URL=$(bench_database_url)
    TMP=$(mktemp -d /tmp/trace-proxy-bench-spool.XXXXXX)
    PSQL=$(find_pg_tool psql)
    command -v curl >/dev/null || die "curl not found"
    command -v python3 >/dev/null || die "python3 not found"
    install_tools
    build
    prepare_database
    write_wrk_script

    read -r UPSTREAM_PORT DEAD_DB_PORT DB_PROXY_PORT DB_ADMIN_PORT SPOOL_PROXY_PORT SPOOL_ADMIN_PORT \
        DRAIN_PROXY_PORT DRAIN_ADMIN_PORT <<<"$(free_ports 8)"
    SPOOL_DIR=$TMP/spool-spool

    start_upstream "$PICKED_FREE"
    run_db
    run_spool
    run_drain
    check_rows
    print_results
}

main "$@"
