#!/usr/bin/env bash
# Fails when Cargo.lock resolves a security-relevant crate below its floor, or when Cargo.toml's
# requirement for it no longer states that floor. Run by .ci/run.
#
#   scripts/check-floors.sh [LOCKFILE] [MANIFEST]
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=${1:-Cargo.lock}
MANIFEST=${2:-Cargo.toml}

# crate floor (the fixed advisories live above these versions)
FLOORS=(
    "hyper 1.11.0"
    "rustls 0.23.45"
    "tracing-subscriber 0.3.20"
)

# Lowest version of $1 in the lock (a crate can be there more than once), or empty.
locked_version() {
    awk -v name="$1" '
        $0 == "[[package]]" { n = ""; next }
        $1 == "name" { gsub(/"/, "", $3); n = $3; next }
        $1 == "version" && n == name { gsub(/"/, "", $3); print $3 }
    ' "$LOCK" | sort -V | head -n1
}

# The version requirement Cargo.toml states for $1 (`x = "1.2"` or `x = { version = "1.2", … }`).
required_version() {
    sed -nE "s/^$1[[:space:]]*=[[:space:]]*(\{[^}]*version[[:space:]]*=[[:space:]]*)?\"[\^=~]?([0-9][0-9.]*)\".*/\2/p" \
        "$MANIFEST" | head -n1
}

# True when version $1 >= $2.
at_least() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1) == "$2" ]]; }

failed=0
for entry in "${FLOORS[@]}"; do
    read -r crate floor <<<"$entry"
    locked=$(locked_version "$crate")
    required=$(required_version "$crate")
    if [[ -z $locked ]]; then
        echo "check-floors: $crate is not in $LOCK" >&2
        failed=1
    elif ! at_least "$locked" "$floor"; then
        echo "check-floors: $LOCK has $crate $locked, below the floor $floor" >&2
        failed=1
    fi
    # Pad "1.11" to "1.11.0" so that sort -V compares like with like.
    while [[ $(tr -cd . <<<"$required" | wc -c) -lt 2 && -n $required ]]; do required+=".0"; done
    if [[ -z $required ]]; then
        echo "check-floors: $MANIFEST states no version for $crate" >&2
        failed=1
    elif ! at_least "$required" "$floor"; then
        echo "check-floors: $MANIFEST requires $crate $required, below the floor $floor" >&2
        failed=1
    fi
done
if ((failed)); then
    exit 1
fi
echo "check-floors: ok (${FLOORS[*]})"
