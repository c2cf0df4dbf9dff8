#!/usr/bin/env bash
# Builds the checker and sink images from the top-level Dockerfile
# (targets `checker` and `sink`), tagged as in .env (CHECKER_IMAGE, SINK_IMAGE),
# with OCI version/revision labels, then prints their sizes and users.
#
#   scripts/images.sh                 # both images
#   scripts/images.sh checker         # one of them
#
# Env: CHECKER_IMAGE, SINK_IMAGE (default: from .env), BUILD_NETWORK (default
# host: cargo fetches crates during the build; `default` for the bridge),
# DOCKER_BUILD_ARGS (extra arguments, e.g. "--build-arg CARGO_NET_OFFLINE=true"),
# SIZE_LIMIT_MB (default 30: images above it are flagged), VERBOSE=1 to stream
# the build output (default: into .tmp/images-<target>.log, tail shown on failure).
# On a machine without a container registry run scripts/base-images.sh first.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO"

CHECKER_IMAGE=$(env_value CHECKER_IMAGE healthcheck-pipeline/checker:local)
SINK_IMAGE=$(env_value SINK_IMAGE healthcheck-pipeline/sink:local)
BUILD_NETWORK="${BUILD_NETWORK:-host}"
SIZE_LIMIT_MB="${SIZE_LIMIT_MB:-30}"
LOG_DIR="${LOG_DIR:-$REPO/.tmp}"
mkdir -p "$LOG_DIR"

version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain -- services Cargo.toml Cargo.lock Dockerfile 2>/dev/null)" ]]; then
    revision="$revision-dirty"
fi
source_url=$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)

for base in rust:1.95-bookworm gcr.io/distroless/cc-debian12:nonroot; do
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        log "base image $base is not present: docker will try to pull it (without a registry, run scripts/base-images.sh first)"
    fi
done

# Both images are built from one snapshot of the sources, so that they match
# even while files change (and the dependency layer is built only once).
CONTEXT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/hcp-build-context.XXXXXX")
trap 'rm -rf "$CONTEXT_DIR"' EXIT
context_paths=()
for path in Cargo.toml Cargo.lock services rust-toolchain rust-toolchain.toml .cargo vendor .dockerignore; do
    [[ -e "$path" ]] && context_paths+=("$path")
done
tar -C "$REPO" --exclude=target --exclude='*.rs.bk' -cf - "${context_paths[@]}" | tar -C "$CONTEXT_DIR" -xf -

build_one() { # build_one TARGET IMAGE
    local target=$1 image=$2 start=$SECONDS logfile="$LOG_DIR/images-$1.log"
    local args=(build --target "$target" -t "$image"
        --build-arg "VERSION=${version:-dev}"
        --build-arg "REVISION=$revision"
        --build-arg "SOURCE_URL=${source_url:-https://example.invalid/healthcheck-pipeline}")
    [[ "$BUILD_NETWORK" != default ]] && args+=(--network "$BUILD_NETWORK")
    # shellcheck disable=SC2206
    [[ -n "${DOCKER_BUILD_ARGS:-}" ]] && args+=($DOCKER_BUILD_ARGS)
    args+=(-f "$REPO/Dockerfile" "$CONTEXT_DIR")
    log "docker ${args[*]}"
    if [[ "${VERBOSE:-0}" == 1 ]]; then
        docker "${args[@]}"
    elif ! docker "${args[@]}" >"$logfile" 2>&1; then
        tail_log "$logfile" 120
        log "building $image failed after $((SECONDS - start))s (full log: $logfile)"
        return 1
    fi
    log "$image built in $((SECONDS - start))s"
}

targets=("$@")
((${#targets[@]})) || targets=(checker sink)
for target in "${targets[@]}"; do
    case "$target" in
    checker) build_one checker "$CHECKER_IMAGE" ;;
    sink) build_one sink "$SINK_IMAGE" ;;
    *) die "unknown target $target (checker|sink)" 2 ;;
    esac
done

printf '\n%-44s %10s %12s  %s\n' IMAGE SIZE USER NOTE
for target in "${targets[@]}"; do
    image=$CHECKER_IMAGE
    [[ "$target" == sink ]] && image=$SINK_IMAGE
    image_info "$image"
    note=ok
    if ((IMAGE_BYTES > SIZE_LIMIT_MB * 1000 * 1000)); then note="WARNING: above ${SIZE_LIMIT_MB} MB"; fi
    printf '%s  %s\n' "$IMAGE_ROW" "$note"
done
