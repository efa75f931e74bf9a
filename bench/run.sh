#!/usr/bin/env bash
# Benchmark trace-proxy against a direct upstream and a plain nginx reverse
# proxy, all on loopback, in one run.
#
#   bench/run.sh                                   # all three targets
#   BENCH_TARGETS="direct nginx" bench/run.sh      # without trace-proxy
#
# Environment (all optional):
#   BENCH_TARGETS       targets to load, in order   (direct nginx trace-proxy spooled)
#                       spooled: this build with PostgreSQL unreachable (a closed
#                       port), so every row goes to the spool journal
#                       replicas: three processes of this build on one database of their
#                       own (trace_proxy_bench_replicas); wrk -t3 sends each thread's
#                       connections to one replica, and every thread sends the same
#                       sequence of X-Trace-Id values, so each trace gets an attempt through
#                       every replica, the three close together (throughput run only; the
#                       report checks attempt numbering per trace)
#   BENCH_PORT_BASE     trace-proxy port; upstream = +1, nginx = +2, baseline = +3,
#                       spooled = +4, replicas = +5..+7   (18080)
#   BENCH_DATABASE_URL  admin database URL    (postgres://postgres@127.0.0.1:5432/postgres)
#   BENCH_PATH          request path                              (/webhook/bench)
#   CONNS               connections of the throughput run         (32)
#   DURATION            seconds of each measured run              (10)
#   WARMUP              seconds of the warm-up before each run    (2)
#   NGINX_WORKERS       nginx worker_processes                    (auto)
#   FLOOR_BATCH         rows per statement of the PostgreSQL floor (see below)   (16)
#   PROXY_DATABASE      more [database] settings for the trace-proxy target, e.g.
#                       "writer_tasks = 4"
#   PROXY_PG_SETTINGS   PostgreSQL settings for the trace-proxy target's database only, as
#                       name=value words, e.g. "commit_delay=100 commit_siblings=1" (applied
#                       with ALTER DATABASE, so only settings a session may take: with
#                       BASELINE_BIN set to this same build, the two run side by side with
#                       and without them)
#   BASELINE_BIN        another trace-proxy binary (e.g. an earlier build) to
#                       measure side by side as target "baseline", on port
#                       BENCH_PORT_BASE + 3, recording into a database of its own
#                       (trace_proxy_bench_baseline, migrated by that build, so
#                       schemas can differ); adds "baseline" to BENCH_TARGETS
#                       (last, unless listed)
#
# Besides rps and latency, each throughput run reports what a request cost: CPU
# time per request of each process group (the target — trace-proxy or nginx —,
# PostgreSQL's server processes, the upstream, wrk), how busy the machine was,
# and the WAL PostgreSQL wrote per request.
#
# The floor: what PostgreSQL alone does with the proxy's write pattern, measured by pgbench
# after the targets (-c2, the writer's two tasks, DURATION seconds): each transaction is one
# statement inserting FLOOR_BATCH pending rows, numbered as the writer numbers them, and
# finishing (by id) the FLOOR_BATCH its client inserted with the statement before, in a copy
# of communication_traces with the same indexes.
# Printed as requests/s (statements/s x FLOOR_BATCH) and PostgreSQL CPU per request.
#
# Everything listens on and is sent to 127.0.0.1 only. The bench databases
# (trace_proxy_bench, trace_proxy_bench_baseline) are dropped and re-created at
# the start and left behind for inspection.
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench

# ---------------------------------------------------------------- settings

BENCH_TARGETS=${BENCH_TARGETS:-direct nginx trace-proxy spooled}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-18080}
BENCH_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_PATH=${BENCH_PATH:-/webhook/bench}
CONNS=${CONNS:-32}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
FLOOR_BATCH=${FLOOR_BATCH:-16}
BASELINE_BIN=${BASELINE_BIN:-}
# Measured after the others unless BENCH_TARGETS places "baseline" itself.
if [[ -n $BASELINE_BIN && " $BENCH_TARGETS " != *" baseline "* ]]; then
    BENCH_TARGETS="$BENCH_TARGETS baseline"
fi

