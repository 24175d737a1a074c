# shellcheck shell=bash
# Common helpers for the Skiplock offline toolchain scripts. Sourced, not executed.
set -euo pipefail

CACHE="${SKIPLOCK_CACHE_DIR:-/var/cache/skiplock}"
TOOLCHAIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$CACHE/bin" "$CACHE/logs" "$CACHE/stamps"

# Pinned versions (cache keys).
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KIND_VERSION="${KIND_VERSION:-v0.30.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
TOXIPROXY_VERSION="${TOXIPROXY_VERSION:-v2.5.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
# Must match `kubeadm config images list --kubernetes-version $K8S_VERSION` (tools.sh checks).
ETCD_IMAGE_TAG="${ETCD_IMAGE_TAG:-3.6.5-0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.1}"
PAUSE_VERSION="${PAUSE_VERSION:-3.10.1}"
# containerd's sandbox image default; we tag our pause under both names.
PAUSE_ALT_VERSION="3.10"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

NODE_IMAGE="skiplock/kind-node:${K8S_VERSION}"
PY_BASE_IMAGE="skiplock/python-base:bookworm"
PG_IMAGE="skiplock/postgres:15-bookworm"
CLUSTER_NAME="${CLUSTER_NAME:-skiplock-e2e}"

export DOCKER_BUILDKIT=0
export PATH="$CACHE/bin:$PATH"

log() { printf '[%s] [%s] %s\n' "$(date -u +%H:%M:%S)" "${LOG_TAG:-toolchain}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Go environment: everything under the cache, never the repo.
go_env() {
  export GOTOOLCHAIN=local
  export GOPATH="$CACHE/go/path"
  export GOMODCACHE="$CACHE/go/mod"
  export GOCACHE="$CACHE/go/build"
  export GOFLAGS="-buildvcs=false -mod=mod"
  export CGO_ENABLED="${CGO_ENABLED:-0}"
  GO="${GO:-/usr/local/go/bin/go}"
  [[ -x "$GO" ]] || GO="$(command -v go)" || die "no Go toolchain found"
}

# stamp_ok NAME -> true when step NAME (already keyed by version) finished before.
stamp_ok() { [[ -f "$CACHE/stamps/$1" ]]; }
stamp_set() { date -u +%FT%TZ >"$CACHE/stamps/$1"; }

# Run a command with its output in a log file; print the tail on failure.
run_logged() {
  local name="$1"; shift
  local logf="$CACHE/logs/$name.log"
  log "running $name (log: $logf)"
  if ! "$@" >"$logf" 2>&1; then
    tail -n 40 "$logf" >&2
    die "$name failed (see $logf)"
  fi
}

# Mutual exclusion for concurrent runs of the same script.
with_lock() {
  local name="$1"
  exec {LOCK_FD}>"$CACHE/$name.lock"
  if ! flock -n "$LOCK_FD"; then
    log "waiting for another $name run to finish"
    flock "$LOCK_FD"
  fi
}

# debootstrap_tarball NAME "pkg1,pkg2,..." ["glob glob ..."] -> prints path of a cached rootfs
# tarball of DEBIAN_SUITE (minbase + the packages, minus the optional globs relative to the root),
# keyed by suite + package list + prune list + recipe revision.
ROOTFS_RECIPE_REV=1
debootstrap_tarball() {
  local name="$1" pkgs="$2" prune="${3:-}"
  local sorted key tarball dir
  sorted="$(tr ', ' '\n\n' <<<"$pkgs" | sed '/^$/d' | sort -u | paste -sd, -)"
  key="$(printf '%s|%s|%s|%s' "$DEBIAN_SUITE" "$sorted" "$ROOTFS_RECIPE_REV" "$DEBIAN_MIRROR" | sha256sum | cut -c1-12)"
  if [[ -n "$prune" ]]; then key="$(printf '%s|%s' "$key" "$prune" | sha256sum | cut -c1-12)"; fi
  tarball="$CACHE/rootfs/$name-$DEBIAN_SUITE-$key.tar"
  if [[ -s "$tarball" ]]; then
    log "rootfs $name cached: $tarball"
    echo "$tarball"; return
  fi
  command -v debootstrap >/dev/null || die "debootstrap missing (run docker.sh first)"
  dir="$CACHE/tmp/rootfs-$name-$key"
  rm -rf "$dir"; mkdir -p "$dir" "$CACHE/rootfs" "$CACHE/debs/$DEBIAN_SUITE"
  log "debootstrap $DEBIAN_SUITE for $name ($sorted)"
  run_logged "debootstrap-$name-$key" debootstrap --variant=minbase --merged-usr \
    --cache-dir="$CACHE/debs/$DEBIAN_SUITE" --include="$sorted" "$DEBIAN_SUITE" "$dir" "$DEBIAN_MIRROR"
  # Trim and make apt usable inside the image (main, updates, security).
  cat >"$dir/etc/apt/sources.list" <<SRC
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
SRC
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb \
    "$dir"/var/log/*.log "$dir"/var/log/apt/* "$dir"/tmp/* "$dir"/usr/share/doc/* \
    "$dir"/usr/share/man/* "$dir"/usr/share/info/*
  if [[ -n "$prune" ]]; then
    local g
    log "pruning from $name: $prune"
    for g in $prune; do (cd "$dir" && rm -rf -- $g); done
  fi
  : >"$dir/etc/machine-id"
  printf '%s\n' 'localhost' >"$dir/etc/hostname"
  tar --numeric-owner --xattrs -C "$dir" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$dir"
  log "rootfs $name: $tarball ($(du -h "$tarball" | cut -f1))"
  echo "$tarball"
}

# import_rootfs TARBALL REPO -> prints image ref REPO:<tarball key>, importing once.
import_rootfs() {
  local tarball="$1" repo="$2" tag ref
  tag="$(basename "$tarball" .tar | awk -F- '{print $(NF-1) "-" $NF}')"
  ref="$repo:$tag"
  if ! docker image inspect "$ref" >/dev/null 2>&1; then
    log "docker import $tarball as $ref"
    docker import "$tarball" "$ref" >/dev/null
  fi
  echo "$ref"
}

# build_image_if_changed TAG CONTEXTDIR [docker build args...]
# Rebuilds only when the context content (and build args) changed: the hash is stored as a label.
build_image_if_changed() {
  local tag="$1" ctx="$2"; shift 2
  local h have
  # Small files by content; big ones (binaries, image tarballs: already version/content keyed)
  # by name, size and mtime, so that a warm run does not re-read a gigabyte.
  h="$( (cd "$ctx" && find . -type f -size -8388608c -print0 | sort -z | xargs -0 -r sha256sum
        find . -type f -size +8388607c -printf '%p %s %T@\n' | sort; printf '%s\n' "$@") | sha256sum | cut -c1-16)"
  have="$(docker image inspect -f '{{ index .Config.Labels "skiplock.context-hash" }}' "$tag" 2>/dev/null || true)"
  if [[ "$have" == "$h" ]]; then log "image $tag up to date ($h)"; return; fi
  log "docker build $tag"
  run_logged "build-image-${tag//[:\/]/_}" docker build --label "skiplock.context-hash=$h" -t "$tag" "$@" "$ctx"
  log "built $tag"
}
