#!/usr/bin/env bash
# Build every binary the offline Kubernetes toolchain needs, from the Go module proxy,
# into "$CACHE/tools/<name>/<version>/" and expose "$CACHE/bin/<tool>" symlinks.
# Usage: tools.sh [step...]   steps: apiserver etcd kubectl kind kubeadm kubelet
#        controller-manager scheduler kube-proxy coredns crictl helm toxiproxy pause
# Safe to run in the background (nohup tools.sh >log 2>&1 &); concurrent runs serialize.
set -euo pipefail
LOG_TAG=tools
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
go_env
with_lock tools

K8S_OUT="$CACHE/tools/kubernetes/$K8S_VERSION/bin"
ETCD_VERSION="v${ETCD_IMAGE_TAG%-*}"

link() { # link TARGET NAME
  ln -sfn "$1" "$CACHE/bin/$2"
}

# ---------------------------------------------------------------- Kubernetes
k8s_module_dir() {
  local dir="$CACHE/src/kubernetes-$K8S_VERSION"
  if [[ ! -f "$dir/go.mod" ]]; then
    log "preparing wrapper module for k8s.io/kubernetes $K8S_VERSION"
    mkdir -p "$dir"
    local json gomod staging_ver
    json="$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION")"
    gomod="$(sed -n 's/.*"GoMod": "\(.*\)",/\1/p' <<<"$json")"
    staging_ver="v0.${K8S_VERSION#v1.}"
    {
      echo "module skiplock.local/kubernetes-build"
      echo
      grep -E '^go [0-9]' "$gomod"
      grep -E '^godebug ' "$gomod" || true
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      # Every ./staging/src/k8s.io/<m> replace of that release, pinned to the published v0.x.y.
      sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/\1$#\1#p' "$gomod" |
        while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging_ver"; done
      echo ")"
    } >"$dir/go.mod.tmp"
    local n
    n="$(grep -c '=> k8s.io/' "$dir/go.mod.tmp")"
    [[ "$n" -ge 25 ]] || die "only $n staging replaces found in $gomod"
    log "wrapper module has $n staging replaces (=> $staging_ver)"
    printf 'package main\n\nfunc main() {}\n' >"$dir/main.go"
    mv "$dir/go.mod.tmp" "$dir/go.mod"
  fi
  echo "$dir"
}

k8s_ldflags() {
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local build_date commit="0000000000000000000000000000000000000000"
  build_date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
    "$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info" 2>/dev/null || true)"
  build_date="${build_date:-1970-01-01T00:00:00Z}"
  local f="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    f+=" -X $p.gitCommit=$commit -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  echo "$f"
}

build_k8s() { # build_k8s BINARY
  local bin="$1"
  if [[ -x "$K8S_OUT/$bin" ]]; then link "$K8S_OUT/$bin" "$bin"; log "$bin $K8S_VERSION cached"; return; fi
  local dir; dir="$(k8s_module_dir)"
  mkdir -p "$K8S_OUT"
  log "building $bin $K8S_VERSION"
  local t0=$SECONDS
  (cd "$dir" && run_logged "build-$bin-$K8S_VERSION" \
    "$GO" build -trimpath -ldflags "$(k8s_ldflags)" -o "$K8S_OUT/$bin.tmp" "k8s.io/kubernetes/cmd/$bin")
  mv "$K8S_OUT/$bin.tmp" "$K8S_OUT/$bin"
  link "$K8S_OUT/$bin" "$bin"
  log "built $bin in $((SECONDS - t0))s: $("$K8S_OUT/$bin" --version 2>/dev/null || "$K8S_OUT/$bin" version -o short 2>/dev/null || true)"
}

# ---------------------------------------------------------------- etcd
build_etcd() {
  local out="$CACHE/tools/etcd/$ETCD_VERSION/bin"
  if [[ -x "$out/etcd" ]]; then link "$out/etcd" etcd; log "etcd $ETCD_VERSION cached"; return; fi
  local dir="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$dir" "$out"
  cat >"$dir/go.mod" <<MOD
module skiplock.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$dir/main.go" <<'GO'
// Command etcd runs the etcd server from the published go.etcd.io/etcd/server/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  log "building etcd $ETCD_VERSION"
  local t0=$SECONDS
  (cd "$dir" && run_logged "tidy-etcd-$ETCD_VERSION" "$GO" mod tidy &&
    run_logged "build-etcd-$ETCD_VERSION" "$GO" build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .)
  mv "$out/etcd.tmp" "$out/etcd"
  link "$out/etcd" etcd
  log "built etcd in $((SECONDS - t0))s: $("$out/etcd" --version | head -1)"
}

