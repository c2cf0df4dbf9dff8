#!/usr/bin/env bash
# Builds, from Debian's packages, local images tagged with the exact names that
# the Dockerfile and docker-compose.yml use, for machines that cannot pull from
# a container registry:
#
#   healthcheck-pipeline/debian:bookworm-minbase   helper: debootstrap --variant=minbase
#   rust:1.95-bookworm                             builder: gcc, make, perl, pkg-config,
#                                                  libssl-dev, zlib1g-dev + the host's Rust toolchain
#   gcr.io/distroless/cc-debian12:nonroot          runtime: glibc, libgcc-s1, libssl3, CA certs, no shell
#   apache/kafka:3.9.0                             stand-in: the tansu broker behind apache/kafka's env
#   postgres:16                                    stand-in: Debian's PostgreSQL behind a postgres-style entrypoint
#   prom/prometheus:v2.53.0                        stand-in: Debian's prometheus
#   healthcheck-pipeline/target-site:local         sample HTTP targets for docker-compose.local.yml
#
# Every image is reused when `docker image inspect` finds it, whatever built it
# (a real image pulled from a registry wins). FORCE_REBUILD=1 rebuilds ours.
# The debootstrap rootfs is cached under $HCP_CACHE_DIR (outside the repo), so
# re-runs take seconds. Stand-in images carry the label
# io.healthcheck-pipeline.standin=true; `scripts/base-images.sh --remove` deletes
# exactly those.
#
# Needs: root (debootstrap), docker, network access to a Debian mirror (the one
# configured in /etc/apt/sources.list*), and for the stand-ins the host's Rust
# toolchain (rustup) and the tansu broker 0.6.0 with this repository's patches
# (~/.cargo/bin/tansu; built by `scripts/stack.sh install-broker` when missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CACHE_DIR="${HCP_CACHE_DIR:-/var/cache/healthcheck-pipeline}"
SUITE=bookworm
FORCE_REBUILD="${FORCE_REBUILD:-0}"
RUST_VERSION="${RUST_VERSION:-1.95}"
TANSU_VERSION=0.6.0
LABEL_STANDIN=io.healthcheck-pipeline.standin

