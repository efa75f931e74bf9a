# trace-proxy container image.
#
#   docker build -t trace-proxy --build-arg TRACE_PROXY_COMMIT=$(git rev-parse --short=12 HEAD) .
#
# BuildKit (the default since Docker 23) or the legacy builder; no Dockerfile frontend is pulled.
# Build arguments:
#   RUST_IMAGE          the builder: Rust on Debian 12, so the binary needs the glibc the runtime has
#   RUNTIME_IMAGE       the runtime base: glibc, libgcc and CA certificates, no shell, no package
#                       manager (any Debian 12 based image works, e.g. debian:bookworm-slim)
#   TRACE_PROXY_COMMIT  the git commit `trace-proxy --version` prints (the context has no .git)
#   BINARY_FROM         "build" (default): compile here. "prebuilt": take the binary from
#                       prebuilt/trace-proxy in the build context instead — how
#                       scripts/image-test.sh builds this same runtime stage where no registry
#                       (and so no Rust image) is reachable. Needs BuildKit, which skips the
#                       unused `build` stage.
#
# The image runs as uid/gid 65532 (distroless "nonroot"), reads /etc/trace-proxy/proxy.toml
# (config/container.toml: everything from the environment, see there) and keeps its state —
# the spool journal — in the volume /var/lib/trace-proxy.

ARG RUST_IMAGE=docker.io/library/rust:1.89-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY_FROM=build

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
ARG TRACE_PROXY_COMMIT=
# The release profile leaves out debug information (Cargo.toml); the state directory is made
# here because the runtime base has no shell to make it.
RUN cargo build --release --locked --bin trace-proxy \
 && install -D -m 0755 target/release/trace-proxy /out/trace-proxy \
 && install -d /out/state

FROM scratch AS prebuilt
COPY prebuilt/ /out/

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=binary /out/trace-proxy /usr/local/bin/trace-proxy
COPY --from=binary --chown=65532:65532 /out/state/ /var/lib/trace-proxy/
COPY config/container.toml /etc/trace-proxy/proxy.toml
USER 65532:65532
ENV TRACE_PROXY_CONFIG=/etc/trace-proxy/proxy.toml
# A new named volume starts as a copy of this directory, owned by 65532.
VOLUME ["/var/lib/trace-proxy"]
EXPOSE 8080 8079
# /readyz on the admin listener (TRACE_PROXY_ADMIN_LISTEN, asked on loopback): healthy while the
# proxy can record, into PostgreSQL or the spool journal.
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
  CMD ["/usr/local/bin/trace-proxy", "health", "--timeout", "5s"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/trace-proxy"]
CMD ["serve"]
