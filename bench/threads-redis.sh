#!/usr/bin/env bash
# Redis mode with --threads: what each reactor having its own Redis links costs Redis and
# Herald. For each thread count, on a fresh redis-server and a fresh Herald (each on a free
# port, stopped by PID): N clients on one channel, M events published over HTTP at a pace;
# reports per publish the CPU time of redis-server and of Herald, Redis's subscriber count for
# the channel (one per reactor with clients), latency, and the delivery check of herald-bench.
# Keep the load below what one reactor writes unbatched (about 200k single-frame writes a
# second here): an overloaded reactor batches several frames per write and its CPU per
# delivery drops, which would flatter the slower configuration.
#
#   bench/threads-redis.sh [--threads 1,2] [--clients 2000] [--events 1000] [--rate 50] [--repeat 3]
#
# Needs target/release/herald and herald-bench (cargo build --release --workspace).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="1,2"; CLIENTS=2000; EVENTS=1000; RATE=50; REPEAT=3
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --events) EVENTS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        *) sed -n '2,10p' "$0"; exit 2 ;;
    esac
done
HERALD="$ROOT/target/release/herald"
GEN="$ROOT/target/release/herald-bench"
TMP="$(mktemp -d /tmp/threads-redis.XXXXXX)"
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Time on a CPU of every thread of a process, in ns (schedstat: finer than the 10 ms ticks of
# /proc/PID/stat, which would round a Redis run's few tens of ms away).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f", s}'; }
wait_http() { for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; return 1; }

printf '%-8s %-4s %10s %13s %14s %14s %9s %9s %s\n' threads run redis_subs redis_us/pub herald_us/pub herald_us/deliv p50_ms p99_ms check
for t in ${THREADS//,/ }; do
    for r in $(seq 1 "$REPEAT"); do
        rport=$(free_port)
        redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$TMP/redis.log" 2>&1 &
        rpid=$!; PIDS+=("$rpid")
        for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
        hport=$(free_port)
        PUBSUB_CACHE_URL="redis://127.0.0.1:$rport" "$HERALD" --port "$hport" --bind 127.0.0.1 \
            --threads "$t" >"$TMP/herald.log" 2>&1 &
        hpid=$!; PIDS+=("$hpid")
        wait_http "$hport"
        # Connect first (idle), then measure only the publishing phase's CPU.
        "$GEN" -p "$hport" -c "$CLIENTS" -e "$EVENTS" --rate "$RATE" --pid "$hpid" \
            >"$TMP/out.json" 2>"$TMP/gen.log" &
        gpid=$!
        # The generator connects, then publishes: sample CPU once every client is counted.
        for _ in $(seq 1 600); do
            n=$(curl -sf "http://127.0.0.1:$hport/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["websockets"])' 2>/dev/null || echo 0)
            [ "$n" -ge "$CLIENTS" ] && break
            sleep 0.1
        done
        r0=$(cpu_ns "$rpid"); h0=$(cpu_ns "$hpid")
        subs=$(redis-cli -p "$rport" PUBSUB NUMSUB events | tail -1)
        wait "$gpid" && check=ok || check=FAILED
        r1=$(cpu_ns "$rpid"); h1=$(cpu_ns "$hpid")
        read -r deliveries p50 p99 < <(python3 -c 'import json,sys; r = json.load(open(sys.argv[1])); l = r.get("latency_us") or {}; print(r.get("deliveries", 0), l.get("p50", 0), l.get("p99", 0))' "$TMP/out.json" 2>/dev/null || echo "0 0 0")
        awk -v t="$t" -v r="$r" -v s="$subs" -v rc=$((r1 - r0)) -v hc=$((h1 - h0)) -v e="$EVENTS" \
            -v d="$deliveries" -v p50="$p50" -v p99="$p99" -v c="$check" \
            'BEGIN { printf "%-8s %-4s %10s %13.1f %14.1f %14.2f %9.1f %9.1f %s\n", t, r, s, rc / 1e3 / e, hc / 1e3 / e, (d > 0 ? hc / 1e3 / d : 0), p50 / 1e3, p99 / 1e3, c }'
        kill "$hpid" "$rpid" 2>/dev/null || true
        wait "$hpid" "$rpid" 2>/dev/null || true
    done
done
