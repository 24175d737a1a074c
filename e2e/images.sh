#!/usr/bin/env bash
# Build the worker and operator images from wheels made on the host (no registry needed), on the
# locally built base image. With a registry, drop BASE_IMAGE to use python:3.11-slim-bookworm.
# Skipped when the images already carry the hash of the sources they were built from.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TAG="${SKIPLOCK_IMAGE_TAG:-dev}"
BASE="${BASE_IMAGE:-skiplock/python-base:bookworm}"
stamp() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

base_id=$(docker image inspect --format '{{.Id}}' "$BASE")
hash=$( (echo "$base_id"; find worker operator pyproject.toml README.md Dockerfile.worker \
          Dockerfile.operator -type f -not -path '*/__pycache__/*' -print0 | sort -z \
          | xargs -0 sha256sum) | sha256sum | cut -c1-16)
current() { docker image inspect --format '{{index .Config.Labels "dev.skiplock.source-hash"}}' \
              "skiplock/$1:$TAG" 2>/dev/null || true; }
if [ "$(current worker)" = "$hash" ] && [ "$(current operator)" = "$hash" ]; then
  stamp "skiplock/worker:$TAG and skiplock/operator:$TAG are up to date ($hash)"
  exit 0
fi

stamp "wheels for skiplock and its dependencies -> dist/wheels"
rm -rf dist/wheels
.venv/bin/pip wheel --progress-bar off -q --wheel-dir dist/wheels '.[operator,api]'
for image in worker operator; do
  stamp "docker build skiplock/$image:$TAG (base $BASE)"
  DOCKER_BUILDKIT=0 docker build -q -f "Dockerfile.$image" --build-arg "BASE_IMAGE=$BASE" \
    --label "dev.skiplock.source-hash=$hash" -t "skiplock/$image:$TAG" . >/dev/null
done
stamp "built skiplock/worker:$TAG and skiplock/operator:$TAG ($hash)"
