#!/usr/bin/env bash
# Soak: mixed traffic through a release trace-proxy for DURATION seconds while its PostgreSQL is
# restarted and frozen and the proxy itself is stopped with SIGTERM and started again on the same
# journal. At the end every answered request must have exactly one final row, no row may be
# pending, nothing stored may hold the secrets the traffic carried, and the proxy's resident
# memory over the run is printed as a curve (and must stay flat).
#
# PostgreSQL is a private cluster of this run (initdb into a temporary directory, its own port;
# run as the `postgres` user when this script runs as root), so restarting and freezing it
# disturbs nothing else. Needs the PostgreSQL server binaries (initdb, pg_ctl, psql) and curl.
#
#   bench/soak.sh                    # 10 minutes
#   DURATION=120 CYCLE=60 bench/soak.sh
#
# Each CYCLE seconds (from the start): at +20 s PostgreSQL restarts (fast shutdown), at +50 s it is
# frozen (SIGSTOP on every server process) for FREEZE seconds, at +85 s (scaled to CYCLE) the proxy
# gets SIGTERM and a new one starts on the same state.
#
# Environment (all optional):
#   DURATION         seconds of traffic                                        (600)
#   WORKERS          concurrent client loops (examples/soak)                   (16)
#   CYCLE            seconds per chaos cycle                                   (120)
#   FREEZE           seconds PostgreSQL stays frozen                           (10)
#   RSS_EVERY        seconds between resident-memory samples                   (5)
#   BENCH_PORT_BASE  upstream = base, proxy = +1, admin = +2, PostgreSQL = +3  (28500)
#   KEEP             1: keep the temporary directory (ledger, logs, cluster)
set -euo pipefail

# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BENCH_NAME=bench/soak

DURATION=${DURATION:-600}
WORKERS=${WORKERS:-16}
CYCLE=${CYCLE:-120}
FREEZE=${FREEZE:-10}
RSS_EVERY=${RSS_EVERY:-5}
BENCH_PORT_BASE=${BENCH_PORT_BASE:-28500}
KEEP=${KEEP:-0}
for v in DURATION WORKERS CYCLE FREEZE RSS_EVERY; do int_at_least "$v" 1; done
int_at_least BENCH_PORT_BASE 1024
((CYCLE >= 30)) || die "CYCLE must be at least 30 seconds"
HOST=127.0.0.1
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
UPSTREAM_PORT=$BENCH_PORT_BASE
PROXY_PORT=$((BENCH_PORT_BASE + 1))
ADMIN_PORT=$((BENCH_PORT_BASE + 2))
PG_PORT=$((BENCH_PORT_BASE + 3))
for port in "$UPSTREAM_PORT" "$PROXY_PORT" "$ADMIN_PORT" "$PG_PORT"; do
    ensure_port_free "$port" "set BENCH_PORT_BASE to a free range"
done
command -v curl >/dev/null || die "curl not found"
INITDB=$(find_pg_tool initdb)
PG_CTL=$(find_pg_tool pg_ctl)
PSQL=$(find_pg_tool psql)

TMP=$(mktemp -d)
PGDATA=$TMP/pg
PROXY_PID="" UPSTREAM_PID="" LOAD_PID=""
DB_URL="postgres://postgres@$HOST:$PG_PORT/postgres"

