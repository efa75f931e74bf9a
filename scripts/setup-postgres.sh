#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers where the tests look for it
# (TRACE_PROXY_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres).
#   1. already answering: nothing to do (but install the server binaries the outage tests run
#      their private clusters with, if they are missing);
#   2. a Debian cluster exists but is stopped: start it;
#   3. no server at all (a fresh Debian/Ubuntu machine, as root): install PostgreSQL from the
#      distribution, start it, and allow password-less connections from loopback only, for
#      local development and CI. Do not run this on a shared or production server.
set -euo pipefail

url="${TRACE_PROXY_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

answers() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$url"
}

wait_ready() {
    for _ in $(seq 1 60); do
        answers && return 0
        sleep 0.5
    done
    echo "setup-postgres: PostgreSQL did not become ready at $url" >&2
    return 1
}

# The outage tests also start private clusters of their own: they need the server binaries
# (initdb, pg_ctl) here even when the server the tests use runs elsewhere.
server_binaries() {
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 ||
        { command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; }
}

install_server_binaries() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-postgres: initdb/pg_ctl not found; the outage tests need the PostgreSQL server package" >&2
        exit 1
    fi
    echo "setup-postgres: installing the PostgreSQL server binaries (no cluster)"
    mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

if answers; then
    server_binaries || install_server_binaries
    exit 0
fi

start_clusters() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    local found=1
    while read -r version name _; do
        [ -n "$version" ] || continue
        found=0
        echo "setup-postgres: starting cluster $version/$name"
        pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start || true
    done < <(pg_lsclusters --no-header 2>/dev/null)
    return $found
}

if start_clusters; then
    wait_ready
    exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-postgres: no PostgreSQL at $url; install PostgreSQL >= 13 and start it," >&2
    echo "or point TRACE_PROXY_TEST_DATABASE_URL at one (any database; tests use private schemas)." >&2
    exit 1
fi

echo "setup-postgres: installing PostgreSQL from the distribution"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
version=$(pg_lsclusters --no-header | awk 'NR==1 {print $1}')
if [ -z "$version" ]; then
    version=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
    pg_createcluster "$version" main
fi
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -q 'trace-proxy test access' "$hba"; then
    # Loopback only; prepended so it wins over the packaged rules.
    { echo "# trace-proxy test access (scripts/setup-postgres.sh)"
      echo "host all all 127.0.0.1/32 trust"
      echo "host all all ::1/128 trust"
      cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
fi
start_clusters || true
pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
wait_ready