BENCH_DB=trace_proxy_bench
HOST=127.0.0.1
PROXY_PORT=$BENCH_PORT_BASE
UPSTREAM_PORT=$((BENCH_PORT_BASE + 1))
NGINX_PORT=$((BENCH_PORT_BASE + 2))
BASELINE_PORT=$((BENCH_PORT_BASE + 3))
SPOOLED_PORT=$((BENCH_PORT_BASE + 4))
REPLICA_PORTS=("$((BENCH_PORT_BASE + 5))" "$((BENCH_PORT_BASE + 6))" "$((BENCH_PORT_BASE + 7))")

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# Results, keyed "<target>/<mode>" with mode "tput" or "c1".
declare -A RPS P50 P99 ERRS CPU_US PG_US UP_US WRK_US BUSY WAL_B
PROXY_REQUESTS_SENT=0

# PIDs of the processes this script started; cleanup kills exactly these.
UPSTREAM_PID=""
NGINX_PID=""
PROXY_PID=""
BASELINE_PID=""
SPOOLED_PID=""
REPLICA_PIDS=()
STARTED_PID=""
TMP=""

# ---------------------------------------------------------------- helpers

has_target() { [[ " $BENCH_TARGETS " == *" $1 "* ]]; }

cleanup() {
    local rc=$?
    local pid
    # Only ever the PIDs we recorded ourselves: other nginx or postgres
    # instances on this machine are none of our business.
    for pid in "${REPLICA_PIDS[@]}" $SPOOLED_PID $BASELINE_PID $PROXY_PID $NGINX_PID $UPSTREAM_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${REPLICA_PIDS[@]}" $SPOOLED_PID $BASELINE_PID $PROXY_PID $NGINX_PID $UPSTREAM_PID; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if ((rc == 0)); then
            rm -rf "$TMP"
        else
            printf 'bench: failed (exit %d); logs kept in %s\n' "$rc" "$TMP" >&2
        fi
    fi
}
trap cleanup EXIT
# Turn signals into a normal exit so the EXIT trap does the cleanup.
trap 'exit 130' INT
trap 'exit 143' TERM

validate_settings() {
    local t
    for t in $BENCH_TARGETS; do
        case $t in
        direct | nginx | trace-proxy | baseline | spooled | replicas) ;;
        *) die "unknown target '$t' in BENCH_TARGETS (known: direct nginx trace-proxy spooled replicas)" ;;
        esac
    done
    int_at_least CONNS 3 # wrk -t2 (and -t3 for the replicas) needs as many connections
    int_at_least DURATION 1
    int_at_least WARMUP 1
    int_at_least FLOOR_BATCH 1
    int_at_least BENCH_PORT_BASE 1
    ((BENCH_PORT_BASE < 65528)) || die "BENCH_PORT_BASE must leave room for seven more ports"
    if [[ -n $BASELINE_BIN ]]; then
        [[ -x $BASELINE_BIN ]] || die "BASELINE_BIN '$BASELINE_BIN' is not an executable"
        has_target trace-proxy || die "BASELINE_BIN needs the trace-proxy target (it migrates the database)"
    fi
    if [[ -n ${PROXY_PG_SETTINGS:-} ]]; then
        has_target trace-proxy || die "PROXY_PG_SETTINGS needs the trace-proxy target"
        local kv
        for kv in $PROXY_PG_SETTINGS; do
            [[ $kv =~ ^[a-z_]+=[A-Za-z0-9_.]+$ ]] || die "PROXY_PG_SETTINGS: '$kv' is not name=value"
        done
    fi
    require_loopback_database_url
}

# ---------------------------------------------------------------- setup

