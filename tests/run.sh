#!/usr/bin/env bash
# Runs every test Herald has: unit and integration tests (real herald binary, real
# redis-server), the browser test (real headless Chromium), the Autobahn quick subset and
# a load-generator smoke run. Installs what is missing first (Debian; apt-get needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
# The cluster tests join nodes with `redis-cli --cluster create`.
command -v redis-cli >/dev/null || missing+=(redis-tools)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs npm)
command -v prlimit >/dev/null || missing+=(util-linux)
# The metrics test parses /metrics with Prometheus's own Python parser.
{ python3 -c 'import prometheus_client.parser' || /usr/bin/python3 -c 'import prometheus_client.parser'; } 2>/dev/null \
  || missing+=(python3-prometheus-client)
# tests/python/setup.sh makes a venv (Debian's python3 needs python3-venv for that).
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings

step "Python client libraries for the tests (tests/python/requirements.txt)"
bash tests/python/setup.sh

step "unit and integration tests"
cargo build --workspace --locked --quiet
cargo test --workspace --locked

step "fuzz targets compile (fuzz/run.sh runs them; not here: they take minutes each)"
(cd fuzz && cargo check --locked --bins --quiet)

step "browser test (headless Chromium)"
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
HERALD_BIN="$PWD/target/debug/herald" node --test tests/browser/

step "load generator smoke (1k clients, 20 events, Herald embedded; timings not asserted)"
bash bench/run --smoke --no-report

step "WebSocket conformance (Autobahn quick subset, echo route)"
cargo build --release --locked --quiet -p herald
HERALD_BIN="$PWD/target/release/herald" bash tests/autobahn/run.sh quick

echo
echo "all tests passed"
