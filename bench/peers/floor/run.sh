#!/usr/bin/env bash
# Usage: run.sh PORT [REDIS_URL]
# Builds the floor reference server (release, --locked, own target dir) if the binary is
# missing or older than its sources, then execs it in the foreground (run.sh's PID = server
# PID). REDIS_URL is accepted for the peers' common command line and ignored: the floor
# publishes in-process, with no broker.
set -euo pipefail
cd "$(dirname "$0")"
PORT="${1:?usage: run.sh PORT [REDIS_URL]}"
BIN=target/release/herald-peer-floor
if [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$BIN" -print -quit)" ]; then
    echo "building floor peer (cargo build --release --locked)..." >&2
    CARGO_TARGET_DIR="$PWD/target" cargo build --release --locked --quiet >&2
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec "$BIN" "$PORT"
