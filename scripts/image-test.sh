#!/usr/bin/env bash
# Builds the container image's runtime stage and tests it end to end, on a machine where no
# container registry is reachable (only the Debian archive). Needs root and Linux; slow (the
# first run debootstraps Debian 12, ~3 minutes); not part of scripts/test.sh.
#
#   sudo scripts/image-test.sh
#
# What it does:
#  1. installs Debian's docker.io and debootstrap when missing; uses the Docker daemon at
#     $DOCKER_HOST (or /var/run/docker.sock) when one answers, else starts a private dockerd
#     (--bridge=none --iptables=false, its own data root, exec root, pidfile and socket) and
#     stops it at the end;
#  2. builds the release binary and bench_upstream on the host (cargo);
#  3. makes two base images without a registry, from one debootstrap of Debian 12 cached in
#     target/image-test/cache: a stand-in for gcr.io/distroless/cc-debian12:nonroot holding
#     only the files of the packages the binary needs (libc6, libgcc-s1, gcc-12-base,
#     ca-certificates, tzdata, netbase, base-files) plus the distroless users (nonroot = 65532),
#     and a PostgreSQL 15 image (Debian's postgresql-15);
#  4. builds the Dockerfile's `runtime` stage with BINARY_FROM=prebuilt (the binary of step 2,
#     since the `build` stage needs the Rust image from a registry) and RUNTIME_IMAGE = the
#     stand-in;
#  5. runs, with --network host and every port chosen free now (passed in through the
#     environment the image's config reads): PostgreSQL, a stand-in upstream on the host, the
#     proxy container with a named volume on /var/lib/trace-proxy; requests go through and
#     their rows appear; the image's HEALTHCHECK reports healthy; `docker stop` (SIGTERM) ends
#     it with exit 0; with PostgreSQL stopped a new run answers and spools to the volume; a new
#     container on the same volume with PostgreSQL back replays the journal, and every answered
#     request has exactly one final row.
#
# Settings (environment): IMAGE_TEST_REQUESTS (per phase, default 20), DEBIAN_MIRROR (default
# http://deb.debian.org/debian), IMAGE_TEST_KEEP=1 keeps the containers, volume and images.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REQUESTS=${IMAGE_TEST_REQUESTS:-20}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=$ROOT/target/image-test
CACHE=$WORK/cache
RUN_ID=$(date +%s)-$$
NAME=tp-image-test-$$
IMAGE=trace-proxy:image-test
BASE_IMAGE=trace-proxy-test/distroless-cc:bookworm
PG_IMAGE=trace-proxy-test/postgresql:15
TOKEN=image-test-token-$RUN_ID

say() { printf '==> %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || fail "run as root (dockerd, debootstrap and docker import need it)"
mkdir -p "$WORK" "$CACHE"

# ---------------------------------------------------------------- tools and the daemon
need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "installing ${need_apt[*]} from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's client (docker.io) has BuildKit built in; a newer client without the buildx plugin
# would fall back to the legacy builder, which also builds the unused `build` stage.
DOCKER_BIN=docker
[ -x /usr/bin/docker ] && DOCKER_BIN=/usr/bin/docker
export DOCKER_BUILDKIT=1

DAEMON_PID=
EXEC_ROOT=
if "$DOCKER_BIN" info >/dev/null 2>&1; then
  say "using the running Docker daemon"
else
  # Unix socket paths are short: the exec root goes to /tmp; images stay cached in target/.
  EXEC_ROOT=$(mktemp -d /tmp/trace-proxy-dockerd.XXXXXX)
  export DOCKER_HOST=unix://$EXEC_ROOT/docker.sock
  say "starting a private dockerd (data root $WORK/dockerd, socket $EXEC_ROOT/docker.sock)"
  dockerd --bridge=none --iptables=false \
    --data-root "$WORK/dockerd" --exec-root "$EXEC_ROOT/exec" \
    --pidfile "$EXEC_ROOT/dockerd.pid" -H "$DOCKER_HOST" \
    --containerd-namespace trace-proxy-image-test \
    --containerd-plugins-namespace trace-proxy-image-test-plugins \
    >"$WORK/dockerd.log" 2>&1 &
  DAEMON_PID=$!
fi
D() { "$DOCKER_BIN" "$@"; }

UPSTREAM_PID=
cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    for c in "$NAME-proxy" "$NAME-pg"; do
      D inspect "$c" >/dev/null 2>&1 && { echo "--- docker logs $c (last 40 lines)"; D logs --tail 40 "$c" 2>&1; }
    done
  fi
  [ -n "$UPSTREAM_PID" ] && kill "$UPSTREAM_PID" 2>/dev/null
  if [ "${IMAGE_TEST_KEEP:-0}" != 1 ]; then
    D rm -f "$NAME-proxy" "$NAME-pg" >/dev/null 2>&1
    D volume rm "$NAME-state" >/dev/null 2>&1
  fi
  if [ -n "$DAEMON_PID" ]; then
    kill "$DAEMON_PID" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
    # dockerd leaves its network namespace mounted under the exec root.
    grep -o " $EXEC_ROOT/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null
    rm -rf "$EXEC_ROOT"
  fi
  exit $rc
}
trap cleanup EXIT

