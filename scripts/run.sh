#!/usr/bin/env bash
# Runs trace-proxy from this checkout, on this machine, with nothing else set up:
#   1. the release binary is built;
#   2. the PostgreSQL server binaries the managed database needs are installed from the
#      distribution when missing and the effective configuration has no database.url
#      (Debian/Ubuntu, as root; otherwise it says what to install);
#   3. the query API and Memory Explorer get a token (made once, kept in the state directory)
#      unless TRACE_PROXY_ADMIN_TOKEN is set;
#   4. it prints where the proxy listens, where the explorer is and a request to try, then runs
#      `trace-proxy serve --config proxy.toml` (extra arguments go to serve, e.g. --env
#      production). With no database.url / TRACE_PROXY_DATABASE_URL it records into its own
#      managed PostgreSQL in the state directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
config=${TRACE_PROXY_CONFIG:-$repo/proxy.toml}

say() { printf 'run: %s\n' "$*" >&2; }

server_binaries() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
        command -v initdb >/dev/null 2>&1 ||
        { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }
}

say "building (cargo build --release)"
(cd "$repo" && cargo build --release --quiet --bin trace-proxy)
bin=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/trace-proxy

# The effective settings, as the proxy itself resolves them.
effective=$("$bin" check-config --config "$config" "$@" 2>/dev/null) || {
    "$bin" check-config --config "$config" "$@" >/dev/null
    exit 78
}
setting() { # $1 = table, $2 = key
    awk -v t="[$1]" -v k="$2" '
        /^\[/ { in_t = ($0 == t) }
        in_t && $1 == k { sub(/^[^=]*= *"?/, ""); sub(/"$/, ""); print; exit }' <<<"$effective"
}
# The managed database (no database.url in the effective configuration) needs the server.
if [ -z "$(setting database url)" ] && ! server_binaries; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing the PostgreSQL server binaries from the distribution (no cluster of its own)"
        mkdir -p /etc/postgresql-common
        [ -e /etc/postgresql-common/createcluster.conf ] ||
            echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    else
        say "the managed database needs the PostgreSQL server: sudo apt-get install postgresql (Debian, Ubuntu), sudo dnf install postgresql-server (Fedora), brew install postgresql@17 (macOS) — or set TRACE_PROXY_DATABASE_URL"
        exit 1
    fi
fi

state_dir=$(setting server state_dir)
listen=$(setting server listen)
admin=$(setting admin listen)

if [ -z "${TRACE_PROXY_ADMIN_TOKEN:-}" ] && [ -z "$(setting admin token)" ]; then
    mkdir -p "$state_dir"
    token_file=$state_dir/admin-token
    if [ ! -s "$token_file" ]; then
        (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
    fi
    TRACE_PROXY_ADMIN_TOKEN=$(cat "$token_file")
    export TRACE_PROXY_ADMIN_TOKEN
    token_note="token in $token_file"
else
    token_note="your admin token"
fi

port=${listen##*:}
cat >&2 <<EOF

trace-proxy
  proxy            http://127.0.0.1:$port/  (listening on $listen; point bilko-app's n8n base URL here)
  Memory Explorer  http://${admin}/  ($token_note)
  state            $state_dir
  try it           curl -si -X POST http://127.0.0.1:$port/webhook/test -H 'content-type: application/json' -d '{"hello":"n8n"}'
                   $bin traces chain <the X-Trace-Id of the answer> --config $config

EOF
exec "$bin" serve --config "$config" "$@"
