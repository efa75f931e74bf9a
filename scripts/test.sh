#!/usr/bin/env bash
# The test command: makes sure PostgreSQL is up and the browser test's chromium, node and
# playwright-core are installed, then runs every unit and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-postgres.sh
scripts/setup-browser.sh
exec cargo test --all-targets "$@"
