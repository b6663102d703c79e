#!/usr/bin/env bash
# Three Herald replicas on a three-master Redis Cluster (sharded pub/sub) against three
# Herald replicas on one Redis, same load, same machine, one run.
#
#   bench/cluster.sh                       1000 clients per replica, 30 channels, 2000 events
#                                          published through each replica, 3 repetitions
#   CLIENTS=500 EVENTS=1000 REPEAT=1 bench/cluster.sh
#
# Per setup and repetition: fresh Redis (one `redis-server`, or six `--cluster-enabled yes`
# nodes joined by `redis-cli --cluster create --cluster-replicas 1`), three fresh Heralds
# (cluster: each given a different master, REDIS_CLUSTER=on), then three herald-bench
# instances at once, one per Herald, each with its own event type (a client ignores the
# other instances' types, so each instance checks loss, duplicates and order of its own
# events; every client still receives all three instances' events). Figures:
# - deliveries/s across replicas: the sum of `herald_events_delivered_total` over the three
#   Heralds during the run, over the longest publish phase of the three instances;
# - Redis CPU per publish: user+system CPU of every redis-server process (replicas
#   included) during the run, minus what the same processes burn idle (measured for
#   IDLE_SECS just before, with the Heralds connected: cluster cron and bus gossip of six
#   nodes), over the events published (3 x EVENTS); the raw figure is kept too;
# - verified deliveries: each instance's own events delivered to its own clients (checked
#   for loss, duplicates, order), summed; the Herald count above also includes the other
#   instances' events, delivered but not checked (and misses those sent after an instance
#   had finished and closed its clients);
# - loss: lost + duplicates + publish errors as the three instances report them.
# Everything is stopped by PID; every wait is bounded; results go to
# bench/out/cluster-<time>.jsonl and a table on stdout.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLIENTS="${CLIENTS:-1000}"
EVENTS="${EVENTS:-2000}"
CHANNELS="${CHANNELS:-30}"
IN_FLIGHT="${IN_FLIGHT:-4}"
REPEAT="${REPEAT:-3}"
IDLE_SECS="${IDLE_SECS:-3}"
OUT="$ROOT/bench/out"
RUN_ID="cluster-$(date -u +%Y%m%dT%H%M%SZ)"
WORK="$(mktemp -d)"
mkdir -p "$OUT"
RESULTS="$OUT/$RUN_ID.jsonl"
PIDS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits (at most 30 s) until `$1` succeeds.
wait_for() {
  for _ in $(seq 300); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "timed out waiting for: $1" >&2; return 1
}

# CPU seconds (user + system) of the given PIDs, from /proc: the total, or (each) one
# figure per PID, comma-separated.
cpu_seconds() {
  python3 - "$@" <<'EOF'
import os, sys
tick = os.sysconf("SC_CLK_TCK")
each = sys.argv[1] == "each"
figures = []
for pid in sys.argv[1 + each:]:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        figures.append((int(fields[11]) + int(fields[12])) / tick)
    except FileNotFoundError:
        figures.append(0.0)
print(",".join(map(str, figures)) if each else sum(figures))
EOF
}

delivered() { curl -s "http://127.0.0.1:$1/metrics" | awk '$1=="herald_events_delivered_total"{print $2}'; }

echo "building (release)" >&2
(cd "$ROOT" && cargo build --release --locked --quiet -p herald -p herald-bench) || exit 2
HERALD="$ROOT/target/release/herald"
GEN="$ROOT/target/release/herald-bench"

start_redis() { # port [args...]
  local port=$1; shift
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --dir "$WORK" "$@" >"$WORK/redis-$port.log" 2>&1 &
  PIDS+=($!); REDIS_PIDS+=($!)
  wait_for "redis-cli -p $port PING | grep -q PONG"
}

setup_single() {
  local port; port=$(free_port)
  start_redis "$port"
  URLS=("redis://127.0.0.1:$port" "redis://127.0.0.1:$port" "redis://127.0.0.1:$port")
  CLUSTER_MODE=off
}

setup_cluster() {
  local ports=() addrs=()
  for i in 0 1 2 3 4 5; do
    local port bus; port=$(free_port); bus=$(free_port)
    start_redis "$port" --cluster-enabled yes --cluster-config-file "$WORK/nodes-$port.conf" \
      --cluster-port "$bus" --cluster-node-timeout 5000
    ports+=("$port"); addrs+=("127.0.0.1:$port")
  done
  timeout 60 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$WORK/create.log" 2>&1 || { echo "cluster create failed" >&2; return 1; }
  for port in "${ports[@]}"; do
    wait_for "redis-cli -p $port CLUSTER INFO | grep -q cluster_state:ok"
  done
  # One Herald per master (the first three nodes are the masters redis-cli made).
  URLS=("redis://127.0.0.1:${ports[0]}" "redis://127.0.0.1:${ports[1]}" "redis://127.0.0.1:${ports[2]}")
  CLUSTER_MODE=on
}