install_tools() {
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    if has_target nginx; then command -v nginx >/dev/null || missing+=(nginx); fi
    ((${#missing[@]} == 0)) && return
    # Remember whether a system nginx was already running, so we only stop
    # one that the package's postinst started just now.
    local had_nginx=0
    [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null && had_nginx=1
    apt_install "${missing[@]}"
    if ((had_nginx == 0)) && [[ -s /run/nginx.pid ]]; then
        local pid
        pid=$(cat /run/nginx.pid)
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping the nginx the package auto-started (pid $pid)"
            kill -QUIT "$pid" 2>/dev/null || true
        fi
    fi
}

build() {
    TARGET_DIR=$(cargo_target_dir)

    local args=(--example bench_upstream)
    # Only build the proxy when we are going to load it, so the other
    # targets can be measured while the proxy does not compile.
    { has_target trace-proxy || has_target spooled || has_target replicas; } &&
        args=(--bin trace-proxy "${args[@]}")
    log "cargo build --release ${args[*]}"
    (cd "$REPO" && cargo build --release "${args[@]}") && return
    has_target trace-proxy && die "cargo build failed"

    # Cargo links every example against the crate's library, so a library
    # that does not compile (work in progress in src/) breaks the upstream's
    # build although the upstream uses none of it. Without trace-proxy in
    # the run, an upstream binary built from the current example source
    # measures exactly the same thing.
    local bin="$TARGET_DIR/release/examples/bench_upstream"
    if [[ -x $bin && $bin -nt $REPO/examples/bench_upstream.rs ]]; then
        log "WARNING: cargo build failed (library in src/ does not compile);"
        log "WARNING: using the existing $bin, built after the last change to examples/bench_upstream.rs"
        return
    fi
    die "cargo build failed and there is no up-to-date bench_upstream binary to fall back on"
}

prepare_database() {
    log "re-creating database $BENCH_DB${BASELINE_BIN:+ and ${BENCH_DB}_baseline}"
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
        -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" \
        -c "DROP DATABASE IF EXISTS ${BENCH_DB}_baseline WITH (FORCE)" \
        -c "DROP DATABASE IF EXISTS ${BENCH_DB}_replicas WITH (FORCE)" \
        -c "CREATE DATABASE $BENCH_DB" >/dev/null
    if [[ -n $BASELINE_BIN ]]; then
        "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" -c "CREATE DATABASE ${BENCH_DB}_baseline" >/dev/null
    fi
    if has_target replicas; then
        "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" -c "CREATE DATABASE ${BENCH_DB}_replicas" >/dev/null
    fi
    local kv
    for kv in ${PROXY_PG_SETTINGS:-}; do
        "$PSQL" -X -q -v ON_ERROR_STOP=1 "$BENCH_DATABASE_URL" \
            -c "ALTER DATABASE $BENCH_DB SET ${kv%%=*} = '${kv#*=}'" >/dev/null
    done
    # Table for the one-commit measurement; the proxy creates its own tables.
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$PROXY_DB_URL" -c "CREATE TABLE bench_commit(v int)" >/dev/null
}

# nginx as a plain reverse proxy with keep-alive to the upstream (start_private_nginx).
start_nginx() {
    ensure_port_free "$NGINX_PORT" "set BENCH_PORT_BASE to a free range"
    start_private_nginx "$NGINX_WORKERS" 4096 "
    upstream bench_upstream {
        server $HOST:$UPSTREAM_PORT;
        keepalive 64;
    }
    server {
        listen $HOST:$NGINX_PORT;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }" "$NGINX_PORT"
}

# Starts trace-proxy binary $1 as target $2 on port $3, recording into database URL $4 ($5: more
# [database] settings); its PID is left in STARTED_PID.
start_one_proxy() {
    local bin=$1 name=$2 port=$3 db_url=$4 db_extra=${5:-}
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
    cat >"$TMP/$name.toml" <<EOF
[server]
listen = "$HOST:$port"

[database]
url = "$db_url"
$db_extra

# Off: several proxies run at once here, and the default admin port is shared.
[admin]
listen = ""

[[routes]]
name = "bench"
path_prefix = "/"
upstream = "http://$HOST:$UPSTREAM_PORT"
source_service = "bilko-app"
destination_service = "n8n"
EOF
    # The spool journal (used only while PostgreSQL is unavailable) in the temp dir; set through
    # the environment, which builds without a spool ignore.
    mkdir -p "$TMP/$name-spool"
    TRACE_PROXY_SPOOL_DIR="$TMP/$name-spool" RUST_LOG=warn "$bin" serve --config "$TMP/$name.toml" \
        >"$TMP/$name.log" 2>&1 &
    STARTED_PID=$!
    # Longer deadline: the proxy runs its migrations before it listens.
    wait_for_port "$port" "$STARTED_PID" 30 "$name" "$TMP/$name.log"
}

start_proxy() {
    start_one_proxy "$TARGET_DIR/release/trace-proxy" trace-proxy "$PROXY_PORT" "$PROXY_DB_URL" "${PROXY_DATABASE:-}"
    PROXY_PID=$STARTED_PID
    # The baseline migrates a database of its own: its schema is the one its build made.
    if [[ -n $BASELINE_BIN ]]; then
        start_one_proxy "$BASELINE_BIN" baseline "$BASELINE_PORT" "$BASELINE_DB_URL"
        BASELINE_PID=$STARTED_PID
    fi
}

# This build with PostgreSQL unreachable: a closed port, so every pending row and final update
# goes to the spool journal (on_unavailable = "spool", the default).
start_spooled() {
    start_one_proxy "$TARGET_DIR/release/trace-proxy" spooled "$SPOOLED_PORT" \
        "postgres://postgres@$HOST:1/unreachable" 'connect_timeout = "200ms"'
    SPOOLED_PID=$STARTED_PID
}

# Three processes of this build on one database; the first migrates it before the others start.
start_replicas() {
    local i
    for i in 0 1 2; do
        start_one_proxy "$TARGET_DIR/release/trace-proxy" "replica$((i + 1))" "${REPLICA_PORTS[$i]}" \
            "$REPLICAS_DB_URL"
        REPLICA_PIDS+=("$STARTED_PID")
    done
}

# The replicas' wrk script: the POST of write_wrk_script ($TMP/post.lua, written first), thread i
# sending to replica i, and every thread sending the same sequence of trace ids (a prefix made once
# per wrk run, then a counter), so each trace gets one attempt through each replica, close together.
write_replicas_script() {
    cp "$TMP/post.lua" "$TMP/replicas.lua"
    cat >>"$TMP/replicas.lua" <<EOF
local ports = { "${REPLICA_PORTS[0]}", "${REPLICA_PORTS[1]}", "${REPLICA_PORTS[2]}" }
local threads = 0
-- Made in the main state and handed to every thread (each thread runs this file too).
local run_id = string.format("%d-%d", os.time(), math.floor(os.clock() * 1e6))
function setup(thread)
    threads = threads + 1
    thread.addr = wrk.lookup("$HOST", ports[(threads - 1) % #ports + 1])[1]
    thread:set("trace_run", run_id)
end
local n = 0
function request()
    n = n + 1
    wrk.headers["X-Trace-Id"] = "bench-" .. trace_run .. "-" .. n
    return wrk.format()
end
EOF
}

# ---------------------------------------------------------------- measuring

target_port() {
    case $1 in
    direct) echo "$UPSTREAM_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    trace-proxy) echo "$PROXY_PORT" ;;
    baseline) echo "$BASELINE_PORT" ;;
    spooled) echo "$SPOOLED_PORT" ;;
    replicas) echo "${REPLICA_PORTS[0]}" ;; # the wrk script gives each thread its replica
    esac
}

# Number of requests wrk completed, from "N requests in 10.00s, ...".

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# The PIDs serving a target (nginx: its master and workers), for targets whose CPU use is
# reported.
target_pid() {
    case $1 in
    trace-proxy) echo "$PROXY_PID" ;;
    baseline) echo "$BASELINE_PID" ;;
    spooled) echo "$SPOOLED_PID" ;;
    replicas) echo "${REPLICA_PIDS[*]}" ;;
    nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
    esac
}

