# syntax=docker/dockerfile:1
# inferwatch image: built in a Rust stage, run from a slim Debian as a
# non-root user. GPU access comes from the NVIDIA Container Toolkit (the
# device reservation in docker-compose-monitoring.yml), which mounts
# libnvidia-ml.so.1 into the container; without it the daemon runs in mock mode.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
# The config's #[derive(Reload)] (a path dependency, built with the rest).
COPY macros ./macros
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked --bin inferwatch \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin inferwatch

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/inferwatch --create-home inferwatch
COPY --from=build /src/target/release/inferwatch /usr/local/bin/inferwatch
COPY monitoring/inferwatch.yml /etc/inferwatch/inferwatch.yml
# NVML needs the driver's "utility" capability, not compute.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=utility
WORKDIR /var/lib/inferwatch
USER inferwatch
EXPOSE 8790
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD curl -fsS http://127.0.0.1:8790/-/healthy || exit 1
ENTRYPOINT ["/usr/local/bin/inferwatch"]
CMD ["--config", "/etc/inferwatch/inferwatch.yml"]
