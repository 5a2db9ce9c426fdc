# keywatch's image: the dependencies build in a layer of their own (rebuilt
# only when Cargo.toml or Cargo.lock change), then the source; the runtime
# is a slim Debian with CA certificates, running as a non-root user.
#
#   docker build -t keywatch .
#   docker run --rm -e DATABASE_URL=... keywatch check-config

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# Stand-ins for every declared target, so the dependencies build alone.
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/ingest.rs \
    && echo 'fn main() {}' > benches/latency.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY migrations migrations
COPY scenarios scenarios
COPY src src
COPY benches benches
# Newer than the stand-ins' build, so cargo rebuilds keywatch itself.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin keywatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/keywatch keywatch
COPY --from=build /src/target/release/keywatch /usr/local/bin/keywatch
COPY config/keywatch.toml /etc/keywatch/keywatch.toml
COPY scenarios /usr/share/keywatch/scenarios
USER keywatch
WORKDIR /var/lib/keywatch
# /health and /metrics, reachable from outside the container.
ENV KEYWATCH__SERVER__LISTEN=0.0.0.0:9108
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD curl -fsS http://127.0.0.1:9108/health || exit 1
ENTRYPOINT ["keywatch", "--config", "/etc/keywatch/keywatch.toml"]
CMD ["run"]