# CPU ticks of the processes $@ (user + system, plus what their exited children used: the
# PostgreSQL postmaster accounts for backends that came and went).
group_ticks() {
    local pid sum=0
    for pid in "$@"; do
        sum=$((sum + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$sum"
}

# "busy total" jiffies of the whole machine (busy = all but idle and iowait).
machine_jiffies() {
    awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

wal_lsn() { "$PSQL" -X -A -t -q "$BENCH_DATABASE_URL" -c "SELECT pg_current_wal_lsn()"; }

# The wrk script for target $1.
wrk_script() {
    if [[ $1 == replicas ]]; then echo "$TMP/replicas.lua"; else echo "$TMP/post.lua"; fi
}

# One wrk invocation of target $6; the output goes to the file $1.
run_wrk() {
    local out=$1 threads=$2 conns=$3 secs=$4 url=$5 target=$6
    wrk -t"$threads" -c"$conns" -d"${secs}s" --latency -s "$(wrk_script "$target")" "$url" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "wrk failed against $url"
        }
}

# Warm-up plus measured run of one target in one mode; records the results.
measure() {
    local target=$1 mode=$2 threads=$3 conns=$4
    local url
    url="http://$HOST:$(target_port "$target")$BENCH_PATH"
    local warm="$TMP/wrk-$target-$mode-warmup.txt" out="$TMP/wrk-$target-$mode.txt"

    log "$target: warm-up ${WARMUP}s, then ${DURATION}s with $conns connection(s)"
    run_wrk "$warm" "$threads" "$conns" "$WARMUP" "$url" "$target"
    # The proxy's own CPU per request is steadier than throughput, which the database's
    # background work (checkpoints, autovacuum) moves from run to run.
    local pids before="" pg_pids pg_before up_before wal_before busy_before total_before
    pids=$(target_pid "$target")
    # shellcheck disable=SC2086 # one PID per word
    [[ -n $pids ]] && before=$(group_ticks $pids)
    pg_pids=$(pgrep -x postgres | tr '\n' ' ')
    # shellcheck disable=SC2086
    pg_before=$(group_ticks $pg_pids)
    up_before=$(group_ticks "$UPSTREAM_PID")
    wal_before=$(wal_lsn)
    read -r busy_before total_before < <(machine_jiffies)
    /usr/bin/time -f '%U %S' -o "$TMP/wrk-time.txt" \
        wrk -t"$threads" -c"$conns" -d"${DURATION}s" --latency -s "$(wrk_script "$target")" "$url" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "wrk failed against $url"
        }
    local busy_after total_after n hz key="$target/$mode"
    read -r busy_after total_after < <(machine_jiffies)
    n=$(wrk_requests "$out")
    hz=$(getconf CLK_TCK)
    per_request() { awk -v d="$1" -v hz="$hz" -v n="$n" 'BEGIN { printf "%.1f", (n > 0 ? d / hz * 1e6 / n : 0) }'; }
    # shellcheck disable=SC2086
    [[ -n $before ]] && CPU_US[$key]=$(per_request $(($(group_ticks $pids) - before)))
    # shellcheck disable=SC2086
    PG_US[$key]=$(per_request $(($(group_ticks $pg_pids) - pg_before)))
    UP_US[$key]=$(per_request $(($(group_ticks "$UPSTREAM_PID") - up_before)))
    WRK_US[$key]=$(awk -v n="$n" '{ printf "%.1f", (n > 0 ? ($1 + $2) * 1e6 / n : 0) }' "$TMP/wrk-time.txt")
    BUSY[$key]=$(awk -v b=$((busy_after - busy_before)) -v t=$((total_after - total_before)) \
        'BEGIN { printf "%.0f", (t > 0 ? 100 * b / t : 0) }')
    WAL_B[$key]=$("$PSQL" -X -A -t -q "$BENCH_DATABASE_URL" -c \
        "SELECT round(pg_wal_lsn_diff('$(wal_lsn)', '$wal_before') / greatest($n, 1))")

    RPS[$key]=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    P50[$key]=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99[$key]=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    # Failed requests count as throughput in wrk's Requests/sec, so show
    # them next to it: non-2xx/3xx answers plus socket errors.
    ERRS[$key]=$(awk '
        /Non-2xx or 3xx responses:/ { n += $NF }
        /Socket errors:/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 }
        END { print n + 0 }' "$out")

    if [[ $target == trace-proxy || $target == baseline || $target == replicas ]]; then
        PROXY_REQUESTS_SENT=$((PROXY_REQUESTS_SENT + $(wrk_requests "$warm") + $(wrk_requests "$out")))
    fi
}

# Average latency of a single-row INSERT committed on its own: the floor for
# a proxy that commits one row per request synchronously.
# Average latency (ms) of pgbench running the one-statement script $1, 1 client, 5 s.
pgbench_ms() {
    local script=$1 out="$TMP/pgbench.txt"
    "$PGBENCH" -n -c1 -T5 -f "$script" "$PROXY_DB_URL" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "pgbench failed"
        }
    awk -F' = ' '/^latency average/ { split($2, a, " "); print a[1] }' "$out"
}

