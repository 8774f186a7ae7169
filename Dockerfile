# syntax=docker/dockerfile:1
#
# The edgemesh agent image, for ordinary builds elsewhere (Docker/BuildKit):
#
#   docker build -t edgemesh/edgemesh:0.1.0 .
#   docker run --rm edgemesh/edgemesh:0.1.0 agent --help
#
# On the development machine there is no Docker engine; there the same image
# is built with buildah by deploy/build-image.sh, and run with podman by
# crates/edgemesh/tests/image_e2e.rs. Both builds assemble the root filesystem
# with the same script, deploy/image/rootfs.sh, and start FROM scratch: the
# agent, `nft` (node mode programs its nftables table through it) and exactly
# the shared libraries the two need, as ldd finds them, plus the dynamic
# loader (31.5 MB, the agent 25.7; see deploy/README.md). image_e2e checks that
# this file copies that root filesystem and sets the same entrypoint, user
# and PATH as build-image.sh.
#
# The binary is linked dynamically against glibc (a musl build needs a musl
# toolchain and target, which the offline development machine does not have):
# libc, libm and libgcc_s, no OpenSSL (TLS is rustls with ring). The libraries
# come from the build stage's Debian, so they always match the binary.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# nft and its libraries, taken into the image by rootfs.sh.
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY deploy/image/rootfs.sh deploy/image/rootfs.sh
# Benches and examples are not needed to build the binary; Cargo.toml's
# workspace members are crates/*.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p edgemesh \
 && deploy/image/rootfs.sh target/release/edgemesh /rootfs

FROM scratch
COPY --from=build /rootfs/ /
# (COPY makes every file root's: the state directory goes to the default user again.)
COPY --from=build --chown=65532:65532 /rootfs/var/lib/edgemesh /var/lib/edgemesh
# The agent finds nft on PATH.
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin
# By default the agent runs as non-root (numeric: there is no /etc/passwd),
# which suffices without interception. deploy/kubernetes runs it as uid 0
# with NET_ADMIN and NET_BIND_SERVICE only, for node mode and DNS on port 53.
USER 65532:65532
# The admin endpoint; DNS is on 169.254.96.16:53 in node mode.
EXPOSE 15020/tcp
ENTRYPOINT ["/usr/local/bin/edgemesh"]
CMD ["agent"]
