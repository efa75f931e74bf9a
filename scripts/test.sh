#!/usr/bin/env bash
# The test command: makes sure PostgreSQL is up, then runs every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-postgres.sh
exec cargo test --all-targets "$@"