# wait_until SECONDS WHAT COMMAND...: polls COMMAND every half second until it succeeds.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "$what: not within ${limit}s"
    sleep 0.5
  done
}
wait_until 60 "dockerd answers" D info

# ---------------------------------------------------------------- binaries (host)
say "building the release binary and the stand-in upstream (cargo)"
cargo build --release --locked --bin trace-proxy --example bench_upstream
BIN=$ROOT/target/release/trace-proxy

# ---------------------------------------------------------------- base images (offline)
ROOTFS_TAR=$CACHE/debian-bookworm-postgresql.tar
if [ ! -s "$ROOTFS_TAR" ]; then
  say "debootstrap Debian 12 (minbase + postgresql-15, ca-certificates, tzdata, netbase) from $MIRROR"
  rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
  debootstrap --variant=minbase --include=postgresql-15,ca-certificates,tzdata,netbase \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    fail "debootstrap (see $WORK/debootstrap.log)"
  # The cluster the package made is not used (the container makes its own); nor are caches.
  rm -rf "$rootfs"/var/lib/postgresql/15/main "$rootfs"/etc/postgresql/15/main \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" --numeric-owner -cf "$ROOTFS_TAR.part" .
  mv "$ROOTFS_TAR.part" "$ROOTFS_TAR"
  rm -rf "$rootfs"
fi

if ! D image inspect "$PG_IMAGE" >/dev/null 2>&1; then
  say "importing $PG_IMAGE"
  D import --change 'USER postgres' --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$ROOTFS_TAR" "$PG_IMAGE" >/dev/null
fi

