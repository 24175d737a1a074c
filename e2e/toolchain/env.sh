#!/usr/bin/env bash
# Print shell exports for the cached toolchain (eval "$(e2e/toolchain/env.sh)").
# Used by tests that need a real kube-apiserver + etcd (envtest style) or the kind cluster.
set -euo pipefail
CACHE="${SKIPLOCK_CACHE_DIR:-/var/cache/skiplock}"
cat <<ENV
export SKIPLOCK_CACHE_DIR=$CACHE
export SKIPLOCK_KUBE_APISERVER_BIN=$CACHE/bin/kube-apiserver
export SKIPLOCK_ETCD_BIN=$CACHE/bin/etcd
export SKIPLOCK_KUBECTL_BIN=$CACHE/bin/kubectl
export SKIPLOCK_KIND_BIN=$CACHE/bin/kind
export SKIPLOCK_HELM_BIN=$CACHE/bin/helm
export SKIPLOCK_TOXIPROXY_SERVER_BIN=$CACHE/bin/toxiproxy-server
export SKIPLOCK_KUBECONFIG=$CACHE/kube/skiplock-e2e.kubeconfig
# envtest convention: one directory holding kube-apiserver, etcd and kubectl
export KUBEBUILDER_ASSETS=$CACHE/bin
export PATH=$CACHE/bin:\$PATH
ENV