measure_commit() {
    echo 'INSERT INTO bench_commit(v) VALUES (1);' >"$TMP/commit.sql"
    log "pgbench: one INSERT per transaction, 1 client, 5 s"
    COMMIT_MS=$(pgbench_ms "$TMP/commit.sql")
    has_target trace-proxy || return 0
    # What D1 itself must commit: one row into a copy of communication_traces with the same
    # columns, defaults and six indexes (a copy, so the row counts below stay exact).
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$PROXY_DB_URL" \
        -c "CREATE TABLE d1_commit (LIKE communication_traces INCLUDING ALL)" >/dev/null
    cat >"$TMP/d1.sql" <<'SQL'
INSERT INTO d1_commit (id, trace_id, attempt_number, source_service, destination_service, workflow_id, user_id, requested_at, request_payload, http_method, http_target, route_name)
VALUES (gen_random_uuid(), md5(random()::text), 1, 'bilko-app', 'n8n', 'bench', 'bench-user', now()::timestamp, '{"workflow":"bench","n":1}', 'POST', '/webhook/bench', 'bench');
SQL
    log "pgbench: one D1-shaped row per transaction, 1 client, 5 s"
    D1_COMMIT_MS=$(pgbench_ms "$TMP/d1.sql")
}

# Prints the count over the proxies' databases, or "n/a" when a proxy's table is not there
# (yet).
count_rows() {
    local url n sum=0
    local urls=()
    has_target trace-proxy && urls+=("$PROXY_DB_URL")
    [[ -n $BASELINE_BIN ]] && urls+=("$BASELINE_DB_URL")
    has_target replicas && urls+=("$REPLICAS_DB_URL")
    for url in "${urls[@]}"; do
        n=$("$PSQL" -X -A -t -q "$url" -c "$1" 2>/dev/null) || n=""
        [[ $n =~ ^[0-9]+$ ]] || {
            echo n/a
            return
        }
        sum=$((sum + n))
    done
    echo "$sum"
}

