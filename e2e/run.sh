#!/usr/bin/env bash
# `make e2e`: build (or reuse from the cache) the offline toolchain and images, then run the
# chaos suite in a kind cluster that pytest-kind creates and deletes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T=e2e/toolchain
stamp() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
started=$(date +%s)

stamp "docker engine";        bash $T/docker.sh
stamp "go-built tools";       bash $T/tools.sh
stamp "base images";          bash $T/base-images.sh
stamp "kind node image";      bash $T/node-image.sh
stamp "skiplock images";      bash e2e/images.sh
eval "$(bash $T/env.sh)"
stamp "toolchain ready after $(( $(date +%s) - started ))s"

args=(e2e -p pytest_kind -v -s --durations=0
      --kind-bin "$SKIPLOCK_KIND_BIN" --kind-kubectl-bin "$SKIPLOCK_KUBECTL_BIN"
      --kind-image "${SKIPLOCK_NODE_IMAGE:-skiplock/kind-node:v1.34.4}"
      --cluster-name "${E2E_CLUSTER_NAME:-skiplock-e2e}")
[ -n "${E2E_KEEP_CLUSTER:-}" ] && args+=(--keep-cluster)
stamp "pytest ${args[*]} $*"
.venv/bin/pytest "${args[@]}" "$@"
stamp "e2e finished after $(( $(date +%s) - started ))s"
