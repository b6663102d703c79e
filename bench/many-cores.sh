#!/usr/bin/env bash
# The many-core comparison of issue #11, prepared for a machine with 8 or more cores: servers
# pinned to the first half of the CPUs, the generator (one worker process per CPU of its
# half) to the second half, so neither takes the other's cores. Herald with one reactor and
# with one per server CPU, tuned axum (a tokio worker per server CPU) and the floor, at
# 10,000 and 19,000 clients (one generator process stays under the 20,000 open-file limit),
# paced (20 events/s) and burst, 3 repetitions; then the targets as ratios.
#
#   bench/many-cores.sh [--clients 10000,19000] [--repeat 3]
#
# Targets (issue #11): paced p99 of Herald --threads N <= 0.5x axum's at 10k and 19k; burst
# deliveries/s >= 2x axum's at 19k; the generator never saturated (saturated runs are left
# out by bench/run and reported). On fewer than 8 CPUs it refuses: the figures would be this
# script's, not the servers'.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLIENTS="10000,19000"; REPEAT=3
while [ $# -gt 0 ]; do
    case "$1" in
        --clients) CLIENTS="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        *) sed -n '2,14p' "$0"; exit 2 ;;
    esac
done
cpus=$(nproc)
if [ "$cpus" -lt 8 ]; then
    echo "many-cores.sh: $cpus CPUs here; this comparison needs at least 8 (4 for the servers, 4 for the generator)" >&2
    exit 2
fi
half=$((cpus / 2))
server_cpus="0-$((half - 1))"
gen_cpus="$half-$((cpus - 1))"
echo "servers on CPUs $server_cpus (Herald --threads $half), generator on CPUs $gen_cpus" >&2
"$ROOT/bench/run" --clients "$CLIENTS" --servers herald,herald-threads,axum,floor \
    --cases paced,burst --publish http --repeat "$REPEAT" --no-report \
    --server-cpus "$server_cpus" --gen-cpus "$gen_cpus" --threads-n "$half"
latest=$(ls -t "$ROOT"/bench/out/*-matrix.jsonl | head -1)
python3 - "$latest" "$CLIENTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(server, clients, case, pick):
    xs = [pick(r["result"]) for r in rows
          if r.get("server") == server and r.get("clients") == clients and r.get("case") == case
          and r.get("status") == "ok" and r.get("result")]
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
p99 = lambda r: (r.get("latency_us") or {}).get("p99")
dps = lambda r: r.get("deliveries_per_sec")
print(f"raw: {sys.argv[1]}")
for clients in [int(c) for c in sys.argv[2].split(",")]:
    h, a = med("herald-threads", clients, "paced", p99), med("axum", clients, "paced", p99)
    if h and a:
        print(f"{clients} paced p99: herald-threads {h/1000:.1f} ms, axum {a/1000:.1f} ms: {h/a:.2f}x (target <= 0.5x)")
    h, a = med("herald-threads", clients, "burst", dps), med("axum", clients, "burst", dps)
    if h and a:
        print(f"{clients} burst: herald-threads {h:,.0f}/s, axum {a:,.0f}/s: {h/a:.2f}x (target >= 2x at 19k)")
saturated = sum(1 for r in rows if r.get("status") == "saturated")
print(f"runs with the generator saturated (left out): {saturated}")
PY
