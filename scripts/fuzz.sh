#!/usr/bin/env bash
# The fuzz targets (fuzz/fuzz_targets): the sanitizer on arbitrary bytes and content types, the
# spool journal reader on arbitrary segment files, the lenient JSON parser, correlation and path
# parsing, and the configuration parser. Each runs for FUZZ_SECONDS (20) from its committed seed
# corpus (fuzz/corpus/<target>, read only; what the run finds goes to a temporary directory), on
# the stable toolchain without a sanitizer (`-s none`). A crash fails the run and leaves the input
# in fuzz/artifacts/<target>/. Installs cargo-fuzz when it is missing.
#
#   scripts/fuzz.sh                        # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh sanitize_payload
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
CARGO_FUZZ_VERSION=0.13.2
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(sanitize_payload journal_reader lenient_json correlation config_toml)
fi

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

found=$(mktemp -d)
trap 'rm -rf "$found"' EXIT
cd fuzz
cargo fuzz build -s none -O
for t in "${targets[@]}"; do
    echo "==> fuzz $t (${FUZZ_SECONDS}s)"
    mkdir -p "$found/$t"
    if ! cargo fuzz run -s none -O "$t" "$found/$t" "corpus/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 >"$found/$t.log" 2>&1; then
        tail -n 40 "$found/$t.log" >&2
        echo "fuzz: $t found a crash; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^Done [0-9]+ runs' "$found/$t.log" || true
done
