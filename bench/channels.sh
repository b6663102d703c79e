#!/usr/bin/env bash
# Many channels vs one: the cost per delivery when clients are spread over
# many channels, next to the same number of deliveries on the default channel.
#
#   bench/channels.sh [clients] [channels] [events]      (default 10000 1000 2000)
#
# Case "channels": <clients> WebSocket clients, client i on ch<i % channels>;
# <events> events, event e published to POST /events/ch<e % channels>; each
# client checks it gets exactly its channel's events.
# Case "single": the same clients on the default channel, with as many events
# as give the same number of deliveries (10000 clients x 2 events = 20,000 =
# 2000 events over 1000 channels of 10 clients).
#
# Each run gets a fresh embedded-mode Herald (target/release/herald on a free
# loopback port), burst publishing (--in-flight 4), --pid for the server's CPU
# and RSS; Herald is stopped by its PID afterwards. The cases alternate,
# REPEAT times each (env, default 3). Prints a markdown table; raw JSON lines
# go to bench/out/<stamp>-channels.jsonl, logs to bench/out/<stamp>-channels/.
#
# Env: REPEAT (3), IN_FLIGHT (4), SOURCE_IPS (127.0.8.2-127.0.8.6),
# RUN_TIMEOUT seconds per herald-bench run (600).
# Only loopback; only processes this script started are ever signalled.

set -u -o pipefail

CLIENTS="${1:-10000}"
CHANNELS="${2:-1000}"
EVENTS="${3:-2000}"
REPEAT="${REPEAT:-3}"
IN_FLIGHT="${IN_FLIGHT:-4}"
SOURCE_IPS="${SOURCE_IPS:-127.0.8.2-127.0.8.6}"
RUN_TIMEOUT="${RUN_TIMEOUT:-600}"

for v in CLIENTS CHANNELS EVENTS REPEAT IN_FLIGHT RUN_TIMEOUT; do
    case "${!v}" in '' | *[!0-9]*) echo "channels.sh: $v must be a number" >&2; exit 2 ;; esac
done
[ "$CHANNELS" -ge 1 ] && [ "$CLIENTS" -ge 1 ] && [ "$EVENTS" -ge 1 ] && [ "$REPEAT" -ge 1 ] || {
    echo "channels.sh: clients, channels, events and REPEAT must be >= 1" >&2; exit 2; }

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
HERALD="$ROOT/target/release/herald"
GEN="$ROOT/target/release/herald-bench"
STAMP="$(date +%Y%m%d-%H%M%S)"
OUT="$ROOT/bench/out"
LOGDIR="$OUT/$STAMP-channels"
JSONL="$OUT/$STAMP-channels.jsonl"
mkdir -p "$LOGDIR" || exit 2

log() { echo "[channels.sh] $*" >&2; }

# ------------------------------------------------------------- processes
SPID=""
stop_herald() {
    [ -n "$SPID" ] || return 0
    local i
    kill -TERM "$SPID" 2>/dev/null
    for i in $(seq 1 50); do # 5 s
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$SPID" 2>/dev/null && kill -KILL "$SPID" 2>/dev/null
    wait "$SPID" 2>/dev/null
    SPID=""
}
trap 'stop_herald' EXIT
trap 'stop_herald; exit 130' INT TERM

free_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then echo "$p"; return 0; fi
    done
    return 1
}

# owns_port PID PORT: the listener on PORT belongs to PID.
owns_port() { ss -Htlnp "sport = :$2" 2>/dev/null | grep -q "pid=$1,"; }

# start_herald TAG: fresh embedded-mode Herald; sets SPID and SPORT.
start_herald() {
    local tag="$1" try i
    for try in 1 2 3; do
        SPORT="$(free_port)" || return 1
        env -u REDIS_URL -u PUBSUB_CACHE_URL \
            "$HERALD" --port "$SPORT" --bind 127.0.0.1 --log-level warn \
            >>"$LOGDIR/$tag.server.log" 2>&1 &
        SPID=$!
        for i in $(seq 1 100); do # 10 s
            kill -0 "$SPID" 2>/dev/null || break
            if curl -sf -m 2 "http://127.0.0.1:$SPORT/health" >/dev/null 2>&1 &&
                owns_port "$SPID" "$SPORT"; then
                return 0
            fi
            sleep 0.1
        done
        log "$tag: Herald did not come up on port $SPORT (try $try)"
        stop_herald
    done
    return 1
}