run_setup() { # name repetition
  local name=$1 rep=$2
  REDIS_PIDS=()
  "setup_$name" || return 1
  local hports=() hpids=()
  for i in 0 1 2; do
    local port; port=$(free_port)
    PUBSUB_CACHE_URL="${URLS[$i]}" REDIS_CLUSTER="$CLUSTER_MODE" LOG_LEVEL=warn \
      "$HERALD" --port "$port" --bind 127.0.0.1 >"$WORK/herald-$name-$i.log" 2>&1 &
    PIDS+=($!); hpids+=($!); hports+=("$port")
    wait_for "curl -s http://127.0.0.1:$port/health | grep -q '\"redis\":\"connected\"'" || return 1
  done
  local before_delivered=0
  for port in "${hports[@]}"; do before_delivered=$((before_delivered + $(delivered "$port"))); done
  local idle_before; idle_before=$(cpu_seconds "${REDIS_PIDS[@]}")
  sleep "$IDLE_SECS"
  local cpu_before; cpu_before=$(cpu_seconds "${REDIS_PIDS[@]}")
  local each_before; each_before=$(cpu_seconds each "${REDIS_PIDS[@]}")
  local idle_rate; idle_rate=$(python3 -c "print(($cpu_before - $idle_before) / $IDLE_SECS)")
  local started; started=$(date +%s.%N)
  local gens=()
  for i in 0 1 2; do
    timeout 300 "$GEN" -p "${hports[$i]}" -c "$CLIENTS" -e "$EVENTS" --channels "$CHANNELS" \
      --in-flight "$IN_FLIGHT" --event-type "b$i" --procs 1 --pid "${hpids[$i]}" \
      >"$WORK/gen-$i.json" 2>"$WORK/gen-$i.log" &
    gens+=($!)
  done
  local status=0
  for pid in "${gens[@]}"; do wait "$pid" || status=1; done
  local cpu_after; cpu_after=$(cpu_seconds "${REDIS_PIDS[@]}")
  local each_after; each_after=$(cpu_seconds each "${REDIS_PIDS[@]}")
  local wall; wall=$(python3 -c "print($(date +%s.%N) - $started)")
  local after_delivered=0
  for port in "${hports[@]}"; do after_delivered=$((after_delivered + $(delivered "$port"))); done
  python3 - "$name" "$rep" "$status" "$((after_delivered - before_delivered))" \
    "$cpu_before" "$cpu_after" "$EVENTS" "$CLIENTS" "$CHANNELS" "$idle_rate" "$wall" \
    "$each_before" "$each_after" "$WORK"/gen-*.json <<'EOF' | tee -a "$RESULTS"
import json, sys
name, rep, status, delivered, cpu0, cpu1, events, clients, channels, idle_rate, wall, each0, each1 = sys.argv[1:14]
busiest = max(b - a for a, b in zip(map(float, each0.split(",")), map(float, each1.split(","))))
gens = []
for path in sys.argv[14:]:
    try:
        gens.append(json.load(open(path)))
    except Exception:
        gens.append({})
publish_s = max((g.get("publish_phase_seconds") or 0) for g in gens) or float("nan")
published = 3 * int(events)
loss = sum((g.get("lost") or 0) + (g.get("duplicates") or 0) + (g.get("publish_errors") or 0) for g in gens)
cpu = float(cpu1) - float(cpu0)
cpu_busy = max(0.0, cpu - float(idle_rate) * float(wall))
verified = sum(g.get("deliveries") or 0 for g in gens)
print(json.dumps({
    "setup": name, "repetition": int(rep), "ok": status == "0" and all(g.get("ok") for g in gens),
    "clients_per_replica": int(clients), "channels": int(channels), "events_published": published,
    "deliveries": int(delivered), "deliveries_per_sec": int(delivered) / publish_s,
    "verified_deliveries": verified, "verified_deliveries_per_sec": verified / publish_s,
    "redis_cpu_s": cpu, "redis_idle_cpu_per_s": float(idle_rate), "run_seconds": float(wall),
    "redis_cpu_us_per_publish_raw": cpu * 1e6 / published,
    "redis_cpu_us_per_publish": cpu_busy * 1e6 / published,
    # The busiest redis-server process's CPU over every publish: what limits the setup.
    "redis_busiest_cpu_us_per_publish": busiest * 1e6 / published,
    "loss": loss, "publish_seconds_max": publish_s,
}))
EOF
  cleanup
}

for rep in $(seq "$REPEAT"); do
  for setup in single cluster; do
    echo "== $setup, repetition $rep" >&2
    run_setup "$setup" "$rep" || echo "{\"setup\":\"$setup\",\"repetition\":$rep,\"ok\":false}" >>"$RESULTS"
  done
done

python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| setup | runs ok | deliveries/s across replicas, Herald count (median) | verified deliveries/s (median) | Redis CPU per publish, all processes, us, idle subtracted (median) | raw (median) | busiest process, us per publish (median) | loss |")
print("|---|---|---|---|---|---|---|---|")
for setup in ("single", "cluster"):
    ok = [r for r in rows if r["setup"] == setup and r.get("ok")]
    runs = [r for r in rows if r["setup"] == setup]
    if not ok:
        print(f"| {setup} | 0/{len(runs)} | - | - | - | - | - | - |")
        continue
    med = lambda k: statistics.median(r[k] for r in ok)
    print(f"| {setup} | {len(ok)}/{len(runs)} | {med('deliveries_per_sec'):,.0f} | {med('verified_deliveries_per_sec'):,.0f} | {med('redis_cpu_us_per_publish'):.1f} | {med('redis_cpu_us_per_publish_raw'):.1f} | {med('redis_busiest_cpu_us_per_publish'):.1f} | {sum(r['loss'] for r in ok)} |")
print(f"\n(results: {sys.argv[1]})")
EOF