BASE_TAR=$CACHE/distroless-cc-standin.tar
if [ ! -s "$BASE_TAR" ]; then
  say "cutting the distroless/cc stand-in out of the Debian 12 root file system"
  rootfs=$(mktemp -d "$WORK/rootfs.XXXXXX")
  tar -C "$rootfs" -xf "$ROOTFS_TAR"
  base=$(mktemp -d "$WORK/base.XXXXXX")
  # Every file and directory of the packages, copied with their paths resolved through the
  # merged-/usr symlinks (/lib64 -> usr/lib64 …), which are copied as symlinks.
  chroot "$rootfs" dpkg-query -L libc6 libgcc-s1 gcc-12-base ca-certificates tzdata netbase base-files |
    grep '^/' | sort -u >"$base.list"
  while read -r path; do
    [ -e "$rootfs$path" ] || [ -L "$rootfs$path" ] || continue
    parent=$(realpath "$rootfs$(dirname "$path")")
    rel=${parent#"$rootfs"}/$(basename "$path")
    if [ -d "$rootfs$rel" ] && [ ! -L "$rootfs$rel" ]; then
      mkdir -p "$base$rel"
    else
      mkdir -p "$base$(dirname "$rel")"
      cp -a "$rootfs$rel" "$base$rel"
    fi
  done <"$base.list"
  for link in bin sbin lib lib64; do
    [ -L "$rootfs/$link" ] && cp -a "$rootfs/$link" "$base/$link"
  done
  mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot" "$base/var/lib"
  cp -a "$rootfs/etc/ssl/certs/ca-certificates.crt" "$base/etc/ssl/certs/"
  chmod 1777 "$base/tmp"
  chown 65532:65532 "$base/home/nonroot"
  # The users and groups of gcr.io/distroless/cc-debian12.
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$base/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$base/etc/group"
  printf 'hosts: files dns\n' >"$base/etc/nsswitch.conf"
  tar -C "$base" --numeric-owner -cf "$BASE_TAR.part" .
  mv "$BASE_TAR.part" "$BASE_TAR"
  rm -rf "$rootfs" "$base" "$base.list"
fi
if ! D image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "importing $BASE_IMAGE"
  D import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# ---------------------------------------------------------------- the image (runtime stage)
say "building $IMAGE: Dockerfile target runtime, BINARY_FROM=prebuilt, RUNTIME_IMAGE=$BASE_IMAGE"
CONTEXT=$WORK/context
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/config" "$CONTEXT/prebuilt/state"
cp config/container.toml "$CONTEXT/config/"
cp "$BIN" "$CONTEXT/prebuilt/trace-proxy"
D build --target runtime --build-arg BINARY_FROM=prebuilt --build-arg RUNTIME_IMAGE="$BASE_IMAGE" \
  -f Dockerfile -t "$IMAGE" "$CONTEXT" >"$WORK/build.log" 2>&1 || {
  cat "$WORK/build.log"
  fail "docker build"
}
version=$(D run --rm "$IMAGE" --version)
say "image runs: $version"
healthcheck=$(D image inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")
[ "$healthcheck" = '["CMD","/usr/local/bin/trace-proxy","health","--timeout","5s"]' ] ||
  fail "unexpected HEALTHCHECK $healthcheck"
[ "$(D image inspect -f '{{.Config.User}}' "$IMAGE")" = 65532:65532 ] || fail "the image does not run as 65532"

# ---------------------------------------------------------------- the test
# Free ports on every address (the admin listener binds 0.0.0.0, as in the image's default).
read -r PG_PORT UP_PORT PROXY_PORT ADMIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("0.0.0.0", 0))
print(*[s.getsockname()[1] for s in socks])')
say "ports: postgresql $PG_PORT, upstream $UP_PORT, proxy $PROXY_PORT, admin $ADMIN_PORT"

psql_c() { D exec "$NAME-pg" psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -XAtqc "$1"; }
pg_ready() { D exec "$NAME-pg" pg_isready -h 127.0.0.1 -p "$PG_PORT"; }

say "starting PostgreSQL (container $NAME-pg)"
# Initialised on the first start only: the container is stopped and started again below.
D run -d --name "$NAME-pg" --network host "$PG_IMAGE" sh -c "
  set -e
  [ -s /var/lib/postgresql/data/PG_VERSION ] ||
    initdb -D /var/lib/postgresql/data -U postgres --auth=trust >/dev/null
  exec postgres -D /var/lib/postgresql/data -p $PG_PORT -c listen_addresses=127.0.0.1 -k /tmp" >/dev/null
wait_until 60 "PostgreSQL accepts connections" pg_ready

say "starting the stand-in upstream on 127.0.0.1:$UP_PORT"
"$ROOT/target/release/examples/bench_upstream" "127.0.0.1:$UP_PORT" >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
wait_until 30 "upstream listens" curl -fsS -o /dev/null "http://127.0.0.1:$UP_PORT/"

PROXY_ENV=(
  -e TRACE_PROXY_DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
  -e TRACE_PROXY_UPSTREAM="http://127.0.0.1:$UP_PORT"
  -e TRACE_PROXY_LISTEN="127.0.0.1:$PROXY_PORT"
  -e TRACE_PROXY_ADMIN_LISTEN="0.0.0.0:$ADMIN_PORT"
  -e TRACE_PROXY_ADMIN_TOKEN="$TOKEN"
  -e TRACE_PROXY_LOG_FORMAT=text
)
# The image's HEALTHCHECK command, checked more often than its 15 s so the test is quick.
start_proxy() {
  D run -d --name "$NAME-proxy" --network host -v "$NAME-state:/var/lib/trace-proxy" \
    --health-interval 2s --health-start-period 30s "${PROXY_ENV[@]}" "$IMAGE" >/dev/null
}
health() { D inspect -f '{{.State.Health.Status}}' "$NAME-proxy"; }
is_healthy() { [ "$(health)" = healthy ]; }
# stop_proxy N: docker stop; the container's Nth run must end with exit 0 after logging
# that it received the signal.
stop_proxy() {
  D stop -t 30 "$NAME-proxy" >/dev/null
  local code said
  code=$(D inspect -f '{{.State.ExitCode}}' "$NAME-proxy")
  [ "$code" = 0 ] || fail "the proxy exited $code after SIGTERM (137 = killed at the deadline)"
  said=$(D logs "$NAME-proxy" 2>&1 | grep -c "shutdown signal received" || true)
  [ "$said" = "$1" ] || fail "'shutdown signal received' logged $said times, expected $1"
}
# send PHASE: REQUESTS requests; the trace ids of those answered 200 go to $WORK/answered.
send() {
  local ok=0 i id code
  for i in $(seq "$REQUESTS"); do
    id=img-$RUN_ID-$1-$i
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 -H "X-Trace-Id: $id" \
      -H 'content-type: application/json' -d "{\"phase\":\"$1\",\"n\":$i}" \
      "http://127.0.0.1:$PROXY_PORT/webhook/image-test/$1") || code=000
    if [ "$code" = 200 ]; then
      echo "$id" >>"$WORK/answered"
      ok=$((ok + 1))
    fi
  done
  echo "$ok"
}
rows_where() { psql_c "SELECT count(*) FROM communication_traces WHERE trace_id LIKE 'img-$RUN_ID-%' $1"; }
all_final() { [ "$(rows_where "AND overall_status = 'success' AND responded_at IS NOT NULL")" = "$1" ]; }
: >"$WORK/answered"

