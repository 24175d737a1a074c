#!/usr/bin/env bash
# Build the project's base images from Debian packages only (no registry):
#   skiplock/python-base:bookworm   python3 (3.11), python3-venv, ca-certificates, user skiplock (10001)
#   skiplock/postgres:15-bookworm   Debian postgresql-15 + initdb-on-first-start entrypoint
# Rootfs tarballs are cached in $CACHE/rootfs keyed by suite + package list.
set -euo pipefail
LOG_TAG=base-images
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_lock base-images
docker info >/dev/null 2>&1 || die "docker is not running (run docker.sh)"
T0=$SECONDS

py_tar="$(debootstrap_tarball python-base "python3,python3-venv,ca-certificates")"
py_root="$(import_rootfs "$py_tar" skiplock/rootfs-python)"
build_image_if_changed "$PY_BASE_IMAGE" "$TOOLCHAIN_DIR/images/python-base" --build-arg "ROOTFS=$py_root"

# LLVM (JIT only; the image runs with jit=off), its bitcode and message translations: ~200 MB
# less to `kind load` into every cluster.
PG_PRUNE="usr/lib/x86_64-linux-gnu/libLLVM-*.so* usr/lib/x86_64-linux-gnu/libz3.so* usr/lib/postgresql/15/lib/llvmjit* usr/lib/postgresql/15/lib/bitcode usr/share/locale/*"
pg_tar="$(debootstrap_tarball postgres "postgresql-15,ca-certificates,util-linux" "$PG_PRUNE")"
pg_root="$(import_rootfs "$pg_tar" skiplock/rootfs-postgres)"
build_image_if_changed "$PG_IMAGE" "$TOOLCHAIN_DIR/images/postgres" --build-arg "ROOTFS=$pg_root"

log "base images ready in $((SECONDS - T0))s: $PY_BASE_IMAGE $PG_IMAGE"
