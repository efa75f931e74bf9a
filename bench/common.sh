# shellcheck shell=bash
# Helpers shared by the bench/ scripts; sourced, not run. Callers set BENCH_NAME (message
# prefix), BENCH_DATABASE_URL (admin URL), BENCH_DB (their own database) and, for the port
# helpers, HOST first; REPO and TMP where a helper uses them.

log() { printf '==> %s\n' "$*" >&2; }

die() {
    printf '%s: error: %s\n' "${BENCH_NAME:-bench}" "$*" >&2
    exit 1
}

# Dies unless the variable named $1 holds an integer >= $2.
int_at_least() {
    local name=$1 min=$2
    local value=${!name}
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < min)); then
        die "$name must be an integer >= $min (got '$value')"
    fi
}

# BENCH_DATABASE_URL with its database name replaced by BENCH_DB, query string kept.
bench_database_url() {
    local url=$BENCH_DATABASE_URL query=""
    if [[ $url == *\?* ]]; then
        query="?${url#*\?}"
        url=${url%%\?*}
    fi
    local scheme=${url%%://*} rest=${url#*://}
    printf '%s://%s/%s%s\n' "$scheme" "${rest%%/*}" "$BENCH_DB" "$query"
}

# The path of PostgreSQL client tool $1: on PATH, else the newest under /usr/lib/postgresql
# (Debian keeps pgbench off PATH in some setups).
find_pg_tool() {
    local tool=$1 candidate
    if command -v "$tool" >/dev/null; then
        command -v "$tool"
        return
    fi
    candidate=$(printf '%s\n' /usr/lib/postgresql/*/bin/"$tool" | sort -V | tail -n 1)
    if [[ -x $candidate ]]; then
        echo "$candidate"
        return
    fi
    die "$tool not found (install postgresql-client)"
}

# Dies unless BENCH_DATABASE_URL points at this machine: the proxy writes rows per request, and
# none of that traffic may leave loopback.
require_loopback_database_url() {
    local hostpart=${BENCH_DATABASE_URL#*://}
    hostpart=${hostpart%%/*}
    hostpart=${hostpart##*@}
    case $hostpart in
    127.* | localhost | localhost:* | "[::1]" | "[::1]:"* | "") ;;
    *) die "BENCH_DATABASE_URL must point at 127.0.0.1/localhost (got host '$hostpart')" ;;
    esac
}

# Poll until something accepts TCP connections on $HOST:$1, or fail once $3 seconds have passed
# or the process $2 ($4, logging to $5) has died.
wait_for_port() {
    local port=$1 pid=$2 timeout=$3 name=$4 logfile=$5
    local deadline=$((SECONDS + timeout))
    while ! (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logfile" >&2 || true
            die "$name exited before listening on $HOST:$port (log: $logfile)"
        fi
        ((SECONDS < deadline)) || die "$name not listening on $HOST:$port after ${timeout}s (log: $logfile)"
        sleep 0.1
    done
    # Something answered; make sure it is our process and not a leftover.
    kill -0 "$pid" 2>/dev/null || die "$name exited, but $HOST:$port answers: another process holds the port"
}

# Refuse to start when port $1 is already taken ($2: what to do about it): wait_for_port would
# otherwise happily benchmark whatever else is listening there.
ensure_port_free() {
    if (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; then
        die "$HOST:$1 is already in use; $2"
    fi
}

# wrk prints latencies as e.g. 512.00us, 1.23ms, 1.02s; return milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000;
        else if (u == "m") n *= 60000; else if (u != "ms") { print "n/a"; exit }
        printf "%.3f\n", n }'
}

# Number of requests wrk completed, from "N requests in 10.00s, ..." in file $1.
wrk_requests() { awk '/ requests in / { print $1 }' "$1"; }

# The crate's cargo target directory (CARGO_TARGET_DIR and config respected), for $REPO.
cargo_target_dir() {
    local dir
    dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${dir:-${CARGO_TARGET_DIR:-$REPO/target}}"
}

# Installs Debian packages $@ (root only); apt's output goes to $TMP/apt.log, shown on failure.
apt_install() {
    ((EUID == 0)) || die "missing $*; run as root or install them (apt-get install $*)"
    log "installing $* from Debian"
    {
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
    } >"$TMP/apt.log" 2>&1 || {
        tail -n 20 "$TMP/apt.log" >&2
        die "apt-get failed installing $* (log: $TMP/apt.log)"
    }
}

# Starts the stand-in upstream (examples/bench_upstream, built under $TARGET_DIR) on
# $HOST:$UPSTREAM_PORT, leaving its PID in UPSTREAM_PID; $1: what to do if the port is taken.
start_upstream() {
    ensure_port_free "$UPSTREAM_PORT" "$1"
    "$TARGET_DIR/release/examples/bench_upstream" "$HOST:$UPSTREAM_PORT" >"$TMP/upstream.log" 2>&1 &
    UPSTREAM_PID=$!
    wait_for_port "$UPSTREAM_PORT" "$UPSTREAM_PID" 10 bench_upstream "$TMP/upstream.log"
}

# Starts a private nginx under $TMP/nginx (its own config, pid file, logs and temp paths; a system
# nginx, if any, is left alone), in the foreground (daemon off) so NGINX_PID is its master, and
# waits until it listens on $HOST:$4. $1: worker_processes, $2: worker_connections, $3: what goes
# into `http { }` besides the temp paths (upstreams, servers). $TMP must be searchable by the
# workers' unprivileged user.
start_private_nginx() {
    local workers=$1 connections=$2 http=$3 port=$4
    mkdir -p "$TMP/nginx"
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes $workers;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections $connections; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
$http
}
EOF
    nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' \
        >"$TMP/nginx/stdout.log" 2>&1 &
    NGINX_PID=$!
    wait_for_port "$port" "$NGINX_PID" 10 nginx "$TMP/nginx/error.log"
}

# The wrk script of every load run: POST of a small n8n-trigger-like JSON body.
write_wrk_script() {
    cat >"$TMP/post.lua" <<'EOF'
wrk.method = "POST"
wrk.body = '{"workflow":"bench","n":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Workflow-Id"] = "bench"
wrk.headers["X-User-Id"] = "bench-user"
EOF
}

# ---- The query benches (bench/query.sh, bench/ui.sh): trace-proxy with its admin API over a
# dedicated database. Callers set BENCH_DB, BENCH_PORT_BASE and REPO, and name
# stop_proxy_and_clean in their EXIT trap.

PROXY_PID=""
TMP=""

# Stops the proxy started by start_admin_proxy, if it runs, and removes TMP.
stop_proxy_and_clean() {
    if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    PROXY_PID=""
    [[ -n $TMP ]] && rm -rf "$TMP"
}

# Builds trace-proxy and examples/query_load (release), re-creates BENCH_DB, and writes and
# migrates $TMP/proxy.toml: a proxy on $HOST:$PROXY_PORT, its admin API on $HOST:$ADMIN_PORT with
# a fresh TOKEN, no retention passes. Sets HOST, PROXY_PORT, ADMIN_PORT, TOKEN, TMP, DB_URL,
# PSQL, BIN and LOAD.
admin_bench_setup() {
    HOST=127.0.0.1
    PROXY_PORT=$BENCH_PORT_BASE
    ADMIN_PORT=$((BENCH_PORT_BASE + 1))
    TOKEN="bench-token-$(date +%s)-0123456789"
    require_loopback_database_url
    command -v psql >/dev/null || die "psql is required"
    TMP=$(mktemp -d)
    DB_URL=$(bench_database_url)
    PSQL=(psql -X -q -v ON_ERROR_STOP=1)
    log "building (release)"
    (cd "$REPO" && cargo build --release --quiet --bin trace-proxy --example query_load)
    TARGET_DIR=$(cargo_target_dir)
    BIN=$TARGET_DIR/release/trace-proxy
    # shellcheck disable=SC2034 # used by the benches that source this file
    LOAD=$TARGET_DIR/release/examples/query_load
    log "re-creating database $BENCH_DB"
    "${PSQL[@]}" "$BENCH_DATABASE_URL" -c "DROP DATABASE IF EXISTS $BENCH_DB" -c "CREATE DATABASE $BENCH_DB"
    ensure_port_free "$PROXY_PORT" "set BENCH_PORT_BASE"
    ensure_port_free "$ADMIN_PORT" "set BENCH_PORT_BASE"
    cat >"$TMP/proxy.toml" <<EOF
[server]
listen = "$HOST:$PROXY_PORT"
[database]
url = "$DB_URL"
[admin]
listen = "$HOST:$ADMIN_PORT"
token = "$TOKEN"
[retention]
interval = "0"
[log]
level = "warn"
[[routes]]
name = "n8n"
upstream = "http://$HOST:9"
source_service = "bilko-app"
destination_service = "n8n"
EOF
    "$BIN" migrate --config "$TMP/proxy.toml" >/dev/null
}

# EXPLAIN ANALYZE of statement $2 in DB_URL under the heading $1, keeping the lines that say how
# the rows were found and what it cost.
explain_query() {
    echo "# $1"
    "${PSQL[@]}" "$DB_URL" -At -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $2" |
        grep -E 'Index|Scan|Limit|Sort|Aggregate|Execution Time|Planning Time' | sed 's/^/    /'
}

# Starts trace-proxy on $TMP/proxy.toml (PROXY_PID) and waits for its admin listener.
start_admin_proxy() {
    log "starting trace-proxy with the admin API on $HOST:$ADMIN_PORT"
    TRACE_PROXY_SPOOL_DIR="$TMP/spool" "$BIN" serve --config "$TMP/proxy.toml" 2>"$TMP/proxy.log" &
    PROXY_PID=$!
    wait_for_port "$ADMIN_PORT" "$PROXY_PID" 30 trace-proxy "$TMP/proxy.log"
}

# For a script that runs one release trace-proxy on its own database BENCH_DB: stops PROXY_PID if
# it runs, drops BENCH_DB (with PSQL) and removes TMP. Install it as the EXIT trap.
stop_proxy_drop_db() {
    if [[ -n ${PROXY_PID:-} ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
        kill -TERM "$PROXY_PID" 2>/dev/null || true
        wait "$PROXY_PID" 2>/dev/null || true
    fi
    "$PSQL" -X -q "$BENCH_DATABASE_URL" -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" >/dev/null 2>&1 || true
    [[ -n ${TMP:-} ]] && rm -rf "$TMP"
}

# Drops and creates BENCH_DB (with PSQL).
recreate_bench_db() {
    log "re-creating database $BENCH_DB"
    "$PSQL" -X -q "$BENCH_DATABASE_URL" -c "SET client_min_messages = warning" \
        -c "DROP DATABASE IF EXISTS $BENCH_DB WITH (FORCE)" -c "CREATE DATABASE $BENCH_DB" >/dev/null
}

# Writes $TMP/<name>.toml — listening on $HOST:$PROXY_PORT, admin on $HOST:$ADMIN_PORT, rows into
# BENCH_DB, its journal in $TMP/<name>-spool, one route to upstream URL $1 — with $2 added to
# `[server]`, then starts binary $4 (default: the release trace-proxy under $TARGET_DIR) on it and
# waits until it listens. $3: the name (default "proxy", whose PID also goes to PROXY_PID); the PID
# is left in STARTED_PID. A second proxy (another build) is started with PROXY_PORT, ADMIN_PORT and
# BENCH_DB assigned for the call.
start_bench_proxy() {
    local upstream=$1 server_extra=$2 name=${3:-proxy} bin=${4:-$TARGET_DIR/release/trace-proxy}
    cat >"$TMP/$name.toml" <<TOML
[server]
listen = "$HOST:$PROXY_PORT"
$server_extra
[database]
url = "$(bench_database_url)"
[log]
level = "warn"
[spool]
dir = "$TMP/$name-spool"
[admin]
listen = "$HOST:$ADMIN_PORT"
[[routes]]
name = "n8n"
upstream = "$upstream"
source_service = "bilko-app"
destination_service = "n8n"
TOML
    "$bin" --config "$TMP/$name.toml" >"$TMP/$name.log" 2>&1 &
    STARTED_PID=$!
    if [[ $name == proxy ]]; then PROXY_PID=$STARTED_PID; fi
    wait_for_port "$PROXY_PORT" "$STARTED_PID" 30 "$name" "$TMP/$name.log"
}