# ------------------------------------------------------------- arithmetic
# Deliveries of the channels case with every client connected: the sum over
# channels of clients x events on it (round robin on both sides).
qc=$((CLIENTS / CHANNELS)) rc=$((CLIENTS % CHANNELS))
qe=$((EVENTS / CHANNELS)) re=$((EVENTS % CHANNELS))
D=$((CHANNELS * qc * qe + qc * re + qe * rc + (rc < re ? rc : re)))
# Single channel: as many events as give the same deliveries (at least 1).
E1=$(((D + CLIENTS / 2) / CLIENTS))
[ "$E1" -ge 1 ] || E1=1
log "channels: $CLIENTS clients over $CHANNELS channels, $EVENTS events = $D deliveries"
log "single:   $CLIENTS clients on the default channel, $E1 events = $((CLIENTS * E1)) deliveries"

# ------------------------------------------------------------- build
log "building (cargo build --release -p herald -p herald-bench)"
cargo build --release -p herald -p herald-bench >"$LOGDIR/build.log" 2>&1 || {
    log "build failed, see $LOGDIR/build.log"; exit 2; }

# ------------------------------------------------------------- runs
# run_case NAME RUN ARGS...: one fresh Herald, one herald-bench run.
FAILED=0
run_case() {
    local name="$1" run="$2" tag rc
    shift 2
    tag="$name-$run"
    start_herald "$tag" || { log "$tag: no server"; FAILED=1; return 1; }
    log "$tag: Herald pid $SPID on port $SPORT; herald-bench $*"
    timeout -k 10 "$RUN_TIMEOUT" "$GEN" -p "$SPORT" --pid "$SPID" -c "$CLIENTS" \
        --in-flight "$IN_FLIGHT" --source-ips "$SOURCE_IPS" --progress-interval 0 \
        --max-duration "$RUN_TIMEOUT" "$@" \
        >"$LOGDIR/$tag.json" 2>"$LOGDIR/$tag.log"
    rc=$?
    stop_herald
    if [ -s "$LOGDIR/$tag.json" ]; then
        cat "$LOGDIR/$tag.json" >>"$JSONL"
    else
        log "$tag: no JSON (exit $rc), see $LOGDIR/$tag.log"
    fi
    [ "$rc" -eq 0 ] || { log "$tag: herald-bench exit $rc"; FAILED=1; }
}

for run in $(seq 1 "$REPEAT"); do
    run_case channels "$run" --channels "$CHANNELS" -e "$EVENTS"
    run_case single "$run" -e "$E1"
done

[ -s "$JSONL" ] || { log "no results"; exit 1; }

# ------------------------------------------------------------- table
python3 - "$JSONL" <<'EOF'
import json, statistics, sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def case(r):
    return f"{r['channels']} channels" if r["channels"] else "1 (default)"
def us_per_delivery(r):
    cpu = r.get("server_cpu_publish_s")
    return cpu * 1e6 / r["deliveries"] if cpu is not None and r["deliveries"] else None
def p99_ms(r):
    return r["latency_us"]["p99"] / 1000 if r.get("latency_us") else None
def f(v, fmt):
    return "-" if v is None else format(v, fmt)

print("| channels | clients | events | deliveries (got/expected) | deliveries/s "
      "| server CPU µs/delivery | p99 latency ms | ok |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
for r in rows:
    print(f"| {case(r)} | {r['clients']} | {r['events']} "
          f"| {r['deliveries']}/{r['expected_deliveries']} "
          f"| {r['deliveries_per_sec']:,.0f} | {f(us_per_delivery(r), '.2f')} "
          f"| {f(p99_ms(r), '.2f')} | {'yes' if r['ok'] else 'NO: ' + '; '.join(r['problems'])} |")
groups = {}
for r in rows:
    groups.setdefault(case(r), []).append(r)
if all(len(g) > 1 for g in groups.values()):
    print()
    print("| channels (median of runs) | deliveries/s | server CPU µs/delivery | p99 latency ms |")
    print("|---|---:|---:|---:|")
    for name, g in groups.items():
        med = lambda xs: statistics.median(xs) if xs else None
        print(f"| {name}, {len(g)} runs | {med([r['deliveries_per_sec'] for r in g]):,.0f} "
              f"| {f(med([v for v in map(us_per_delivery, g) if v is not None]), '.2f')} "
              f"| {f(med([v for v in map(p99_ms, g) if v is not None]), '.2f')} |")
EOF
log "raw JSON lines: $JSONL; logs: $LOGDIR"
exit "$FAILED"