IMG_MINBASE=healthcheck-pipeline/debian:bookworm-minbase
IMG_RUST="rust:${RUST_VERSION}-bookworm"
IMG_DISTROLESS=gcr.io/distroless/cc-debian12:nonroot
IMG_KAFKA=apache/kafka:3.9.0
IMG_POSTGRES=postgres:16
IMG_PROMETHEUS=prom/prometheus:v2.53.0
IMG_TARGET=healthcheck-pipeline/target-site:local

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# want IMAGE: true when IMAGE must be built
want() {
    if [[ "$FORCE_REBUILD" == 1 ]]; then
        if have_image "$1" && [[ "$(docker image inspect -f "{{ index .Config.Labels \"$LABEL_STANDIN\" }}" "$1" 2>/dev/null)" != true ]]; then
            log "$1: present and not one of ours; keeping it despite FORCE_REBUILD=1"
            return 1
        fi
        return 0
    fi
    if have_image "$1"; then
        log "$1: present, reused"
        return 1
    fi
    return 0
}

timed() { # timed LABEL CMD...: runs CMD, logs its duration
    local label=$1 start=$SECONDS
    shift
    "$@"
    log "$label: done in $((SECONDS - start))s"
}

# The Debian archives this machine's apt uses (no host is named here); only
# the minbase image needs them, and says so when apt has none.
MIRROR="${DEBIAN_MIRROR:-$(debian_mirror debian || true)}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-$(debian_mirror debian-security || true)}"

build() { # build IMAGE CONTEXT [docker build args...]
    local image=$1 context=$2 old
    shift 2
    old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
    docker build --network host --pull=false \
        --label "$LABEL_STANDIN=true" \
        --build-arg "BASE_IMAGE=$IMG_MINBASE" \
        -t "$image" "$@" "$context"
    if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$image")" ]]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
}

# 1. debootstrap --variant=minbase, cached as a tarball, imported as a helper image.
minbase() {
    local tarball="$CACHE_DIR/${SUITE}-minbase.tar"
    if [[ ! -s "$tarball" ]]; then
        [[ -n "$MIRROR" && -n "$SECURITY_MIRROR" ]] ||
            die "no debian and debian-security archives in /etc/apt/sources.list*; set DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR"
        is_root || die "debootstrap needs root (or an existing $tarball)"
        command -v debootstrap >/dev/null || apt_install debootstrap
        local rootfs="$CACHE_DIR/rootfs-$SUITE-minbase"
        rm -rf "$rootfs"
        mkdir -p "$CACHE_DIR"
        log "debootstrap --variant=minbase $SUITE from $MIRROR (about 2 minutes)"
        debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
            || { tail_log "$CACHE_DIR/debootstrap.log"; die "debootstrap failed (log: $CACHE_DIR/debootstrap.log)"; }
        cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
        # Small images: no recommends, no docs, no caches left behind.
        cat >"$rootfs/etc/apt/apt.conf.d/90container" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
EOF
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/90container" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
        find "$rootfs/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || true
        : >"$rootfs/etc/machine-id"
        printf 'container\n' >"$rootfs/etc/hostname"
        tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    if ! have_image "$IMG_MINBASE"; then
        docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["bash"]' \
            --change "LABEL $LABEL_STANDIN=true" \
            --message "debootstrap --variant=minbase $SUITE $MIRROR" \
            "$tarball" "$IMG_MINBASE" >/dev/null
        log "$IMG_MINBASE: imported ($(docker image inspect -f '{{.Size}}' "$IMG_MINBASE" | awk '{printf "%.0f MB", $1/1e6}'))"
    fi
}

# 2. rust:1.95-bookworm with the host's toolchain (no toolchain can be downloaded here).
rust_image() {
    want "$IMG_RUST" || return 0
    local sysroot version ctx="$CACHE_DIR/ctx-rust"
    command -v rustc >/dev/null || die "rustc not found on the host"
    version=$(rustc --version | awk '{print $2}')
    [[ "$version" == "$RUST_VERSION".* ]] || die "host rustc is $version, image wants $RUST_VERSION"
    sysroot=$(rustc --print sysroot)
    local toolchain
    toolchain="${version}-$(rustc -vV | sed -n 's/^host: //p')"
    log "staging Rust toolchain $toolchain from $sysroot"
    rm -rf "$ctx"
    mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo/bin"
    # share/doc (rust-docs) is ~600 MB that a build image does not need.
    tar -C "$sysroot" --exclude=./share/doc -cf - . | (mkdir -p "$ctx/rustup/toolchains/$toolchain" && tar -C "$ctx/rustup/toolchains/$toolchain" -xf -)
    local rustup_bin
    rustup_bin=$(command -v rustup || true)
    if [[ -n "$rustup_bin" ]]; then
        cp -L "$rustup_bin" "$ctx/cargo/bin/rustup"
        for proxy in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb rust-gdbgui; do
            ln -sf rustup "$ctx/cargo/bin/$proxy"
        done
        printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n\n[overrides]\n' "$toolchain" >"$ctx/rustup/settings.toml"
    else
        for tool in "$ctx/rustup/toolchains/$toolchain"/bin/*; do
            ln -sf "/usr/local/rustup/toolchains/$toolchain/bin/$(basename "$tool")" "$ctx/cargo/bin/$(basename "$tool")"
        done
    fi
    # CA certificates added locally on this host (e.g. of a TLS-intercepting
    # egress proxy): cargo inside the builder must trust them to reach the crate registry.
    mkdir -p "$ctx/extra-ca"
    find /usr/local/share/ca-certificates -name '*.crt' -type f -exec cp {} "$ctx/extra-ca/" \; 2>/dev/null || true
    cp "$REPO/docker/standins/rust/Dockerfile" "$ctx/Dockerfile"
    log "building $IMG_RUST (apt: build-essential, pkg-config, libssl-dev, zlib1g-dev, perl)"
    build "$IMG_RUST" "$ctx" --build-arg "RUST_VERSION=$version" --build-arg "TOOLCHAIN=$toolchain"
    rm -rf "$ctx"
}

# 3. distroless-like runtime image.
distroless_image() {
    want "$IMG_DISTROLESS" || return 0
    build "$IMG_DISTROLESS" "$REPO/docker/standins/distroless"
}

# 4. apache/kafka stand-in running tansu.
kafka_image() {
    # The stand-in must run the same (patched) tansu as the tests: rebuild it when
    # the image's build differs from what scripts/stack.sh builds.
    local build_id
    build_id=$("$REPO/scripts/stack.sh" broker-id)
    if [[ "$FORCE_REBUILD" != 1 ]] && have_image "$IMG_KAFKA" &&
        [[ "$(docker image inspect -f '{{ index .Config.Labels "io.healthcheck-pipeline.tansu-build" }}' "$IMG_KAFKA" 2>/dev/null)" != "$build_id" ]] &&
        [[ "$(docker image inspect -f "{{ index .Config.Labels \"$LABEL_STANDIN\" }}" "$IMG_KAFKA" 2>/dev/null)" == true ]]; then
        log "$IMG_KAFKA: built from another tansu build; rebuilding with $build_id"
    else
        want "$IMG_KAFKA" || return 0
    fi
    "$REPO/scripts/stack.sh" install-broker >&2
    local tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    local ctx="$CACHE_DIR/ctx-kafka"
    rm -rf "$ctx"
    cp -r "$REPO/docker/standins/kafka" "$ctx"
    mkdir -p "$ctx/rootfs/usr/local/bin"
    cp "$tansu" "$ctx/rootfs/usr/local/bin/tansu"
    strip "$ctx/rootfs/usr/local/bin/tansu" 2>/dev/null || true
    build "$IMG_KAFKA" "$ctx" --build-arg "TANSU_VERSION=$TANSU_VERSION" \
        --label "io.healthcheck-pipeline.tansu-build=$build_id"
    rm -rf "$ctx"
}

postgres_image() {
    want "$IMG_POSTGRES" || return 0
    build "$IMG_POSTGRES" "$REPO/docker/standins/postgres"
}

prometheus_image() {
    want "$IMG_PROMETHEUS" || return 0
    build "$IMG_PROMETHEUS" "$REPO/docker/standins/prometheus"
}

target_image() {
    want "$IMG_TARGET" || return 0
    build "$IMG_TARGET" "$REPO/docker/standins/target-site"
}

remove_standins() {
    local image
    for image in "$IMG_TARGET" "$IMG_PROMETHEUS" "$IMG_POSTGRES" "$IMG_KAFKA" "$IMG_DISTROLESS" "$IMG_RUST" "$IMG_MINBASE"; do
        have_image "$image" || continue
        if [[ "$(docker image inspect -f "{{ index .Config.Labels \"$LABEL_STANDIN\" }}" "$image")" == true ]]; then
            docker image rm "$image"
        else
            log "$image: not built by this script, kept"
        fi
    done
}

usage() {
    cat <<EOF
usage: $0 [--remove] [IMAGE...]
  IMAGE: minbase rust distroless kafka postgres prometheus target (default: all)
  --remove: delete the images above that this script built (label $LABEL_STANDIN=true)
env: HCP_CACHE_DIR=$CACHE_DIR  FORCE_REBUILD=$FORCE_REBUILD  DEBIAN_MIRROR=$MIRROR
EOF
}

run_logged() { # run_logged NAME FUNCTION: runs FUNCTION with output to a log file
    local name=$1 fn=$2 logfile="$LOG_DIR/$1.log" start=$SECONDS
    if "$fn" >"$logfile" 2>&1; then
        log "$name: ok in $((SECONDS - start))s"
    else
        tail_log "$logfile" 60
        log "$name: FAILED after $((SECONDS - start))s (log: $logfile)"
        return 1
    fi
}

main() {
    command -v docker >/dev/null || die "docker not found"
    if [[ "${1:-}" == --remove ]]; then remove_standins; return; fi
    if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then usage; return; fi
    local images=("$@")
    ((${#images[@]})) || images=(minbase rust distroless kafka postgres prometheus target)
    local all_start=$SECONDS
    LOG_DIR="$CACHE_DIR/logs"
    mkdir -p "$LOG_DIR"
    # Everything is built FROM the minbase image; the rest are independent
    # (mostly downloading and unpacking Debian packages), so they build in parallel.
    timed minbase minbase
    local pids=() names=() image fn
    for image in "${images[@]}"; do
        case "$image" in
        minbase) continue ;;
        rust) fn=rust_image ;;
        distroless) fn=distroless_image ;;
        kafka) fn=kafka_image ;;
        postgres) fn=postgres_image ;;
        prometheus) fn=prometheus_image ;;
        target) fn=target_image ;;
        *) usage >&2; die "unknown image: $image" ;;
        esac
        if [[ "${PARALLEL:-1}" == 1 ]]; then
            run_logged "$image" "$fn" &
            pids+=($!)
            names+=("$image")
        else
            run_logged "$image" "$fn"
        fi
    done
    local failed=() i
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || failed+=("${names[$i]}")
    done
    # dangling build stages of the stand-ins (labelled in their Dockerfiles)
    docker image prune -f --filter "label=io.healthcheck-pipeline.build-stage=true" >/dev/null || true
    ((${#failed[@]} == 0)) || die "failed: ${failed[*]}"
    log "base images ready in $((SECONDS - all_start))s"
    docker image ls --format '  {{.Repository}}:{{.Tag}}\t{{.Size}}' \
        | grep -E "^  ($(printf '%s|' "$IMG_MINBASE" "$IMG_RUST" "$IMG_DISTROLESS" "$IMG_KAFKA" "$IMG_POSTGRES" "$IMG_PROMETHEUS" "$IMG_TARGET" | sed 's/[.]/\\./g; s/|$//'))\b" >&2 || true
}

main "$@"