# The proxy may write its rows asynchronously: wait (up to 10 s) until every
# request has a final row, or until the counts stop moving for 2 s.
settle_rows() {
    local deadline=$((SECONDS + 10)) last="" stable_since=$SECONDS now
    while :; do
        ROWS_WRITTEN=$(count_rows "select count(*) from communication_traces")
        ROWS_FINAL=$(count_rows "select count(*) from communication_traces where overall_status in ('success','failed')")
        now="$ROWS_WRITTEN/$ROWS_FINAL"
        [[ $ROWS_FINAL =~ ^[0-9]+$ ]] && ((ROWS_FINAL >= PROXY_REQUESTS_SENT)) && return
        if [[ $now != "$last" ]]; then
            last=$now
            stable_since=$SECONDS
        elif ((SECONDS - stable_since >= 2)); then
            return
        fi
        ((SECONDS < deadline)) || return
        sleep 0.5
    done
}

# ---------------------------------------------------------------- report

print_table() {
    local t mode conns key
    printf '\n%-12s %6s %12s %10s %10s %8s %12s\n' target conns rps "p50 ms" "p99 ms" errors "target cpu/req"
    for mode in tput c1; do
        for t in $BENCH_TARGETS; do
            key="$t/$mode"
            conns=1
            [[ $mode == tput ]] && conns=$CONNS
            printf '%-12s %6s %12s %10s %10s %8s %12s\n' "$t" "$conns" \
                "${RPS[$key]:-n/a}" "${P50[$key]:-n/a}" "${P99[$key]:-n/a}" "${ERRS[$key]:-n/a}" \
                "${CPU_US[$key]:+${CPU_US[$key]} us}"
        done
    done
    echo
    printf 'cost per request at %s connections (CPU time in microseconds):\n' "$CONNS"
    printf '%-12s %10s %12s %10s %10s %8s %12s\n' target target postgresql upstream wrk busy "WAL bytes"
    for t in $BENCH_TARGETS; do
        key="$t/tput"
        printf '%-12s %10s %12s %10s %10s %7s%% %12s\n' "$t" "${CPU_US[$key]:-}" \
            "${PG_US[$key]:-n/a}" "${UP_US[$key]:-n/a}" "${WRK_US[$key]:-n/a}" "${BUSY[$key]:-n/a}" "${WAL_B[$key]:-n/a}"
    done
    echo
}

