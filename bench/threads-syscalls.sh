#!/usr/bin/env bash
# Syscalls and CPU per delivery of Herald with 1 and N reactors, counted by the kernel:
# `perf stat` on Herald's threads (syscall tracepoints, task-clock, context switches), attached
# once every client is connected and detached when herald-bench is done, so it covers the
# publishing, the fan-out and the clients closing (the same closes for every thread count).
# Wall-clock CPU on a shared 2-core machine swings by 20% from run to run; the syscall counts
# say what the process asked of the kernel, whatever the scheduler did: writes per delivery
# (frames per write), epoll turns, the hub's wake-ups (eventfd writes), futex waits.
#
#   bench/threads-syscalls.sh [--threads 1,2] [-c 5000] [-e 200] [--in-flight 4] [--rate R]
#                             [--repeat 5] [--server-cpus LIST] [--gen-cpus LIST]
#
# Without --rate: a burst (as bench/run's burst case); with it, paced. Thread counts alternate
# within each repetition. Prints one line per run and the medians per thread count; appends
# one JSON line per run to bench/out/<time>-syscalls.jsonl. Needs perf with the syscalls
# tracepoints (root, or perf_event_paranoid <= -1) and target/release/{herald,herald-bench}.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
THREADS="1,2"; CLIENTS=5000; EVENTS=200; INFLIGHT=4; RATE=""; REPEAT=5; SERVER_CPUS=""; GEN_CPUS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        -c|--clients) CLIENTS="$2"; shift 2 ;;
        -e|--events) EVENTS="$2"; shift 2 ;;
        --in-flight) INFLIGHT="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --server-cpus) SERVER_CPUS="$2"; shift 2 ;;
        --gen-cpus) GEN_CPUS="$2"; shift 2 ;;
        *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
HERALD="$ROOT/target/release/herald"
GEN="$ROOT/target/release/herald-bench"
[ -x "$HERALD" ] && [ -x "$GEN" ] || { echo "threads-syscalls.sh: build first (cargo build --release --workspace)" >&2; exit 2; }
perf stat -e syscalls:sys_enter_writev true >/dev/null 2>&1 \
    || { echo "threads-syscalls.sh: perf cannot read the syscalls tracepoints here" >&2; exit 2; }
