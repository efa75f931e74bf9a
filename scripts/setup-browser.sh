#!/usr/bin/env bash
# Makes sure the tests that drive node programs can run: the Memory Explorer's browser test
# (tests/it/ui.rs, driving tests/browser/explorer.mjs) needs Debian's `chromium` at
# /usr/bin/chromium, `node`, and tests/browser/node_modules (playwright-core, pinned by
# tests/browser/package-lock.json; `npx playwright install` is never used — the distribution's
# browser is); the MCP test's external client (tests/it/mcp.rs) needs tests/mcp-client/node_modules
# (the MCP Inspector CLI, pinned by its package-lock.json). Installs what is missing: packages
# with apt-get (as root), node_modules with `npm ci` (again whenever a package-lock.json changes).
# With CI set, anything that cannot be installed fails the run; locally it is a warning and those
# tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "setup-browser: $*" >&2
    if [ -n "${CI:-}" ]; then
        exit 1
    fi
    echo "setup-browser: continuing without it; the tests that need it will be skipped (set CI to make this an error)" >&2
    exit 0
}

packages=()
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)
[ -x /usr/bin/chromium ] || packages+=(chromium)

if [ "${#packages[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        fail "missing ${packages[*]}; install them with apt-get (needs root)"
    fi
    echo "setup-browser: installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null ||
            fail "apt-get could not install ${packages[*]}"
    fi
fi

# Each directory's node_modules, installed from its lock file; `marker` is a module it must hold.
for entry in tests/browser:playwright-core tests/mcp-client:@modelcontextprotocol/inspector; do
    dir=${entry%%:*}
    marker=${entry#*:}
    stamp="$dir/node_modules/.trace-proxy-package-lock.json"
    if ! cmp -s "$dir/package-lock.json" "$stamp" || [ ! -d "$dir/node_modules/$marker" ]; then
        echo "setup-browser: npm ci in $dir"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci failed in $dir"
        cp "$dir/package-lock.json" "$stamp"
    fi
done