# The PostgreSQL floor (see the header): sets FLOOR_RPS and FLOOR_PG_US.
measure_floor() {
    has_target trace-proxy || return 0
    "$PSQL" -X -q -v ON_ERROR_STOP=1 "$PROXY_DB_URL" \
        -c "CREATE TABLE floor_traces (LIKE communication_traces INCLUDING ALL)" >/dev/null
    cat >"$TMP/floor.sql" <<SQL
WITH fin AS (
    UPDATE floor_traces t SET responded_at = now()::timestamp, duration_ms = 3,
        response_payload = '{"ok":true,"executionId":"bench-1"}', overall_status = 'success',
        http_status = 200, request_bytes = 26, response_bytes = 35
    FROM unnest(':ids'::uuid[]) AS u(id) WHERE t.id = u.id RETURNING 1
), u AS (
    SELECT gen_random_uuid() AS id, md5(random()::text) AS trace_id, g AS ord
    FROM generate_series(1, $FLOOR_BATCH) g
), ins AS (
    INSERT INTO floor_traces (id, trace_id, attempt_number, source_service, destination_service,
        workflow_id, user_id, requested_at, request_payload, http_method, http_target,
        route_name, proxy_instance)
    SELECT u.id, u.trace_id,
        (COALESCE((SELECT max(c.attempt_number) FROM floor_traces c WHERE c.trace_id = u.trace_id), 0)
         + row_number() OVER (PARTITION BY u.trace_id ORDER BY u.ord))::int4,
        'bilko-app', 'n8n', 'bench', 'bench-user', now()::timestamp,
        '{"workflow":"bench","n":1}', 'POST', '$BENCH_PATH', 'bench', gen_random_uuid()
    FROM u
    ON CONFLICT DO NOTHING RETURNING id
)
SELECT array_agg(id)::text AS ids, (SELECT count(*) FROM fin) AS finished FROM ins
\gset
SQL
    log "PostgreSQL floor: pgbench -c2, $FLOOR_BATCH rows inserted and finished per statement, ${DURATION}s"
    local pg_pids pg_before out="$TMP/floor.txt"
    pg_pids=$(pgrep -x postgres | tr '\n' ' ')
    # shellcheck disable=SC2086 # one PID per word
    pg_before=$(group_ticks $pg_pids)
    # Each statement finishes the rows its client inserted with the one before (by id, as the
    # writer does): pgbench keeps the ids in a client variable.
    "$PGBENCH" -n -c2 -T"$DURATION" -D ids='{}' -f "$TMP/floor.sql" "$PROXY_DB_URL" >"$out" 2>&1 ||
        {
            cat "$out" >&2
            die "pgbench (floor) failed"
        }
    local tps
    tps=$(awk '/^tps = / { print $3; exit }' "$out")
    FLOOR_RPS=$(awk -v t="$tps" -v b="$FLOOR_BATCH" 'BEGIN { printf "%.0f", t * b }')
    # shellcheck disable=SC2086
    FLOOR_PG_US=$(awk -v d=$(($(group_ticks $pg_pids) - pg_before)) -v hz="$(getconf CLK_TCK)" \
        -v n="$(awk -v t="$tps" -v b="$FLOOR_BATCH" -v s="$DURATION" 'BEGIN { print t * b * s }')" \
        'BEGIN { printf "%.1f", (n > 0 ? d / hz * 1e6 / n : 0) }')
}

print_comparisons() {
    if [[ -n ${FLOOR_RPS:-} ]]; then
        printf 'PostgreSQL floor (pgbench, %s rows inserted + finished per statement, 2 clients): %s requests/s, %s us PostgreSQL CPU per request\n' \
            "$FLOOR_BATCH" "$FLOOR_RPS" "$FLOOR_PG_US"
        [[ -n ${RPS[trace-proxy/tput]:-} ]] && awk -v p="${RPS[trace-proxy/tput]}" -v f="$FLOOR_RPS" \
            'BEGIN { printf "trace-proxy / PostgreSQL floor rps: %.3f\n", (f > 0 ? p / f : 0) }'
    fi
    if [[ -n ${RPS[trace-proxy/tput]:-} && -n ${RPS[nginx/tput]:-} ]]; then
        awk -v p="${RPS[trace-proxy/tput]}" -v n="${RPS[nginx/tput]}" -v c="$CONNS" \
            'BEGIN { printf "trace-proxy / nginx rps (%s conns): %.3f\n", c, (n > 0 ? p / n : 0) }'
    else
        echo "trace-proxy / nginx rps: n/a (needs both targets)"
    fi
    if [[ -n ${P50[trace-proxy/c1]:-} && -n ${P50[direct/c1]:-} ]]; then
        awk -v p="${P50[trace-proxy/c1]}" -v d="${P50[direct/c1]}" \
            'BEGIN { printf "trace-proxy p50 - direct p50 (1 conn): %+.3f ms\n", p - d }'
    else
        echo "trace-proxy p50 - direct p50 (1 conn): n/a (needs both targets)"
    fi
    if [[ -n ${RPS[replicas/tput]:-} && -n ${RPS[trace-proxy/tput]:-} ]]; then
        awk -v r="${RPS[replicas/tput]}" -v p="${RPS[trace-proxy/tput]}" -v c="$CONNS" \
            'BEGIN { printf "replicas / trace-proxy rps (%s conns): %.3f\n", c, (p > 0 ? r / p : 0) }'
    fi
    if [[ -n ${RPS[spooled/tput]:-} && -n ${RPS[nginx/tput]:-} ]]; then
        awk -v p="${RPS[spooled/tput]}" -v n="${RPS[nginx/tput]}" -v c="$CONNS" \
            'BEGIN { printf "spooled / nginx rps (%s conns): %.3f\n", c, (n > 0 ? p / n : 0) }'
    fi
    if [[ -n ${RPS[baseline/tput]:-} && -n ${RPS[trace-proxy/tput]:-} ]]; then
        awk -v p="${RPS[trace-proxy/tput]}" -v b="${RPS[baseline/tput]}" -v c="$CONNS" \
            'BEGIN { printf "trace-proxy / baseline rps (%s conns): %.3f\n", c, (b > 0 ? p / b : 0) }'
        awk -v p="${P50[trace-proxy/c1]}" -v b="${P50[baseline/c1]}" \
            'BEGIN { printf "trace-proxy p50 - baseline p50 (1 conn): %+.3f ms\n", p - b }'
    fi
    printf 'one commit (pgbench, 1 client, avg): %s ms\n' "$COMMIT_MS"
    printf 'one D1-shaped commit (pgbench, 1 row into a copy of communication_traces, avg): %s ms\n' "$D1_COMMIT_MS"
}

