# shellcheck shell=bash
# Helpers shared by the bench/ scripts; sourced, not run. Callers set BENCH_NAME (message
# prefix), BENCH_DATABASE_URL (admin URL) and BENCH_DB (their own database) first.

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
