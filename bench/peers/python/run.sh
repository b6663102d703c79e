#!/usr/bin/env bash
# Usage: run.sh PORT REDIS_URL
# Creates .venv (pinned requirements.lock from PyPI) if missing or stale, then execs
# uvicorn in the foreground, one process (run.sh's PID = server PID).
set -euo pipefail
cd "$(dirname "$0")"
PORT="${1:?usage: run.sh PORT REDIS_URL}"
REDIS_URL="${2:?usage: run.sh PORT REDIS_URL}"
if [ ! -f .venv/.installed ] || [ requirements.lock -nt .venv/.installed ]; then
    PY="${PYTHON:-}"
    if [ -z "$PY" ]; then
        # The tutorial's image is python:3.12-slim; fall back to 3.11 / python3.
        for c in python3.12 python3.11 python3; do
            if "$c" -c 'import sys; assert sys.version_info >= (3, 10)' >/dev/null 2>&1; then PY="$c"; break; fi
        done
    fi
    [ -n "$PY" ] || { echo "no Python >= 3.10 found" >&2; exit 1; }
    rm -rf .venv
    "$PY" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir -r requirements.lock >&2
    touch .venv/.installed
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
export PUBSUB_CACHE_URL="$REDIS_URL"
# uvicorn[standard] stack made explicit: uvloop, httptools, websockets (13.0).
# Tuning: no access log, warning-level logging, backlog 1024 like the other peers,
# no permessage-deflate (the other peers don't negotiate it either), 65 s keep-alive.
exec .venv/bin/uvicorn main:app \
    --host "${BIND:-127.0.0.1}" --port "$PORT" \
    --loop uvloop --http httptools --ws websockets \
    --ws-per-message-deflate false \
    --no-access-log --log-level warning \
    --backlog 1024 --timeout-keep-alive 65