# The PostgreSQL server refuses to run as root: then its commands run as `postgres`.
as_pg() {
    if ((EUID == 0)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cleanup() {
    for pid in $LOAD_PID $PROXY_PID $UPSTREAM_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    if [[ -f $PGDATA/postmaster.pid ]]; then
        pg_signal CONT
        as_pg "$PG_CTL" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# Sends SIG$1 to the postmaster and every server process under it.
pg_signal() {
    local pm
    pm=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 0
    [[ -n $pm ]] || return 0
    # shellcheck disable=SC2046 # one PID per word
    kill "-$1" "$pm" $(pgrep -P "$pm") 2>/dev/null || true
}

start_cluster() {
    log "initialising a private PostgreSQL cluster on $HOST:$PG_PORT"
    chmod 755 "$TMP"
    mkdir -p "$PGDATA" "$TMP/pgsock"
    : >"$TMP/pg.log"
    if ((EUID == 0)); then chown postgres "$PGDATA" "$TMP/pgsock" "$TMP/pg.log"; fi
    as_pg "$INITDB" -D "$PGDATA" -U postgres -A trust --no-sync >"$TMP/initdb.log" 2>&1 ||
        { tail -n 20 "$TMP/initdb.log" >&2; die "initdb failed"; }
    pg_start
}

pg_start() {
    as_pg "$PG_CTL" -D "$PGDATA" -l "$TMP/pg.log" -w -t 60 \
        -o "-p $PG_PORT -k $TMP/pgsock -c listen_addresses=$HOST" start >/dev/null ||
        { tail -n 20 "$TMP/pg.log" >&2; die "PostgreSQL did not start"; }
}

write_config() {
    cat >"$TMP/proxy.toml" <<TOML
[server]
listen = "$HOST:$PROXY_PORT"
shutdown_timeout = "30s"
[database]
url = "$DB_URL"
[log]
level = "warn"
[spool]
dir = "$TMP/spool"
[admin]
listen = "$HOST:$ADMIN_PORT"
[[routes]]
name = "n8n"
upstream = "http://$HOST:$UPSTREAM_PORT"
source_service = "bilko-app"
destination_service = "n8n"
TOML
}

PROXY_STARTS=0
start_proxy() {
    PROXY_STARTS=$((PROXY_STARTS + 1))
    "$TARGET_DIR/release/trace-proxy" serve --config "$TMP/proxy.toml" >>"$TMP/proxy.log" 2>&1 &
    PROXY_PID=$!
    wait_for_port "$PROXY_PORT" "$PROXY_PID" 60 trace-proxy "$TMP/proxy.log"
}

# SIGTERM to the proxy; dies unless it exits 0. Leaves how long it took to stop in DRAIN.
stop_proxy() {
    local t0=$SECONDS rc=0
    kill -TERM "$PROXY_PID"
    wait "$PROXY_PID" || rc=$?
    ((rc == 0)) || { tail -n 30 "$TMP/proxy.log" >&2; die "trace-proxy exited $rc after SIGTERM"; }
    PROXY_PID=""
    DRAIN=$((SECONDS - t0))
}

metric() {
    curl -fsS -m 2 "http://$HOST:$ADMIN_PORT/metrics" 2>/dev/null |
        awk -v m="$1" '$1 == m { print $2; exit }'
}

sample_rss() {
    local rss
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$PROXY_PID/status" 2>/dev/null) || return 0
    [[ -n $rss ]] && echo "$1,$PROXY_PID,$rss" >>"$TMP/rss.csv"
}

log "cargo build --release --bin trace-proxy --example soak"
(cd "$REPO" && cargo build --release --quiet --bin trace-proxy --example soak >&2)
TARGET_DIR=$(cargo_target_dir)
SOAK=$TARGET_DIR/release/examples/soak

start_cluster
write_config
"$SOAK" upstream "$HOST:$UPSTREAM_PORT" >"$TMP/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_for_port "$UPSTREAM_PORT" "$UPSTREAM_PID" 10 "soak upstream" "$TMP/upstream.log"
start_proxy

log "$DURATION s of traffic ($WORKERS workers); chaos every $CYCLE s"
"$SOAK" load "http://$HOST:$PROXY_PORT" "$DURATION" "$WORKERS" "$TMP/ledger.csv" >"$TMP/load.log" 2>&1 &
LOAD_PID=$!
: >"$TMP/rss.csv"
T0=$SECONDS
PG_RESTARTS=0 PG_FREEZES=0 PROXY_RESTARTS=0 DRAINS=""
RESTART_AT=$((CYCLE * 20 / 120)) FREEZE_AT=$((CYCLE * 50 / 120)) PROXY_AT=$((CYCLE * 85 / 120))
while kill -0 "$LOAD_PID" 2>/dev/null; do
    t=$((SECONDS - T0))
    ((t % RSS_EVERY == 0)) && sample_rss "$t"
    if ((t < DURATION - 10)); then
        case $((t % CYCLE)) in
        "$RESTART_AT")
            log "t=${t}s: PostgreSQL restart"
            as_pg "$PG_CTL" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
            sleep 2
            pg_start
            PG_RESTARTS=$((PG_RESTARTS + 1))
            ;;
        "$FREEZE_AT")
            log "t=${t}s: PostgreSQL frozen for ${FREEZE}s"
            pg_signal STOP
            sleep "$FREEZE"
            pg_signal CONT
            PG_FREEZES=$((PG_FREEZES + 1))
            ;;
        "$PROXY_AT")
            log "t=${t}s: trace-proxy SIGTERM and restart on the same journal"
            stop_proxy
            DRAINS="$DRAINS ${DRAIN}s"
            start_proxy
            PROXY_RESTARTS=$((PROXY_RESTARTS + 1))
            ;;
        esac
    fi
    # Sleep to the next whole second of the run.
    while ((SECONDS - T0 == t)); do sleep 0.2; done
done
wait "$LOAD_PID" || { tail -n 20 "$TMP/load.log" >&2; die "the load generator failed"; }
LOAD_PID=""

log "traffic done; waiting for the journal to drain into PostgreSQL"
deadline=$((SECONDS + 300))
until [[ $(metric trace_proxy_spool_records) == 0 ]]; do
    ((SECONDS < deadline)) || die "the journal still holds $(metric trace_proxy_spool_records) records after 300 s"
    sleep 1
done
sample_rss "$((SECONDS - T0))"
stop_proxy
if grep -qi "panicked" "$TMP/proxy.log"; then
    grep -i -m 5 "panicked" "$TMP/proxy.log" >&2
    die "trace-proxy panicked"
fi

