#!/usr/bin/env bash
# Instructions per delivery: Herald under `valgrind --tool=callgrind`, N clients x M events
# fan-out, instructions (Ir) of the Herald process split by phase with `callgrind_control --dump`:
#
#   startup   process start until /health answers
#   connect   N WebSocket handshakes (dumped once Herald reports N websockets)
#   publish   M publishes, their fan-out to the N clients, and the N clients closing
#   calib     N more clients connect and close with no events; close = calib - connect
#
#   Ir per delivery = (publish - close) / (N x M)      (also given gross: publish / (N x M))
#
# Ir is counted in user space only (valgrind does not see the kernel); it is repeatable to
# within a fraction of a percent from run to run, unlike wall time on a shared machine.
#
#   bench/callgrind.sh [-c 1000] [-e 100] [--in-flight 1] [--redis] [--threads 1] [--herald-bin PATH] [--top 25]
#
# --threads N runs Herald with N reactors. Valgrind runs one thread at a time, so turns and
# batches differ from a real run; the instructions are what each reactor executed.
#
# Appends one JSON line to bench/out/<time>-callgrind.jsonl (kind "callgrind": the figures and
# the top functions of the publish phase), keeps the callgrind.out.* files next to it, prints a
# summary, and re-runs bench/report.py (if a matrix run exists) so bench/RESULTS.md shows it.
set -uo pipefail
export CG_ARGS="$*"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BENCH="$ROOT/bench"
OUT_DIR="$BENCH/out"
N=1000; M=100; INFLIGHT=1; USE_REDIS=0; TOP=25; THREADS=1
HERALD_BIN="${HERALD_BIN:-}"; GEN_BIN="${GEN_BIN:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        -c|--clients) N="$2"; shift 2 ;;
        -e|--events) M="$2"; shift 2 ;;
        --in-flight) INFLIGHT="$2"; shift 2 ;;
        --redis) USE_REDIS=1; shift ;;
        --threads) THREADS="$2"; shift 2 ;;
        --herald-bin) HERALD_BIN="$2"; shift 2 ;;
        --top) TOP="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "callgrind.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null \
    || { echo "callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] || continue
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    PIDS=()
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
die() { log "error: $*"; exit 2; }

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 12000 ))
        [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
    done
    return 1
}

# ---- binaries: private copies (the working tree may be rebuilt meanwhile)
PRIV="$(mktemp -d /tmp/herald-callgrind.XXXXXX)"
if [ -n "$HERALD_BIN" ] && [ -z "$GEN_BIN" ] && [ -x "$(dirname "$HERALD_BIN")/herald-bench" ]; then
    GEN_BIN="$(dirname "$HERALD_BIN")/herald-bench"
