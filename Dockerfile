# healthcheck-pipeline: one multi-stage Dockerfile for both services.
#
#   docker build --target checker -t healthcheck-pipeline/checker:dev .
#   docker build --target sink    -t healthcheck-pipeline/sink:dev .
#
# (scripts/images.sh builds both with version labels.) Works with the classic
# builder and with BuildKit; it needs no BuildKit-only syntax, so no `# syntax=`
# line and no cache mounts. Dependency caching instead: the `skeleton` stage
# reduces the source tree to the Cargo manifests, Cargo.lock and empty target
# files, and the `builder` stage compiles every dependency from that skeleton
# in its own layer. Editing a .rs file therefore only rebuilds the workspace's
# own crates; changing a Cargo.toml or Cargo.lock rebuilds the dependencies.
#
# Offline / air-gapped builds: run `cargo vendor` first (see docker/README.md);
# the skeleton stage carries vendor/ and .cargo/config.toml into the build,
# and --build-arg CARGO_NET_OFFLINE=true makes cargo fail instead of fetching.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# ---------------------------------------------------------------------------
# toolchain: the official Rust image; it already has gcc, make, perl,
# pkg-config, libssl-dev and zlib1g-dev (buildpack-deps). Installed only if
# some are missing, so a complete image needs no network here.
FROM ${RUST_IMAGE} AS toolchain
RUN set -eu; missing=""; \
    command -v gcc >/dev/null        || missing="$missing gcc libc6-dev"; \
    command -v make >/dev/null       || missing="$missing make"; \
    command -v perl >/dev/null       || missing="$missing perl"; \
    command -v pkg-config >/dev/null || missing="$missing pkg-config"; \
    [ -e /usr/include/openssl/ssl.h ] || missing="$missing libssl-dev"; \
    [ -e /usr/include/zlib.h ]        || missing="$missing zlib1g-dev"; \
    if [ -n "$missing" ]; then \
        echo "installing:$missing"; \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0 \
    # zlib is linked statically: distroless cc has no libz.so.1
    LIBZ_SYS_STATIC=1 \
    # every C function and object in a section of its own, so that the linker's
    # --gc-sections drops what the services never call. The cc crate does this
    # already; librdkafka's own build (rdkafka-sys) does not, and takes CFLAGS
    # after its -O2: about 0.7 MB less per binary, optimisation level unchanged.
    CFLAGS="-ffunction-sections -fdata-sections"

# ---------------------------------------------------------------------------
# skeleton: manifests + lock file + empty target files. Re-runs on every
# source change (cheap); its output only changes when a manifest does.
#
# This is what cargo-chef's `prepare` / `cook` do, kept by hand on purpose
# (measured on this 2-core machine, shared with other builds, 2026-12-01):
# - cargo-chef is not in the rust image; `cargo install cargo-chef --locked`
#   (0.1.78) compiles 87 crates: 11 min 14 s here, about as long as the
#   dependency layer it would cache (the whole first build of both images took
#   11 min 34 s at the same time), paid again on every builder without a layer
#   cache (a fresh CI machine). The stage below takes 8 s without any cache.
# - the air-gapped build (vendor/ + CARGO_NET_OFFLINE=true, docker/README.md)
#   could not install it at all: no registry to fetch it from.
# - no prebuilt cargo-chef image can be pulled where no container registry is
#   reached (docker/standins/ exist for that reason).
# Switch when the builder image ships cargo-chef: it also covers layouts this
# stage does not (e.g. targets declared at custom paths in a Cargo.toml).
FROM toolchain AS skeleton
COPY . /full
RUN set -eu; cd /full; mkdir -p /skeleton; \
    for f in Cargo.lock rust-toolchain rust-toolchain.toml .cargo vendor; do \
        if [ -e "$f" ]; then cp -a "$f" /skeleton/; fi; \
    done; \
    find . -name Cargo.toml -not -path './vendor/*' -not -path './target/*' | while read -r manifest; do \
        dir=$(dirname "$manifest"); mkdir -p "/skeleton/$dir"; cp "$manifest" "/skeleton/$manifest"; \
        if [ -f "$dir/build.rs" ]; then cp "$dir/build.rs" "/skeleton/$dir/build.rs"; fi; \
        find "$dir" -name '*.rs' \( -path "$dir/src/lib.rs" -o -path "$dir/src/main.rs" -o -path "$dir/src/bin/*" \
              -o -path "$dir/tests/*" -o -path "$dir/benches/*" -o -path "$dir/examples/*" \) \
              -not -path "$dir/*/target/*" | while read -r rs; do \
            mkdir -p "/skeleton/$(dirname "$rs")"; \
            case "$rs" in */src/lib.rs) : > "/skeleton/$rs" ;; *) echo 'fn main() {}' > "/skeleton/$rs" ;; esac; \
        done; \
    done; \
    find /skeleton -exec touch -h -d '2000-01-01 00:00:00' {} +