# ---------------------------------------------------------------- go install tools
# go_tool NAME VERSION PACKAGE BINNAME [LDFLAGS]
go_tool() {
  local name="$1" ver="$2" pkg="$3" binname="$4" ldf="${5:-}"
  local out="$CACHE/tools/$name/$ver/bin"
  if [[ -x "$out/$binname" ]]; then link "$out/$binname" "$binname"; log "$binname $ver cached"; return; fi
  mkdir -p "$out"
  log "building $binname $ver ($pkg)"
  local t0=$SECONDS tmp="$CACHE/tmp/gobin-$name-$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOFLAGS=-buildvcs=false GOBIN="$tmp" run_logged "build-$binname-$ver" \
    "$GO" install -trimpath -ldflags "-s -w $ldf" "$pkg@$ver"
  mv "$tmp/$(basename "${pkg}")" "$out/$binname"
  rm -rf "$tmp"
  link "$out/$binname" "$binname"
  log "built $binname in $((SECONDS - t0))s"
}

build_pause() {
  local out="$CACHE/tools/pause/$PAUSE_VERSION/bin"
  if [[ -x "$out/pause" ]]; then link "$out/pause" pause; log "pause cached"; return; fi
  mkdir -p "$out" "$CACHE/src/pause"
  cat >"$CACHE/src/pause/pause.c" <<'C'
/* Minimal pod sandbox process: sleeps until SIGINT/SIGTERM, reaps children. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) pause();
    return 0;
}
C
  if ! command -v gcc >/dev/null; then apt-get update -qq >/dev/null; apt-get install -y -qq gcc libc6-dev >/dev/null; fi
  gcc -static -Os -s -o "$out/pause" "$CACHE/src/pause/pause.c"
  link "$out/pause" pause
  log "built pause"
}

check_kubeadm_images() {
  local want have
  want="$(printf '%s\n' \
    "registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION" \
    "registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION" \
    "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "registry.k8s.io/pause:$PAUSE_VERSION" \
    "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" | sort)"
  have="$("$K8S_OUT/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null | sort)"
  if [[ "$want" != "$have" ]]; then
    log "kubeadm asks for:"; printf '%s\n' "$have" >&2
    die "image versions in lib.sh do not match kubeadm; update ETCD_IMAGE_TAG/COREDNS_VERSION/PAUSE_VERSION"
  fi
  log "kubeadm image list matches lib.sh pins"
}

step() {
  case "$1" in
    apiserver) build_k8s kube-apiserver ;;
    etcd) build_etcd ;;
    kubectl|kubeadm|kubelet|kube-proxy) build_k8s "$1" ;;
    controller-manager) build_k8s kube-controller-manager ;;
    scheduler) build_k8s kube-scheduler ;;
    kind) go_tool kind "$KIND_VERSION" sigs.k8s.io/kind kind ;;
    coredns) go_tool coredns "$COREDNS_VERSION" github.com/coredns/coredns coredns ;;
    crictl) go_tool crictl "$CRICTL_VERSION" sigs.k8s.io/cri-tools/cmd/crictl crictl \
              "-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" ;;
    helm) go_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm \
            "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" ;;
    toxiproxy)
      go_tool toxiproxy "$TOXIPROXY_VERSION" github.com/Shopify/toxiproxy/v2/cmd/server toxiproxy-server \
        "-X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION"
      go_tool toxiproxy "$TOXIPROXY_VERSION" github.com/Shopify/toxiproxy/v2/cmd/cli toxiproxy-cli \
        "-X github.com/Shopify/toxiproxy/v2.Version=$TOXIPROXY_VERSION" ;;
    pause) build_pause ;;
    check-images) check_kubeadm_images ;;
    *) die "unknown step $1" ;;
  esac
}

ALL=(apiserver etcd kubectl kind kubeadm check-images kubelet controller-manager scheduler kube-proxy
     coredns crictl pause helm toxiproxy)
T0=$SECONDS
for s in "${@:-${ALL[@]}}"; do
  log "step: $s"
  step "$s"
done
log "tools done in $((SECONDS - T0))s; binaries in $CACHE/bin"
