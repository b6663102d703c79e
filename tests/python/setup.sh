#!/usr/bin/env bash
# Creates tests/python/.venv with the packages pinned in requirements.txt (from PyPI, with the
# system python3's venv and pip). Idempotent: nothing to do if the venv was built from the
# current requirements.txt (a sha256 stamp is kept in .venv/.requirements.sha256). Safe to call
# from several test processes at once (flock). Quiet unless something fails.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
exec 9>"$HERE/.setup.lock"
flock -w 600 9
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi
LOG="$(mktemp /tmp/python-setup.XXXXXX.log)"
fail() {
    echo "tests/python/setup.sh: $1 (log: $LOG)" >&2
    tail -n 40 "$LOG" >&2 || true
    exit 1
}
rm -rf "$VENV"
# Debian's python3 needs python3-venv for ensurepip (tests/run.sh installs it).
timeout 120 python3 -m venv "$VENV" >>"$LOG" 2>&1 || fail "python3 -m venv failed"
timeout 300 "$VENV/bin/pip" install --no-input --disable-pip-version-check -q -r "$REQ" \
    >>"$LOG" 2>&1 || fail "pip install -r requirements.txt failed"
echo "$want" > "$STAMP"
rm -f "$LOG"