sql() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 "$DB_URL" "$@"; }
sql -c "CREATE TABLE soak_ledger (kind text, trace_id text, attempt text, status int, answered int)"
sql -c "\\copy soak_ledger FROM '$TMP/ledger.csv' WITH (FORMAT csv)"
read -r REQUESTS ANSWERED NO_ATTEMPT < <(sql -F ' ' -c "
    SELECT count(*), count(*) FILTER (WHERE answered = 1),
           count(*) FILTER (WHERE answered = 1 AND attempt = '')
    FROM soak_ledger")
read -r ROWS OPEN FOREIGN LEAKED < <(sql -F ' ' -c "
    SELECT count(*),
           count(*) FILTER (WHERE overall_status IN ('pending', 'in_progress')),
           count(*) FILTER (WHERE trace_id NOT IN (SELECT trace_id FROM soak_ledger)),
           count(*) FILTER (WHERE concat(request_payload::text, response_payload::text)
                            ~ '(hunter2-soak|sk-soak-0123456789abcdef)')
    FROM communication_traces")
# Each answered request: exactly one row with its trace id and attempt number, final, with the
# status the client read.
read -r MISSING DOUBLED WRONG < <(sql -F ' ' -c "
    WITH a AS (
        SELECT l.trace_id, l.attempt, l.status,
               count(t.id) AS n,
               count(t.id) FILTER (WHERE t.overall_status IN ('success', 'failed')
                                   AND (t.http_status IS NULL OR t.http_status = l.status)) AS good
        FROM soak_ledger l
        LEFT JOIN communication_traces t
               ON t.trace_id = l.trace_id AND t.attempt_number::text = l.attempt
        WHERE l.answered = 1 AND l.attempt <> ''
        GROUP BY l.trace_id, l.attempt, l.status)
    SELECT count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1),
           count(*) FILTER (WHERE n = 1 AND good = 0)
    FROM a")

echo
echo "# soak: ${DURATION}s, $WORKERS workers; PostgreSQL restarted $PG_RESTARTS×, frozen $PG_FREEZES× (${FREEZE}s); trace-proxy restarted $PROXY_RESTARTS× (SIGTERM drains:${DRAINS:- none})"
echo
echo "| requests by kind | sent | answered |"
echo "|---|---|---|"
sql -F ' | ' -c "SELECT '| ' || kind, count(*), count(*) FILTER (WHERE answered = 1) || ' |'
                 FROM soak_ledger GROUP BY kind ORDER BY kind"
echo
echo "| rows by status | count |"
echo "|---|---|"
sql -F ' | ' -c "SELECT '| ' || overall_status || coalesce(' ' || error_code, ''), count(*) || ' |'
                 FROM communication_traces GROUP BY 1 ORDER BY 2 DESC"
echo
echo "requests sent: $REQUESTS; answered: $ANSWERED; rows: $ROWS"
echo "answered without a row: $MISSING; with more than one: $DOUBLED; row not final or status differs: $WRONG"
echo "answered without X-Attempt-Number: $NO_ATTEMPT; rows left pending: $OPEN; rows of no request sent: $FOREIGN; rows holding a secret: $LEAKED"
echo
echo "# trace-proxy resident memory (MB), one sample a minute"
awk -F, -v every=60 '
    { t = $1; rss = $3 / 1024; pid = $2
      if (n == 0 || t - last >= every) { printf "  t=%4ds  pid %-8s %6.1f\n", t, pid, rss; last = t }
      n++ }' "$TMP/rss.csv"
read -r FIRST_MAX LAST_MAX PEAK < <(awk -F, -v d="$DURATION" '
    { rss = $3 / 1024; if (rss > peak) peak = rss
      if ($1 < d / 4 && rss > a) a = rss
      if ($1 >= d * 3 / 4 && rss > b) b = rss }
    END { printf "%.1f %.1f %.1f\n", a, b, peak }' "$TMP/rss.csv")
echo "peak ${PEAK} MB; highest in the first quarter ${FIRST_MAX} MB, in the last quarter ${LAST_MAX} MB"

fail=0
((ANSWERED > 0)) || { echo "FAIL: nothing was answered"; fail=1; }
((MISSING == 0 && DOUBLED == 0 && WRONG == 0)) || { echo "FAIL: answered requests without exactly one final row"; fail=1; }
((NO_ATTEMPT == 0)) || { echo "FAIL: answers without X-Attempt-Number"; fail=1; }
((OPEN == 0)) || { echo "FAIL: rows left pending"; fail=1; }
((FOREIGN == 0)) || { echo "FAIL: rows for requests never sent"; fail=1; }
((LEAKED == 0)) || { echo "FAIL: a secret was stored"; fail=1; }
awk -v a="$FIRST_MAX" -v b="$LAST_MAX" 'BEGIN { exit !(b <= a * 1.5 + 8) }' ||
    { echo "FAIL: memory grew from $FIRST_MAX MB to $LAST_MAX MB"; fail=1; }
((fail == 0)) || die "soak failed (KEEP=1 keeps the ledger and logs)"
echo "PASS"
