# Herald: multi-stage build. The binary carries the page, so the runtime image is just it.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p herald

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
USER herald
ENV PORT=8000 BIND=0.0.0.0
EXPOSE 8000
# Kubernetes and kindling stop pods with SIGTERM: Herald closes WebSockets with 1001 and exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/herald"]
