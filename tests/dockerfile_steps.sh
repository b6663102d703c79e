#!/usr/bin/env bash
# Runs the build stage of the Dockerfile outside Docker (there is no Docker engine on the
# machines that test Herald): each WORKDIR, ENV, COPY and RUN of the stage `AS build`, in
# order, in a fresh temporary folder standing in for the image's WORKDIR, with the
# repository as the build context. What it proves: the layer layout builds (manifests and
# stubs load as a workspace and build with --locked; the real sources then compile, and are
# really compiled, not mistaken for the stubs). What it cannot: the base image, Kaniko.
#
#   tests/dockerfile_steps.sh --check     every `cargo build` run as `cargo check` (CI: cheap;
#       the checked dependencies are kept in target/dockerfile-check for the next run)
#   tests/dockerfile_steps.sh --measure   the steps as written (release), timed: a clean
#       build (deps layer + sources layer), then a one-line change to src/ rebuilt from the
#       cached deps layer as Kaniko would (the sources layer again), timed too.
set -euo pipefail
mode="${1:---check}"
case "$mode" in --check | --measure) ;; *) echo "usage: $0 [--check|--measure]" >&2; exit 2 ;; esac
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/herald-dockerfile.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The image's own target folder, as in the Dockerfile: nothing from the caller's builds.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR RUSTFLAGS CARGO_INCREMENTAL

# The build stage's instructions, one per line (continuations joined, comments dropped).
steps="$work/steps"
awk '
  /^[[:space:]]*#/ { next }
  { line = line $0 }
  /\\$/ { sub(/\\$/, "", line); next }
  { if (line ~ /[^[:space:]]/) print line; line = "" }
' "$repo/Dockerfile" | awk '
  toupper($1) == "FROM" { in_build = ($0 ~ / [Aa][Ss] build$/); next }
  in_build
' >"$steps"
grep -q . "$steps" || { echo "no build stage (FROM ... AS build) in the Dockerfile" >&2; exit 1; }

root="$work/root"
mkdir -p "$root"
workdir="$root"
declare -a env_pairs=()
declare -a runs_after_sources=()
step_no=0

run_step() { # $1: command, as written in the Dockerfile
  local cmd="$1" TIMEFORMAT='%R s wall, %U s user + %S s sys'
  [ "$mode" = --check ] && cmd="${cmd//cargo build/cargo check}"
  { time (cd "$workdir" && env "${env_pairs[@]}" bash -euo pipefail -c "$cmd" 2>"$work/run.log") \
    || { cat "$work/run.log" >&2; echo "step failed: RUN $1" >&2; exit 1; }; } 2>"$work/time"
  printf '  RUN (%s) %s\n' "$(cat "$work/time")" "$1"
}

# .dockerignore is an allowlist ("*", then "!path" lines): a COPY source must be listed, itself
# or a folder above it, or Docker would not find it in the context.
in_context() {
  local path="$1" entry
  while read -r entry; do
    entry="${entry#!}"
    [ "$path" = "$entry" ] || [[ "$path" == "$entry"/* ]] && return 0
  done < <(grep '^!' "$repo/.dockerignore")
  return 1
}

copy_step() { # COPY [--chown..] src... dest, from the build context
  local args=() a
  for a in "$@"; do [[ "$a" == --* ]] || args+=("$a"); done
  local dest="${args[-1]}"
  unset 'args[-1]'
  [[ "$dest" == /* ]] && dest="$root$dest" || dest="$workdir/$dest"
  if [ ${#args[@]} -gt 1 ] || [[ "$dest" == */ ]]; then mkdir -p "$dest"; fi
  for a in "${args[@]}"; do
    [ -e "$repo/$a" ] && in_context "$a" || { echo "COPY: $a is not in the build context" >&2; exit 1; }
    if [ -d "$repo/$a" ]; then mkdir -p "$dest" && cp -R "$repo/$a/." "$dest/"; else cp "$repo/$a" "$dest"; fi
  done
  echo "  COPY $*"
}

echo "==> Dockerfile build stage, $mode, in $root"
seen_sources=0
while read -r instr rest; do
  step_no=$((step_no + 1))
  case "${instr^^}" in
    WORKDIR)
      workdir="$root$rest"
      mkdir -p "$workdir"
      if [ "$mode" = --check ]; then
        # Checked dependencies are kept between runs (the first run pays for them): Herald's
        # own artifacts are still removed by the deps step and checked anew from the sources.
        mkdir -p "$repo/target/dockerfile-check"
        ln -s "$repo/target/dockerfile-check" "$workdir/target"
      fi
      echo "  WORKDIR $rest" ;;
    ENV)
      for pair in $rest; do env_pairs+=("$pair"); done
      echo "  ENV $rest" ;;
    COPY)
      # shellcheck disable=SC2086
      copy_step $rest
      case "$rest" in *src\ src*) seen_sources=1 ;; esac ;;
    RUN)
      if [ "$seen_sources" = 1 ]; then
        runs_after_sources+=("$rest")
        if [ "$mode" = --measure ] && [ ! -e "$work/deps-layer-target" ]; then
          cp -a "$workdir/target" "$work/deps-layer-target"
        fi
      fi
      run_step "$rest" ;;
    *) echo "unsupported instruction in the build stage: $instr" >&2; exit 1 ;;
  esac
done <"$steps"

# The sources layer must have compiled Herald from the real sources.
if ! grep -Eq '(Compiling|Checking) herald v' "$work/run.log"; then
  echo "the sources step did not compile herald: the stubs' artifacts were taken for it" >&2
  exit 1
fi
if [ "$mode" = --measure ]; then
  bin="$workdir/target/release/herald"
  "$bin" --help | grep -q STATIC_DIR || { echo "built binary is not the real herald" >&2; exit 1; }
  echo "  binary: $(du -h "$bin" | cut -f1) $bin"
  # Kaniko reruns the sources layer on top of the cached deps layer: restore that state,
  # change one line, and run the sources layer's steps again.
  rm -rf "$workdir/target" && mv "$work/deps-layer-target" "$workdir/target"
  echo "// one-line change" >>"$workdir/src/lib.rs"
  echo "==> after a one-line change to src/lib.rs (deps layer cached)"
  for cmd in "${runs_after_sources[@]}"; do run_step "$cmd"; done
fi
echo "==> ok"
