# syntax=docker/dockerfile:1
# The worker for NVIDIA GPUs: `sluice` built with the `cuda` feature (candle's CUDA kernels), on the CUDA runtime.
# Build from the repository's root (no GPU is needed to build):
#   docker build -f deploy/docker/worker-cuda.Dockerfile --build-arg CUDA_COMPUTE_CAP=89 -t sluice-worker-cuda:0.1.0 .
# CUDA_COMPUTE_CAP is the GPUs' compute capability without the dot (80: A100, 86: A10/RTX 30, 89: L4/L40/RTX 40,
# 90: H100): the kernels are compiled for it, since the build cannot ask a GPU. Nodes need the NVIDIA driver and
# device plugin; the chart asks for nvidia.com/gpu and runs `--device cuda:0`.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder
ARG RUST_VERSION=1.95.0
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:${PATH}
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential ca-certificates curl pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
       | sh -s -- -y --no-modify-path --profile minimal --default-toolchain ${RUST_VERSION} \
    && rustc --version
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY proto ./proto
COPY crates ./crates
# crates/cli/Cargo.toml declares test targets under tests/: copied so the workspace is whole (they are not built).
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice-cli --bin sluice --features cuda \
    && install -m 0755 target/release/sluice /usr/local/bin/sluice

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin sluice
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
# The device plugin exposes the GPUs; these tell the NVIDIA container runtime what to mount.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /etc/sluice
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 50051 9464
ENTRYPOINT ["sluice"]
CMD ["worker", "--config", "/etc/sluice/worker.yaml"]
