#!/usr/bin/env bash
# Run the Autobahn|Testsuite fuzzingclient against Herald's echo route.
#
#   tests/autobahn/run.sh [quick|full] [--check]
#
#   quick    representative subset (1.*-5.*, 6.1-6.4 + some UTF-8 groups, 7.*,
#            small 9.x, 10.*, and permessage-deflate: a few sizes of 12.1 and
#            of each 13.x offer); results in reports/quick/results.json
#   full     groups 1-10, 12 and 13 (permessage-deflate); results in
#            reports/full/results.json and, when testing herald, copied to the
#            golden file tests/autobahn/expected-results.json
#   --check  (full only) compare against expected-results.json instead of
#            rewriting it; exit non-zero on any difference
#
# Environment:
#   HERALD_URL       test this ws:// URL instead of starting herald (nothing is
#                    built or started, expected-results.json is never written)
#   HERALD_BIN       herald binary to use (default: cargo build --release -p herald)
#   HERALD_ARGS      extra arguments appended to the herald command line
#   WSTEST_TIMEOUT   seconds allowed for wstest (default: quick 420, full 10800)
#
# HTML/JSON reports: tests/autobahn/reports/<mode>/index.html (git-ignored).
# Exit status: 0 pass; non-zero if setup/build/start failed, wstest failed or
# timed out, a case of groups 1-10, 12 or 13 failed, or (--check) results differ.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MODE="quick"
CHECK=0
for arg in "$@"; do
    case "$arg" in
        quick|full) MODE="$arg" ;;
        --check) CHECK=1 ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument: $arg (usage: run.sh [quick|full] [--check])" >&2; exit 2 ;;
    esac
done
if [[ $CHECK == 1 && $MODE != full ]]; then
    echo "run.sh: --check is only supported with 'full'" >&2; exit 2
fi

START_TS=$(date +%s)
REPORT_DIR="$HERE/reports/$MODE"
GOLDEN="$HERE/expected-results.json"
TMP="$(mktemp -d /tmp/autobahn-run.XXXXXX)"
HERALD_PID=""

stop_herald() {
    [[ -n "$HERALD_PID" ]] || return 0
    if kill -0 "$HERALD_PID" 2>/dev/null; then
        kill -TERM "$HERALD_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$HERALD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$HERALD_PID" 2>/dev/null && kill -KILL "$HERALD_PID" 2>/dev/null || true
    fi
    wait "$HERALD_PID" 2>/dev/null || true
    HERALD_PID=""
}
cleanup() { stop_herald; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. wstest environment
timeout 1200 "$HERE/setup.sh"

# 2. Testee
if [[ -n "${HERALD_URL:-}" ]]; then
    URL="$HERALD_URL"
    AGENT="external"
    echo "Testing external server at $URL"
else
    AGENT="herald"
    if [[ -n "${HERALD_BIN:-}" ]]; then
        BIN="$HERALD_BIN"
    else
        if ! (cd "$ROOT" && timeout 1800 cargo build --release -q -p herald) >"$TMP/build.log" 2>&1; then
            echo "run.sh: cargo build --release -p herald failed:" >&2
            tail -n 60 "$TMP/build.log" >&2
            exit 1
        fi
        BIN="$ROOT/target/release/herald"
    fi
    [[ -x "$BIN" ]] || { echo "run.sh: herald binary not found: $BIN" >&2; exit 1; }

    # free port in 24000-24999
    PORT="$(python3 - <<'EOF'
import random, socket
ports = list(range(24000, 25000))
random.shuffle(ports)
for p in ports:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port in 24000-24999")
EOF
)"
    # Herald reads its settings from the environment too (clap env): drop the ones
    # that would change what is tested (use HERALD_ARGS to set them on purpose).
    # The echo of a message counts toward the connection's queue like any output, so the
    # queue cap must hold the largest message echoed (16 MiB, cases 9.x) with room to spare.
    # shellcheck disable=SC2086
    env -u PUBSUB_CACHE_URL -u REDIS_URL -u ALLOWED_ORIGINS -u MAX_QUEUED_BYTES \
        -u MAX_CONNECTIONS -u PING_INTERVAL_SECS -u PONG_TIMEOUT_SECS -u PUBLISH_TOKEN \
        "$BIN" --bind 127.0.0.1 --port "$PORT" --echo-path /echo --max-message-bytes 16777216 \
        --max-queued-bytes 67108864 \
        ${HERALD_ARGS:-} >"$TMP/herald.log" 2>&1 &
    HERALD_PID=$!
    ready=0
    for _ in $(seq 1 150); do   # up to 15 s
        if ! kill -0 "$HERALD_PID" 2>/dev/null; then break; fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then ready=1; break; fi
        sleep 0.1
    done
    if [[ $ready != 1 ]]; then
        echo "run.sh: herald did not start listening on 127.0.0.1:$PORT; its output:" >&2
        tail -n 40 "$TMP/herald.log" >&2
        exit 1
    fi
    URL="ws://127.0.0.1:$PORT/echo"
    echo "Started herald (pid $HERALD_PID) at $URL"