# ---------------------------------------------------------------------------
# builder: dependencies first (cached layer), then the workspace itself.
FROM toolchain AS builder
ARG CARGO_NET_OFFLINE=false
# The images use a size-optimised variant of the workspace's release profile
# (about a third smaller binaries, for images under 30 MB); override with e.g.
# --build-arg RELEASE_OPT_LEVEL=3 --build-arg RELEASE_LTO=thin --build-arg RELEASE_CODEGEN_UNITS=4
ARG RELEASE_OPT_LEVEL=z
ARG RELEASE_LTO=fat
ARG RELEASE_CODEGEN_UNITS=1
ENV CARGO_NET_OFFLINE=${CARGO_NET_OFFLINE} \
    CARGO_PROFILE_RELEASE_OPT_LEVEL=${RELEASE_OPT_LEVEL} \
    CARGO_PROFILE_RELEASE_LTO=${RELEASE_LTO} \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=${RELEASE_CODEGEN_UNITS}
COPY --from=skeleton /skeleton/ /src/
RUN cargo build --release --locked --bin checker --bin sink \
 && cargo clean --release --package checker --package sink --package common
COPY . /src/
RUN set -eu; \
    # sources newer than the skeleton's artifacts, whatever mtimes COPY kept
    find /src/services -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bin checker --bin sink; \
    mkdir -p /out/lib; \
    for bin in checker sink; do \
        cp "target/release/$bin" "/out/$bin"; \
        strip --strip-unneeded "/out/$bin"; \
        echo "== ldd $bin"; ldd "/out/$bin"; \
        # copy any shared library that distroless cc does not ship
        ldd "/out/$bin" | awk '/=> \// {print $1, $3}' | while read -r name path; do \
            case "$name" in \
                libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libgcc_s.so*|libssl.so*|libcrypto.so*|libstdc++.so*|libgomp.so*|ld-linux*) ;; \
                *) echo "bundling $path"; cp -L "$path" /out/lib/ ;; \
            esac; \
        done; \
    done; \
    ls -l /out /out/lib

# ---------------------------------------------------------------------------
# runtime images: distroless cc (glibc, libssl3, CA certificates), no shell,
# user nonroot (65532). Compose healthchecks run `<binary> healthcheck`.
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
ARG REVISION=unknown
ARG SOURCE_URL=https://example.invalid/healthcheck-pipeline
LABEL org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="healthcheck-pipeline"
COPY --from=builder /out/lib/ /usr/local/lib/healthcheck-pipeline/
# MIMALLOC_ALLOW_THP=0: no transparent huge pages for the process, also on nodes whose THP
# setting is `always` (the binaries already never ask for them; services/checker/src/main.rs).
ENV LD_LIBRARY_PATH=/usr/local/lib/healthcheck-pipeline \
    LOG_FORMAT=json \
    MIMALLOC_ALLOW_THP=0 \
    RUST_LOG=info
USER 65532:65532
WORKDIR /home/nonroot

FROM runtime AS checker
LABEL org.opencontainers.image.title="healthcheck-pipeline checker" \
      org.opencontainers.image.description="Probes HTTP(S) targets on a fixed-rate schedule and publishes every result to a Kafka topic."
COPY --from=builder /out/checker /usr/local/bin/checker
ENV ADMIN_ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/checker"]

FROM runtime AS sink
LABEL org.opencontainers.image.title="healthcheck-pipeline sink" \
      org.opencontainers.image.description="Consumes probe results from a Kafka topic and writes each one into PostgreSQL exactly once."
COPY --from=builder /out/sink /usr/local/bin/sink
ENV ADMIN_ADDR=0.0.0.0:8081
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/sink"]
