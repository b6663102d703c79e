#!/usr/bin/env bash
# Creates tests/autobahn/.venv: a Python 2.7.18 virtualenv with Autobahn|Testsuite
# (wstest) and every dependency pinned in requirements.txt.
#
# Idempotent: does nothing if the venv exists and was built from the current
# requirements.txt (a sha256 stamp is kept in .venv/.requirements.sha256).
# Quiet unless something fails (then the log is printed).
#
# How: Python 2.7.18 comes from pyenv ($HOME/.pyenv/versions/2.7.18, installed
# with `pyenv install 2.7.18` only if missing). The venv is created by
# virtualenv 20.21.1 (the last line able to create Python 2 environments),
# installed into a throwaway Python 3 bootstrap venv in a temp dir that is
# deleted afterwards. Packages are installed with --no-deps from PyPI; the
# compiled ones (cryptography, cffi, zope.interface) must come as manylinux
# wheels, so no compiler or OpenSSL headers are needed and no apt packages
# are installed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PY27="${PY27:-$HOME/.pyenv/versions/2.7.18/bin/python}"
PY3="${PY3:-python3}"
VIRTUALENV_VERSION="20.21.1"   # must stay < 20.22 (20.22 dropped Python 2 targets)

want="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [[ -x "$VENV/bin/wstest" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

LOG="$(mktemp /tmp/autobahn-setup.XXXXXX.log)"
BOOT="$(mktemp -d /tmp/autobahn-boot.XXXXXX)"
cleanup() { rm -rf "$BOOT"; }
trap cleanup EXIT
fail() {
    echo "setup.sh: $1 (log: $LOG)" >&2
    tail -n 60 "$LOG" >&2 || true
    exit 1
}
run() { "$@" >>"$LOG" 2>&1; }

# 1. Python 2.7.18
if [[ ! -x "$PY27" ]]; then
    command -v pyenv >/dev/null 2>&1 || fail "Python 2.7.18 not found at $PY27 and pyenv is not installed"
    run timeout 1800 pyenv install -s 2.7.18 || fail "pyenv install 2.7.18 failed"
    [[ -x "$PY27" ]] || fail "pyenv install finished but $PY27 is missing"
fi
run timeout 30 "$PY27" -c 'import sys, ssl; assert sys.version_info[:3] == (2, 7, 18)' \
    || fail "$PY27 is not a working Python 2.7.18 with ssl"

# 2. Bootstrap virtualenv (Python 3) and create the 2.7 venv
run timeout 120 "$PY3" -m venv "$BOOT" || fail "could not create bootstrap venv with $PY3"
run timeout 300 "$BOOT/bin/pip" install --no-input "virtualenv==$VIRTUALENV_VERSION" \
    || fail "pip install virtualenv==$VIRTUALENV_VERSION failed"
rm -rf "$VENV"
run timeout 300 "$BOOT/bin/virtualenv" --no-periodic-update -p "$PY27" "$VENV" \
    || fail "virtualenv -p $PY27 failed"

# 3. Pinned requirements (no dependency resolution: requirements.txt is complete)
run timeout 900 "$VENV/bin/pip" install --no-input --disable-pip-version-check --no-deps \
    --only-binary=cryptography,cffi,zope.interface -r "$REQ" \
    || fail "pip install -r requirements.txt failed"
run timeout 120 "$VENV/bin/pip" check --disable-pip-version-check || fail "pip check failed (requirements.txt incomplete?)"
run timeout 120 env PYTHONWARNINGS=ignore "$VENV/bin/wstest" --autobahnversion \
    || fail "wstest does not start"

echo "$want" > "$STAMP"
rm -f "$LOG"