print_rows() {
    if ! has_target trace-proxy && ! has_target replicas; then
        echo "requests sent / rows written: n/a (neither trace-proxy nor replicas in BENCH_TARGETS)"
        return
    fi
    log "waiting up to 10 s for the trace rows to settle"
    settle_rows
    printf 'requests sent:  %s   (completed by wrk, warm-ups included; up to %s in flight at each run end are not counted)\n' \
        "$PROXY_REQUESTS_SENT" "$CONNS"
    printf 'rows written:   %s\n' "$ROWS_WRITTEN"
    printf 'rows final:     %s   (overall_status success/failed)\n' "$ROWS_FINAL"
    has_target replicas && print_replica_numbering
    return 0
}

# How the replicas numbered the attempts of the traces they shared: per trace, the attempt
# numbers must be 1..n, each once, whichever replica took which.
print_replica_numbering() {
    "$PSQL" -X -A -t -q -F ' ' "$REPLICAS_DB_URL" -c "
        WITH per AS (
            SELECT trace_id, count(*) AS n, max(attempt_number) AS top,
                   count(DISTINCT attempt_number) AS distinct_n,
                   count(DISTINCT proxy_instance) AS replicas
            FROM communication_traces GROUP BY trace_id)
        SELECT count(*), sum(n), count(*) FILTER (WHERE n = 3), count(*) FILTER (WHERE replicas = 3),
               count(*) FILTER (WHERE top <> n OR distinct_n <> n),
               (SELECT count(*) FROM communication_traces WHERE overall_status = 'pending')
        FROM per" | {
        read -r traces rows three spread bad pending
        printf 'replicas:       %s rows in %s traces; %s traces with 3 attempts, %s answered by all 3 replicas\n' \
            "$rows" "$traces" "$three" "$spread"
        printf 'replicas:       traces whose attempt numbers are not 1..n each once: %s; rows left pending: %s\n' \
            "$bad" "$pending"
    }
}

# ---------------------------------------------------------------- main

main() {
    validate_settings
    PROXY_DB_URL=$(bench_database_url)
    BASELINE_DB_URL=$(BENCH_DB=${BENCH_DB}_baseline bench_database_url)
    REPLICAS_DB_URL=$(BENCH_DB=${BENCH_DB}_replicas bench_database_url)
    COMMIT_MS=n/a
    D1_COMMIT_MS=n/a
    TMP=$(mktemp -d /tmp/trace-proxy-bench.XXXXXX)
    # nginx workers run as an unprivileged user and need to reach their
    # temp paths below $TMP.
    chmod 711 "$TMP"

    install_tools
    PSQL=$(find_pg_tool psql)
    PGBENCH=$(find_pg_tool pgbench)
    build
    prepare_database
    write_wrk_script
    has_target replicas && write_replicas_script

    echo "machine: $(nproc) cores; wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'); targets: $BENCH_TARGETS"
    echo "runs: warm-up ${WARMUP}s + ${DURATION}s each; throughput -t2 -c$CONNS, single -t1 -c1; POST $BENCH_PATH"
    has_target nginx && echo "nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //'), NGINX_WORKERS=$NGINX_WORKERS"

    start_upstream "set BENCH_PORT_BASE to a free range"
    has_target nginx && start_nginx
    has_target trace-proxy && start_proxy
    has_target spooled && start_spooled
    has_target replicas && start_replicas

    # The commit cost is measured while nothing else is loading the machine.
    measure_commit

    local t
    for t in $BENCH_TARGETS; do
        if [[ $t == replicas ]]; then
            # One wrk thread per replica; one connection cannot spread over three.
            measure "$t" tput 3 "$CONNS"
            continue
        fi
        measure "$t" tput 2 "$CONNS"
        measure "$t" c1 1 1
    done

    measure_floor
    print_table
    print_comparisons
    print_rows
}

main "$@"
