#!/usr/bin/env bash
# Manage the Skiplock e2e kind cluster (offline node image).
#   cluster.sh up            create skiplock-e2e (if missing), wait for node Ready + CoreDNS
#   cluster.sh down          delete it
#   cluster.sh load IMAGE... kind load docker-image into the cluster (use explicit tags, not :latest)
#   cluster.sh kubeconfig    print the kubeconfig path
# The kubeconfig is written to $SKIPLOCK_KUBECONFIG (default $CACHE/kube/skiplock-e2e.kubeconfig).
set -euo pipefail
LOG_TAG=cluster
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUBECONFIG_FILE="${SKIPLOCK_KUBECONFIG:-$CACHE/kube/$CLUSTER_NAME.kubeconfig}"
KIND="$CACHE/bin/kind"
KUBECTL="$CACHE/bin/kubectl"
[[ -x "$KIND" && -x "$KUBECTL" ]] || die "kind/kubectl missing in $CACHE/bin: run tools.sh"
k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

exists() { # (no `| grep -q` under pipefail: grep exiting early would fail the pipeline)
  local clusters
  clusters="$("$KIND" get clusters 2>/dev/null || true)"
  grep -qx "$CLUSTER_NAME" <<<"$clusters"
}

up() {
  docker image inspect "$NODE_IMAGE" >/dev/null 2>&1 || die "$NODE_IMAGE missing: run node-image.sh"
  mkdir -p "$(dirname "$KUBECONFIG_FILE")"
  if exists; then
    log "cluster $CLUSTER_NAME exists"
    docker start "$CLUSTER_NAME-control-plane" >/dev/null 2>&1 || true
    "$KIND" export kubeconfig --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE" >/dev/null 2>&1
  else
    log "creating cluster $CLUSTER_NAME from $NODE_IMAGE"
    "$KIND" create cluster --name "$CLUSTER_NAME" --image "$NODE_IMAGE" \
      --config "$TOOLCHAIN_DIR/kind-config.yaml" --kubeconfig "$KUBECONFIG_FILE" --wait 0s --retain
  fi
  log "waiting for the node to be Ready"
  local i
  for i in $(seq 1 60); do
    k get nodes >/dev/null 2>&1 && break; sleep 2
  done
  if ! k wait --for=condition=Ready node --all --timeout=240s; then
    diagnose; die "node not Ready"
  fi
  log "waiting for CoreDNS"
  if ! k -n kube-system rollout status deployment/coredns --timeout=240s; then
    diagnose; die "CoreDNS not running"
  fi
  log "cluster $CLUSTER_NAME ready; export KUBECONFIG=$KUBECONFIG_FILE"
}

diagnose() {
  log "diagnostics:"
  k get nodes -o wide >&2 || true
  k get pods -A -o wide >&2 || true
  docker exec "$CLUSTER_NAME-control-plane" sh -c 'systemctl --no-pager --failed; journalctl -u kubelet --no-pager | tail -30' >&2 || true
}

down() {
  if exists; then
    log "deleting cluster $CLUSTER_NAME"
    "$KIND" delete cluster --name "$CLUSTER_NAME" --kubeconfig "$KUBECONFIG_FILE"
  else
    log "cluster $CLUSTER_NAME does not exist"
  fi
}

load() {
  (($#)) || die "usage: cluster.sh load IMAGE..."
  local img
  for img in "$@"; do
    [[ "$img" == *:* && "$img" != *:latest ]] || die "image $img: use an explicit tag (not :latest)"
    log "loading $img"
    "$KIND" load docker-image --name "$CLUSTER_NAME" "$img"
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  load) shift; load "$@" ;;
  kubeconfig) echo "$KUBECONFIG_FILE" ;;
  diagnose) diagnose ;;
  *) echo "usage: $0 up|down|load IMAGE...|kubeconfig|diagnose" >&2; exit 2 ;;
esac
