#!/usr/bin/env bash
# Install the servers the tests start (see tests/servers.py):
#   - Azurite and @vercel/cosmosdb-server into tests/emulators/node_modules (npm ci from the lock)
#   - redis-server from apt, if it is not on PATH
# Idempotent and quiet on success; run from anywhere. Needs Node.js >= 20 and npm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp -t loom-emulators-install.XXXXXX)"
trap 'rm -f "$log"' EXIT

fail() {
    echo "tests/emulators/install.sh: $*" >&2
    if [ -s "$log" ]; then
        echo "--- output (first and last 20 lines):" >&2
        if [ "$(wc -l <"$log")" -le 40 ]; then cat "$log" >&2
        else head -n 20 "$log" >&2; echo "..." >&2; tail -n 20 "$log" >&2; fi
    fi
    exit 1
}

# --- Node packages -------------------------------------------------------------------------
command -v node >/dev/null 2>&1 || fail "node is not on PATH; install Node.js >= 20"
command -v npm >/dev/null 2>&1 || fail "npm is not on PATH; install Node.js >= 20 with npm"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || fail "Node.js >= 20 needed, found $(node --version)"

stamp="$here/node_modules/.loom-install-stamp"
want="$( (cat "$here/package.json" "$here/package-lock.json"; node --version) | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ] \
    || [ ! -f "$here/node_modules/azurite/dist/src/blob/main.js" ] \
    || [ ! -f "$here/node_modules/@vercel/cosmosdb-server/lib/cli.js" ]; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1 \
        || fail "npm ci failed in $here"
    echo "$want" >"$stamp"
fi

# --- redis-server --------------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || fail "redis-server is missing; install it (apt-get install redis-server) as root"
        sudo="sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || fail "redis-server is missing and apt-get is not available; install redis-server"
    {
        $sudo apt-get update -qq &&
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
    } >"$log" 2>&1 || fail "apt-get install redis-server failed"
    # Debian's package starts a system redis on :6379; the tests run their own on free ports.
    command -v redis-server >/dev/null 2>&1 || fail "redis-server still not on PATH after apt-get"
fi
