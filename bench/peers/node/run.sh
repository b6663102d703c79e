#!/usr/bin/env bash
# Usage: run.sh PORT REDIS_URL
# Installs the pinned dependencies (package-lock.json) if node_modules is missing or
# stale, then execs node in the foreground (run.sh's PID = server PID).
set -euo pipefail
cd "$(dirname "$0")"
PORT="${1:?usage: run.sh PORT REDIS_URL}"
REDIS_URL="${2:?usage: run.sh PORT REDIS_URL}"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    # bufferutil ships prebuilt linux-x64 binaries, so no install scripts are needed.
    npm ci --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export NODE_ENV=production
exec node server.js "$PORT" "$REDIS_URL"
