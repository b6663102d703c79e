#!/usr/bin/env bash
# Usage: run.sh PORT REDIS_URL
# Builds the axum peer (release, --locked, own target dir) if the binary is missing or
# older than its sources, then execs it in the foreground (run.sh's PID = server PID).
set -euo pipefail
cd "$(dirname "$0")"
PORT="${1:?usage: run.sh PORT REDIS_URL}"
REDIS_URL="${2:?usage: run.sh PORT REDIS_URL}"
BIN=target/release/herald-peer-axum
if [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit)" ]; then
    echo "building axum peer (cargo build --release --locked)..." >&2
    CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked --quiet >&2
fi
exec "$BIN" "$PORT" "$REDIS_URL"
