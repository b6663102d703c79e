# Herald: multi-stage build, for amd64 and arm64 alike (multi-arch base images, no target
# flags), so kindling on Apple Silicon (arm64 nodes) builds the same file.
#
# Layers are ordered for Kaniko's layer cache (kindling-build): the dependencies are built
# from the manifests and the lock file alone, with stub sources, so a change to src/ or
# static/ reuses that layer and recompiles only Herald itself. tests/dockerfile_steps.sh
# runs these build steps outside Docker (`--check` in CI, `--measure` for the timings in the
# README).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# No debug info in the image's binary: smaller, and faster to build (Cargo.toml keeps line
# tables for local profiling). Symbols stay, so a panic's backtrace still names functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo

# 1. Dependencies. The workspace needs every member's manifest (bench) and a target for each
#    package to load; stub sources stand in for the real ones. Then Herald's own artifacts
#    are removed, so step 2 must compile the real sources whatever their timestamps (COPY
#    may give them an mtime older than the stub build's).
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/
RUN mkdir -p src bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo '' > src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && cargo build --release --locked -p herald \
 && cargo clean --release -p herald \
 && rm -r src

# 2. Herald itself: the only layer rebuilt when the code or the page changes.
COPY build.rs ./
COPY static static
COPY src src
RUN cargo build --release --locked -p herald

FROM debian:bookworm-slim
# /app belongs to the unprivileged user so that `kindling sync` (kubectl cp, as this user)
# can replace the page under /app/static and the binary /app/herald in a running pod.
RUN useradd --system --uid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin herald \
 && install -d -o herald -g herald /app
WORKDIR /app
COPY --from=build --chown=herald:herald /src/target/release/herald /app/herald
# The page on disk, read per request (cached by modification time): a synced edit shows on
# the next reload without a restart. The binary's built-in copy is the fallback without it.
COPY --chown=herald:herald static /app/static
USER herald
# DRAIN_SECS: after SIGTERM, keep serving (with /health at 503 "draining") this long so the
# ingress stops routing here before the WebSockets get their 1001 close; then up to
# SHUTDOWN_GRACE_SECS to finish. 3 + 5 s stays well inside Kubernetes' default 30 s.
ENV PORT=8000 BIND=0.0.0.0 STATIC_DIR=/app/static DRAIN_SECS=3
EXPOSE 8000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/herald"]
