#!/usr/bin/env bash
# Build the worker and operator images from wheels made on the host (no registry needed), on the
# locally built base image. With a registry, drop BASE_IMAGE to use python:3.11-slim-bookworm.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="${SKIPLOCK_IMAGE_TAG:-dev}"
BASE="${BASE_IMAGE:-skiplock/python-base:bookworm}"
stamp() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

stamp "wheels for skiplock and its dependencies -> dist/wheels"
rm -rf dist/wheels
.venv/bin/pip wheel --progress-bar off -q --wheel-dir dist/wheels '.[operator,api]'
for image in worker operator; do
  stamp "docker build skiplock/$image:$TAG (base $BASE)"
  DOCKER_BUILDKIT=0 docker build -q -f "Dockerfile.$image" --build-arg "BASE_IMAGE=$BASE" \
    -t "skiplock/$image:$TAG" . >/dev/null
done
stamp "built skiplock/worker:$TAG and skiplock/operator:$TAG"