OUT_DIR="$ROOT/bench/out"; mkdir -p "$OUT_DIR"
RUN_ID="$(date +%Y%m%d-%H%M%S)-syscalls"
DIR="$OUT_DIR/$RUN_ID"; mkdir -p "$DIR"
JSONL="$OUT_DIR/$RUN_ID.jsonl"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD)"; DIRTY="$(git -C "$ROOT" status --short src | wc -l)"
PIDS=()
cleanup() { for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null; done; }
trap cleanup EXIT
pin() { [ -n "$1" ] && echo taskset -c "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
websockets() { curl -sf -m 5 "http://127.0.0.1:$1/health" | grep -o '"websockets":[0-9]*' | cut -d: -f2; }
EVENTS_PERF='task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_write,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex'
CASE=(-e "$EVENTS" --in-flight "$INFLIGHT"); [ -n "$RATE" ] && CASE=(-e "$EVENTS" --rate "$RATE" --in-flight 1)
SRC=(); [ "$CLIENTS" -gt 2000 ] && SRC=(--source-ips 127.0.0.2-127.0.0.11)

for rep in $(seq 1 "$REPEAT"); do
    for t in ${THREADS//,/ }; do
        tag="t$t-r$rep"; port="$(free_port)"
        $(pin "$SERVER_CPUS") "$HERALD" --port "$port" --bind 127.0.0.1 --log-level warn --threads "$t" \
            >"$DIR/$tag.herald.log" 2>&1 &
        hpid=$!; PIDS+=("$hpid")
        for _ in $(seq 1 100); do curl -sf -m 2 "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
        $(pin "$GEN_CPUS") "$GEN" -p "$port" --pid "$hpid" -c "$CLIENTS" "${CASE[@]}" "${SRC[@]}" --idle 2 \
            --connect-timeout 90 --settle-timeout 60 >"$DIR/$tag.json" 2>"$DIR/$tag.log" &
        gpid=$!; PIDS+=("$gpid")
        for _ in $(seq 1 1200); do [ "$(websockets "$port")" = "$CLIENTS" ] && break; sleep 0.05; done
        curl -sf -m 5 "http://127.0.0.1:$port/metrics" | grep '^herald_reactor_connections' >"$DIR/$tag.split"
        perf stat -x, -e "$EVENTS_PERF" -p "$hpid" -o "$DIR/$tag.perf" &
        ppid=$!; PIDS+=("$ppid")
        wait "$gpid"; echo "exit $?" >>"$DIR/$tag.log"
        sleep 0.3  # the last closes
        kill -INT "$ppid"; wait "$ppid"
        kill -TERM "$hpid"; wait "$hpid"
        PIDS=()
        python3 - "$DIR/$tag" "$JSONL" "$t" "$rep" "$COMMIT" "$DIRTY" "$(cat /proc/loadavg)" <<'EOF'
import json, sys
base, jsonl, threads, rep, commit, dirty, load = sys.argv[1:]
counts = {}
for line in open(base + ".perf"):
    f = line.strip().split(",")
    if len(f) > 3 and not line.startswith("#") and not f[0].startswith("<"):
        name = "raw_syscalls" if f[2] == "raw_syscalls:sys_enter" else f[2].split(":")[-1]
        counts[name.replace("sys_enter_", "")] = float(f[0])
gen = next(json.loads(l) for l in open(base + ".json") if l.startswith("{"))
d = gen["deliveries"] or 1
writes = counts["writev"] + counts["sendto"]
rec = {"kind": "syscalls", "threads": int(threads), "rep": int(rep), "clients": gen["clients"],
       "events": gen["events"], "rate": gen.get("rate"), "deliveries": gen["deliveries"],
       "ok": gen["ok"], "generator_saturated": gen["generator_saturated"],
       "split": [int(l.split()[-1]) for l in open(base + ".split") if l.strip()],
       "cpu_us_per_delivery": counts["task-clock"] * 1000 / d,
       "bench_cpu_us_per_delivery": gen["server_cpu_per_delivery_us"],
       "frames_per_write": d / writes if writes else None, "writes": writes,
       "syscalls": counts["raw_syscalls"], "epoll_wait": counts["epoll_wait"],
       "eventfd_writes": counts["write"], "futex": counts["futex"], "context_switches": counts["context-switches"],
       "p50_ms": gen["latency_us"]["p50"] / 1000, "commit": commit, "dirty_src_files": int(dirty), "loadavg": load}
open(jsonl, "a").write(json.dumps(rec) + "\n")
print(f"threads {threads} run {rep}: cpu/delivery {rec['cpu_us_per_delivery']:.3f} us (herald-bench {rec['bench_cpu_us_per_delivery']:.3f}), "
      f"frames/write {rec['frames_per_write'] or 0:.1f}, writes {writes:.0f}, syscalls {rec['syscalls']:.0f}, epoll_wait {rec['epoll_wait']:.0f}, "
      f"eventfd writes {rec['eventfd_writes']:.0f}, futex {rec['futex']:.0f}, p50 {rec['p50_ms']:.0f} ms, clients per reactor {rec['split']}, "
      f"ok {rec['ok']}, generator saturated {rec['generator_saturated']}, load {load.split()[0]}", flush=True)
EOF
    done
done
python3 - "$JSONL" <<'EOF'
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
print("medians (runs with a failed check or a saturated generator left out):")
for t in sorted({r["threads"] for r in recs}):
    rs = [r for r in recs if r["threads"] == t and r["ok"] and not r["generator_saturated"]]
    if not rs:
        print(f"  threads {t}: no valid run"); continue
    m = lambda k: statistics.median(r[k] for r in rs)
    print(f"  threads {t} ({len(rs)} runs): cpu/delivery {m('cpu_us_per_delivery'):.3f} us (herald-bench {m('bench_cpu_us_per_delivery'):.3f}), "
          f"frames/write {m('frames_per_write'):.1f}, writes {m('writes'):.0f}, syscalls {m('syscalls'):.0f}, epoll_wait {m('epoll_wait'):.0f}, "
          f"eventfd writes {m('eventfd_writes'):.0f}, futex {m('futex'):.0f}, context switches {m('context_switches'):.0f}, p50 {m('p50_ms'):.0f} ms")
print(f"-> {sys.argv[1]}")
EOF