fi

# 3. Spec
if [[ $MODE == quick ]]; then
    CASES='["1.*", "2.*", "3.*", "4.*", "5.*",
            "6.1.*", "6.2.*", "6.3.*", "6.4.*",
            "6.5.*", "6.6.*", "6.8.*", "6.12.*", "6.16.*", "6.18.*", "6.20.*", "6.21.*", "6.22.1", "6.23.*",
            "7.*", "9.1.1", "9.2.1", "9.3.1", "9.5.1", "10.*",
            "12.1.1", "12.1.4", "12.1.11", "12.2.3", "12.5.4",
            "13.1.2", "13.2.4", "13.3.3", "13.3.5", "13.4.4", "13.5.4", "13.6.11", "13.7.4"]'
    : "${WSTEST_TIMEOUT:=420}"
else
    CASES='["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*", "12.*", "13.*"]'
    : "${WSTEST_TIMEOUT:=10800}"  # 12.x/13.x: 216 cases of 1000 messages up to 128 KiB: hours
fi
rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR"
cat >"$TMP/spec.json" <<EOF
{
  "outdir": "$REPORT_DIR",
  "servers": [{"agent": "$AGENT", "url": "$URL"}],
  "cases": $CASES,
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
cp "$TMP/spec.json" "$REPORT_DIR/spec.json"

# 4. wstest
echo "Running wstest fuzzingclient ($MODE, timeout ${WSTEST_TIMEOUT}s) ..."
WS_START=$(date +%s)
set +e
(cd "$TMP" && PYTHONWARNINGS=ignore timeout -k 10 "$WSTEST_TIMEOUT" \
    "$HERE/.venv/bin/wstest" -m fuzzingclient -s "$TMP/spec.json") >"$REPORT_DIR/wstest.log" 2>&1
WS_RC=$?
set -e
echo "wstest finished in $(( $(date +%s) - WS_START ))s (exit $WS_RC); log: $REPORT_DIR/wstest.log"

HERALD_DIED=0
if [[ -n "$HERALD_PID" ]] && ! kill -0 "$HERALD_PID" 2>/dev/null; then
    HERALD_DIED=1
fi
if [[ -n "$HERALD_PID" ]]; then
    stop_herald
    cp "$TMP/herald.log" "$REPORT_DIR/herald.log"
fi
if [[ $WS_RC != 0 ]]; then
    [[ $WS_RC == 124 || $WS_RC == 137 ]] && echo "run.sh: wstest timed out after ${WSTEST_TIMEOUT}s" >&2
    echo "run.sh: wstest failed (exit $WS_RC); last lines:" >&2
    tail -n 30 "$REPORT_DIR/wstest.log" >&2
fi
if [[ $HERALD_DIED == 1 ]]; then
    echo "run.sh: herald exited during the run; its last output:" >&2
    tail -n 40 "$REPORT_DIR/herald.log" >&2
fi
if [[ ! -f "$REPORT_DIR/index.json" ]]; then
    echo "run.sh: no report written ($REPORT_DIR/index.json missing)" >&2
    exit 1
fi

# 5. Summary / golden
SUM_ARGS=("$REPORT_DIR" --golden "$REPORT_DIR/results.json")
[[ $CHECK == 1 ]] && SUM_ARGS+=(--check "$GOLDEN")
set +e
timeout 120 python3 "$HERE/summarize.py" "${SUM_ARGS[@]}"
SUM_RC=$?
set -e
if [[ $MODE == full && $CHECK == 0 && $AGENT == herald ]]; then
    cp "$REPORT_DIR/results.json" "$GOLDEN"
    echo "Updated $GOLDEN"
fi
echo "Total time: $(( $(date +%s) - START_TS ))s; HTML report: $REPORT_DIR/index.html"
if [[ $WS_RC != 0 || $HERALD_DIED == 1 ]]; then exit 1; fi
exit "$SUM_RC"
