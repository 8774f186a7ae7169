# syntax=docker/dockerfile:1
#
# The edgemesh agent image: built in the Rust image, run on distroless.
#
#   docker build -t edgemesh/edgemesh:0.1.0 .
#   docker run --rm edgemesh/edgemesh:0.1.0 agent --help
#
# The binary is linked dynamically against glibc (a musl build needs a musl
# toolchain and the musl target, which the offline development machine does
# not have). It needs only libc, libm and libgcc_s at run time: no OpenSSL
# (TLS is rustls with ring) and no other system library. The runtime base
# must therefore provide glibc >= the builder's, libgcc_s, and CA certificates
# (for API servers whose CA is not in the kubeconfig); distroless/cc-debian12
# is exactly that (about 25 MB), and matches the builder's Debian 12 glibc.
# A fully static (musl) build could use distroless/static instead.

# The builder's Debian (bookworm) and the runtime's (debian12) must match, so
# the binary never needs a newer glibc than the runtime has.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates crates
# Benches and examples are not needed to build the binary; Cargo.toml's
# workspace members are crates/*.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p edgemesh \
 && install -D -m 0755 target/release/edgemesh /out/usr/local/bin/edgemesh \
 && install -d -m 0750 /out/var/lib/edgemesh

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/edgemesh /usr/local/bin/edgemesh
# The default state directory, writable by the image's non-root user.
COPY --from=build --chown=65532:65532 /out/var/lib/edgemesh /var/lib/edgemesh
# By default the agent runs as non-root: its default ports (DNS 5353, admin
# 15020) are unprivileged. deploy/kubernetes runs it as uid 0 with
# NET_BIND_SERVICE as its only capability, for DNS on port 53.
USER 65532:65532
# DNS (UDP and TCP) and the admin endpoint, at their default ports.
EXPOSE 5353/udp 5353/tcp 15020/tcp
ENTRYPOINT ["/usr/local/bin/edgemesh"]
CMD ["agent"]
