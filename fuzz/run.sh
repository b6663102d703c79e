#!/usr/bin/env bash
# Fuzzes each parser for a bounded time, one target after another.
#
#   fuzz/run.sh [seconds-per-target]     (default 60)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, sanitizer coverage); RUSTC_BOOTSTRAP=1 lets the stable toolchain take
# them, so no nightly is needed. Set SANITIZER=none to build without AddressSanitizer.
#
# Prints, per target, the executions and whether anything was found; exits 1 if any target
# found a crash, hang or out-of-memory input (kept in fuzz/artifacts/<target>/). New inputs that
# add coverage land in fuzz/corpus/<target>/ (only seed-* files are tracked).
set -euo pipefail

secs=${1:-60}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target]" >&2
    exit 2
fi
targets=(http_request ws_frames resp_replies form)
sanitizer=${SANITIZER:-address}
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP=1

logs=target/run-logs
mkdir -p "$logs"
echo "building fuzz targets (sanitizer: $sanitizer)"
if ! timeout 1200 cargo fuzz build -s "$sanitizer" >"$logs/build.log" 2>&1; then
    tail -n 40 "$logs/build.log" >&2
    echo "build failed (log: fuzz/$logs/build.log)" >&2
    exit 2
fi

artifacts() { find "artifacts/$1" -type f 2>/dev/null | sort || true; }

failed=0
printf '%-14s %12s %6s  %s\n' target executions secs result
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    before=$(artifacts "$t")
    start=$SECONDS
    status=0
    # -max_total_time bounds the run; -timeout flags a single slow input as a hang; the outer
    # timeout is a backstop should libFuzzer itself not stop.
    timeout --kill-after=10 $((secs + 60)) \
        cargo fuzz run -s "$sanitizer" "$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$logs/$t.log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' || true)
    found=$(comm -13 <(echo "$before") <(artifacts "$t") | grep . || true)
    if [[ $status -eq 0 && -z $found ]]; then
        result="nothing found"
    else
        failed=1
        result="FOUND (exit $status): ${found:-see log} -- log: fuzz/$logs/$t.log"
    fi
    printf '%-14s %12s %6s  %s\n' "$t" "${execs:-?}" $((SECONDS - start)) "$result"
done

if [[ $failed -ne 0 ]]; then
    echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer <target> <artifact>;" \
        "minimize: RUSTC_BOOTSTRAP=1 cargo fuzz tmin -s $sanitizer <target> <artifact>" >&2
    exit 1
fi