fi
pkgs=()
[ -z "$HERALD_BIN" ] && pkgs+=(-p herald)
[ -z "$GEN_BIN" ] && pkgs+=(-p herald-bench)
if [ ${#pkgs[@]} -gt 0 ]; then
    (cd "$ROOT" && timeout 1200 cargo build --release "${pkgs[@]}" --quiet) || die "cargo build failed"
fi
cp "${HERALD_BIN:-$ROOT/target/release/herald}" "$PRIV/herald" || die "no herald binary"
cp "${GEN_BIN:-$ROOT/target/release/herald-bench}" "$PRIV/herald-bench" || die "no herald-bench binary"
if [ -n "$HERALD_BIN" ] && [ -f "$(dirname "$HERALD_BIN")/COMMIT" ]; then
    read -r COMMIT DIRTY < "$(dirname "$HERALD_BIN")/COMMIT"
else
    COMMIT="$(git -C "$ROOT" rev-parse HEAD)"; DIRTY="$(git -C "$ROOT" status --short src | wc -l)"
fi

mkdir -p "$OUT_DIR"
RUN_ID="$(date +%Y%m%d-%H%M%S)-callgrind"
DIR="$OUT_DIR/$RUN_ID"; mkdir -p "$DIR"
JSONL="$OUT_DIR/$RUN_ID.jsonl"

# ---- Redis (optional)
RPID=""; RURL=""; MODE=embedded
if [ "$USE_REDIS" = 1 ]; then
    MODE=redis
    RPORT="$(free_port)" || die "no free port"
    redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning \
        >"$DIR/redis.log" 2>&1 &
    RPID=$!; PIDS+=("$RPID")
    for _ in $(seq 1 50); do [ "$(redis-cli -p "$RPORT" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
    RURL="redis://127.0.0.1:$RPORT"
fi

# ---- Herald under callgrind (valgrind runs it in the same process: $! is Herald)
PORT="$(free_port)" || die "no free port"
HARGS=(--port "$PORT" --bind 127.0.0.1 --log-level warn)
[ "$THREADS" != 1 ] && HARGS+=(--threads "$THREADS")
[ -n "$RURL" ] && HARGS+=(--redis "$RURL")
valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.out.%p" \
    "$PRIV/herald" "${HARGS[@]}" >"$DIR/herald.log" 2>&1 &
HPID=$!; PIDS+=("$HPID")
ok=0
for _ in $(seq 1 600); do  # valgrind starts slowly: up to 60 s
    kill -0 "$HPID" 2>/dev/null || break
    if curl -sf -m 5 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 \
        && ss -Htlnp "sport = :$PORT" | grep -q "pid=$HPID,"; then ok=1; break; fi
    sleep 0.1
done
[ "$ok" = 1 ] || die "Herald under valgrind did not come up (see $DIR/herald.log)"
log "Herald (pid $HPID, $MODE) under callgrind on port $PORT"

websockets() { curl -sf -m 20 "http://127.0.0.1:$PORT/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["websockets"])' 2>/dev/null || echo -1; }
dump() { callgrind_control --dump="$1" "$HPID" >/dev/null 2>&1 || log "callgrind_control --dump=$1 failed"; }
wait_ws() { # until websockets == $1 (bounded, ~120 s)
    local i w
    for i in $(seq 1 240); do
        w="$(websockets)"; [ "$w" = "$1" ] && return 0
        sleep 0.5
    done
    log "websockets stayed at $w (wanted $1)"; return 1
}
wait_idle() { # no client connections left (the /health poll's own is not established for long)
    local i
    for i in $(seq 1 240); do
        [ "$(ss -Htn state established "sport = :$PORT" | wc -l)" -le 0 ] && [ "$(websockets)" = 0 ] && return 0
        sleep 0.5
    done
    return 1
}

dump startup
# ---- connect + publish
GARGS=(-p "$PORT" -c "$N" --handshake-timeout 60 --connect-timeout 300 --settle-timeout 120
    --max-duration 900 --progress-interval 5)
PUBARGS=(-e "$M" --in-flight "$INFLIGHT")
[ -n "$RURL" ] && PUBARGS+=(--publish redis --redis "$RURL")
log "connect $N clients, then $M events (in flight $INFLIGHT)"
timeout -k 10 950 "$PRIV/herald-bench" "${GARGS[@]}" --idle 15 "${PUBARGS[@]}" >"$DIR/gen-publish.json" 2>"$DIR/gen-publish.log" &
GPID=$!; PIDS+=("$GPID")
wait_ws "$N" || die "clients did not all connect"
dump connect
wait "$GPID"; GRC=$?
wait_idle || log "connections did not all close"
dump publish
[ "$GRC" = 0 ] || log "generator exit $GRC (see $DIR/gen-publish.log)"

# ---- calibration: N clients connect and close, no events. herald-bench closes a client once
# it has every event, so with none it closes at once (no moment with N open to dump at): the
# dump holds N connects and N closes, and the connect phase's Ir is taken off in the figures.
timeout -k 10 950 "$PRIV/herald-bench" "${GARGS[@]}" -e 0 >"$DIR/gen-close.json" 2>"$DIR/gen-close.log" &
GPID=$!; PIDS+=("$GPID")
wait "$GPID"
wait_idle || log "calibration connections did not all close"
dump calib

kill -TERM "$HPID"
for _ in $(seq 1 300); do kill -0 "$HPID" 2>/dev/null || break; sleep 0.1; done
wait "$HPID" 2>/dev/null
[ -n "$RPID" ] && kill -TERM "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
PIDS=()

# ---- figures
python3 - "$DIR" "$JSONL" "$N" "$M" "$INFLIGHT" "$MODE" "$COMMIT" "$DIRTY" "$TOP" "$THREADS" <<'EOF'
import glob, json, os, re, subprocess, sys, time
d, jsonl, n, m, inflight, mode, commit, dirty, top, threads = sys.argv[1:]
if int(threads) > 1:
    mode += f", {threads} reactors"  # its own row and top list in bench/report.py
n, m, top = int(n), int(m), int(top)
ir = {}
files = {}
for f in glob.glob(os.path.join(d, "callgrind.out.*")):
    trig, tot = None, None
    with open(f, errors="replace") as fh:
        for line in fh:
            if line.startswith("desc: Trigger:"):
                trig = line.split(":", 2)[2].strip()
            elif line.startswith(("summary:", "totals:")):
                tot = int(line.split()[1])
                break
    # "dump startup" (callgrind_control --dump=startup) or "Program termination"
    if trig and trig.startswith("dump "):
        name = trig.split(None, 1)[1].strip()
    elif trig and "termination" in trig:
        name = "exit"
    else:
        name = os.path.basename(f)
    ir[name] = tot
    files[name] = f
try:
    gen = json.loads([l for l in open(os.path.join(d, "gen-publish.json")) if l.startswith("{")][-1])
except Exception:
    gen = {}
deliv = gen.get("deliveries") or n * m
pub, calib, conn = ir.get("publish"), ir.get("calib"), ir.get("connect")
close = calib - conn if calib is not None and conn is not None else None
net = pub - close if pub is not None and close is not None else None
def self_costs(path):
    """Self Ir per function from a callgrind dump (callgrind_annotate 3.19 mis-attributes
    mid-run dumps, so the file is read here): cost lines count for the current fn=, except
    the line after a calls= line (a call's inclusive cost)."""
    names, cost, obj_of = {}, {}, {}
    cur, skip, ob = None, False, None
    obnames = {}
    def name(tbl, v):
        m = re.match(r"\((\d+)\)\s*(.*)", v)
        if not m:
            return v
        i, n = m.group(1), m.group(2)
        if n:
            tbl[i] = n
        return tbl.get(i, v)
    with open(path, errors="replace") as fh:
        for line in fh:
            if line.startswith("ob="):
                ob = name(obnames, line[3:].strip())
            elif line.startswith("fn="):
                cur = name(names, line[3:].strip())
                obj_of.setdefault(cur, ob)
            elif line.startswith("cfn="):
                name(names, line[4:].strip())
            elif line.startswith("cob="):
                name(obnames, line[4:].strip())
            elif line.startswith("calls="):
                skip = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    cost[cur] = cost.get(cur, 0) + int(parts[1])
    return cost, obj_of
lines = []
if "publish" in files:
    cost, obj_of = self_costs(files["publish"])
    total = ir.get("publish") or sum(cost.values()) or 1
    for fn, c in sorted(cost.items(), key=lambda kv: -kv[1])[:top]:
        ob = os.path.basename(obj_of.get(fn) or "")
        lines.append(f"{c:>13,} {100 * c / total:5.1f}%  {fn}" + (f"  [{ob}]" if ob and ob != "herald" else ""))
def short(l):
    return l
top_txt = "\n".join(short(l) for l in lines)
rec = {"kind": "callgrind", "date": time.strftime("%Y-%m-%d %H:%M"), "mode": mode, "threads": int(threads), "clients": n,
       "events": m, "in_flight": int(inflight), "deliveries": deliv, "generator_ok": gen.get("ok"),
       "lost": gen.get("lost"), "ir": ir,
       "ir_startup": ir.get("startup"), "ir_connect": ir.get("connect"),
       "ir_connect_per_client": (ir["connect"] / n) if ir.get("connect") else None,
       "ir_publish_gross": pub, "ir_close": close,
       "ir_close_per_client": close / n if close else None,
       "ir_publish": net, "ir_per_delivery": (net / deliv) if net else None,
       "ir_per_delivery_gross": (pub / deliv) if pub else None,
       "commit": commit, "dirty_src_files": int(dirty), "top": top_txt,
       "command": "bench/callgrind.sh " + os.environ.get("CG_ARGS", "")}
with open(jsonl, "a") as f:
    f.write(json.dumps(rec) + "\n")
print(f"callgrind ({mode}, {n} clients x {m} events = {deliv} deliveries, generator ok={gen.get('ok')}):")
for k in ("startup", "connect", "publish", "calib", "exit"):
    if k in ir:
        print(f"  Ir {k:<9} {ir[k]:>16,}")
if rec["ir_connect_per_client"]:
    print(f"  Ir per connect      {rec['ir_connect_per_client']:>12,.0f}")
if rec["ir_close_per_client"]:
    print(f"  Ir per close        {rec['ir_close_per_client']:>12,.0f}")
if rec["ir_per_delivery"]:
    print(f"  Ir per delivery     {rec['ir_per_delivery']:>12,.0f}   (gross, closes included: {rec['ir_per_delivery_gross']:,.0f})")
print("top functions, publish phase (self Ir):")
print(top_txt)
print(f"-> {jsonl}")
EOF
rm -rf "$PRIV"
if ls "$OUT_DIR"/*-matrix.jsonl >/dev/null 2>&1; then
    py=python3; [ -x "$BENCH/.venv/bin/python" ] && py="$BENCH/.venv/bin/python"
    "$py" "$BENCH/report.py" --out-dir "$OUT_DIR" --bench-dir "$BENCH" >&2 || true
fi