say "phase 1: proxy container $NAME-proxy, volume $NAME-state, PostgreSQL up"
start_proxy
wait_until 60 "the proxy answers /healthz" curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz"
answered=$(send up)
[ "$answered" = "$REQUESTS" ] || fail "only $answered of $REQUESTS requests answered 200"
wait_until 30 "$answered final rows" all_final "$answered"
say "  $answered requests answered, $answered final rows (success) in communication_traces"
wait_until 60 "HEALTHCHECK reports healthy" is_healthy
last_check() {
  D inspect -f '{{json .State.Health.Log}}' "$NAME-proxy" |
    python3 -c 'import json, sys; c = json.load(sys.stdin)[-1]; print("exit", c["ExitCode"], c["Output"].strip())'
}
say "  HEALTHCHECK: $(health), last check: $(last_check)"
say "  trace-proxy health --live: $(D exec "$NAME-proxy" trace-proxy health --live)"
uid=$(D top "$NAME-proxy" -o pid,uid,comm | awk 'NR == 2 {print $2}')
[ "$uid" = 65532 ] || fail "the proxy runs as uid $uid"
say "  the proxy process runs as uid $uid (docker top)"
stop_proxy 1
say "  docker stop (SIGTERM): exit 0, 'shutdown signal received' logged"

say "phase 2: PostgreSQL stopped; the same container restarted answers and spools to the volume"
D stop -t 30 "$NAME-pg" >/dev/null
D start "$NAME-proxy" >/dev/null
wait_until 60 "the proxy answers /healthz" curl -fsS "http://127.0.0.1:$ADMIN_PORT/healthz"
answered=$(send down)
[ "$answered" = "$REQUESTS" ] || fail "only $answered of $REQUESTS requests answered 200 while PostgreSQL was down"
ready=$(D exec "$NAME-proxy" trace-proxy health) || fail "not ready while spooling: $ready"
say "  $answered requests answered; trace-proxy health: $ready"
stop_proxy 2
status=$(D run --rm -v "$NAME-state:/var/lib/trace-proxy" -e TRACE_PROXY_DATABASE_URL=postgres://unused/x "$IMAGE" spool status)
echo "$status" | sed 's/^/  /'
records=$(echo "$status" | sed -n 's/^journal: .* segment(s), \([0-9]*\) record(s).*/\1/p')
[ "${records:-0}" -ge $((2 * REQUESTS)) ] || fail "the journal holds ${records:-0} records, expected at least $((2 * REQUESTS)) (a pending row and a final update per request)"
owner=$(D run --rm -v "$NAME-state:/s" --user 0 --entrypoint stat "$PG_IMAGE" -c '%u:%g' /s /s/spool /s/spool/lock | sort -u)
[ "$owner" = 65532:65532 ] || fail "volume ownership: $owner"
say "  the volume, the spool directory and its files belong to 65532:65532"

say "phase 3: PostgreSQL back; a new container on the same volume replays the journal"
D start "$NAME-pg" >/dev/null
wait_until 60 "PostgreSQL accepts connections" pg_ready
D rm "$NAME-proxy" >/dev/null
start_proxy
total=$(wc -l <"$WORK/answered")
wait_until 120 "$total final rows after replay" all_final "$total"
spooled() { curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -q '^trace_proxy_spool_records 0$'; }
wait_until 30 "the journal is empty" spooled
psql_c "SELECT trace_id FROM communication_traces WHERE trace_id LIKE 'img-$RUN_ID-%' ORDER BY 1" >"$WORK/rows"
sort "$WORK/answered" | diff - "$WORK/rows" >/dev/null || {
  sort "$WORK/answered" | diff - "$WORK/rows" | head
  fail "rows differ from the answered requests (one row each expected)"
}
replayed=$(curl -fsS "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '$1 == "trace_proxy_replayed_total" {print $2}')
say "  $total answered requests, $total rows, one per trace id, all success; $replayed journal records replayed"
wait_until 60 "HEALTHCHECK reports healthy" is_healthy
stop_proxy 1

size=$(D image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(D image inspect -f '{{.Size}}' "$BASE_IMAGE")
say "PASS: image $IMAGE $((size / 1000000)) MB (base stand-in $((base_size / 1000000)) MB, binary $(($(stat -c %s "$BIN") / 1000000)) MB)"
if [ "${IMAGE_TEST_KEEP:-0}" != 1 ]; then
  D rmi "$IMAGE" >/dev/null 2>&1 || true
fi
