# tally in a container: a builder with the pinned toolchain (Cargo.toml's
# rust-version), then a small Debian runtime with libpq and the binary only.
#
#   docker build -t tally .        # or: podman build -t tally .
#   docker compose up              # with PostgreSQL: see compose.yaml

FROM rust:1.95-slim-bookworm AS builder
# libpq (diesel's PostgreSQL driver links it); SQLite is bundled.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples
RUN cargo build --release --locked --bin tally \
    && cp target/release/tally /usr/local/bin/tally

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpq5 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/tally --create-home tally
COPY --from=builder /usr/local/bin/tally /usr/local/bin/tally
USER 10001
WORKDIR /var/lib/tally
# Listen on every interface inside the container; the SQLite default lives
# in the working directory (mount a volume there, or set DATABASE_URL).
ENV TALLY_BIND=0.0.0.0:8080 \
    TALLY_LOG_FORMAT=json
EXPOSE 8080
# `serve` applies pending migrations, then serves; SIGTERM drains first
# (TALLY_SHUTDOWN_DRAIN), so give the container at least that to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tally"]
CMD ["serve"]
