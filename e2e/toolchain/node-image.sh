#!/usr/bin/env bash
# Assemble the kind node image skiplock/kind-node:$K8S_VERSION with no registry:
#  1. component images (kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, etcd,
#     coredns, pause) built locally from tools.sh binaries, tagged exactly as kubeadm asks,
#     saved to one tarball (cached, keyed by the binaries' hashes);
#  2. a debootstrap'd bookworm rootfs with systemd, containerd, runc, CNI plugins, iptables...;
#  3. docker build of node/Dockerfile on top of it (entrypoint, units, containerd config, images).
set -euo pipefail
LOG_TAG=node-image
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
with_lock node-image
docker info >/dev/null 2>&1 || die "docker is not running (run docker.sh)"
T0=$SECONDS

for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl etcd coredns pause crictl; do
  [[ -x "$CACHE/bin/$b" ]] || die "$CACHE/bin/$b missing: run tools.sh first"
done
bin() { readlink -f "$CACHE/bin/$1"; }

REG=registry.k8s.io
COMPONENT_IMAGES=(
  "$REG/kube-apiserver:$K8S_VERSION" "$REG/kube-controller-manager:$K8S_VERSION"
  "$REG/kube-scheduler:$K8S_VERSION" "$REG/kube-proxy:$K8S_VERSION"
  "$REG/etcd:$ETCD_IMAGE_TAG" "$REG/coredns/coredns:$COREDNS_VERSION"
  "$REG/pause:$PAUSE_VERSION" "$REG/pause:$PAUSE_ALT_VERSION"
)

# ---- 1. component images
build_static_image() { # TAG BINARY PATH_IN_IMAGE
  local tag="$1" b="$2" path="$3" ctx="$CACHE/build/images/$2"
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp "$(bin "$b")" "$ctx/$b"
  cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
ENV PATH=/usr/local/bin:/usr/bin:/bin
COPY $b $path
ENTRYPOINT ["$path"]
DOCKERFILE
  build_image_if_changed "$tag" "$ctx"
}

kp_tar="$(debootstrap_tarball kube-proxy-base "iptables,conntrack,ipset,kmod")"
kp_root="$(import_rootfs "$kp_tar" skiplock/rootfs-kube-proxy)"

# Keyed by the (version-keyed) binary paths, their size and mtime, the kube-proxy base and recipe.
images_key="$( (for b in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns pause; do
  stat -c '%n %s %Y' "$(bin "$b")"; done; echo "$kp_root $ETCD_IMAGE_TAG $COREDNS_VERSION $PAUSE_VERSION"
  cat "$TOOLCHAIN_DIR"/node/component-images/*) | sha256sum | cut -c1-16)"
images_tar="$CACHE/images/k8s-components-$K8S_VERSION-$images_key.tar"
if [[ -s "$images_tar" ]]; then
  log "component images cached: $images_tar"
else
  build_static_image "$REG/kube-apiserver:$K8S_VERSION" kube-apiserver /usr/local/bin/kube-apiserver
  build_static_image "$REG/kube-controller-manager:$K8S_VERSION" kube-controller-manager /usr/local/bin/kube-controller-manager
  build_static_image "$REG/kube-scheduler:$K8S_VERSION" kube-scheduler /usr/local/bin/kube-scheduler
  build_static_image "$REG/etcd:$ETCD_IMAGE_TAG" etcd /usr/local/bin/etcd
  build_static_image "$REG/coredns/coredns:$COREDNS_VERSION" coredns /coredns
  build_static_image "$REG/pause:$PAUSE_VERSION" pause /pause
  docker tag "$REG/pause:$PAUSE_VERSION" "$REG/pause:$PAUSE_ALT_VERSION"
  ctx="$CACHE/build/images/kube-proxy"
  rm -rf "$ctx"; mkdir -p "$ctx"
  cp "$(bin kube-proxy)" "$ctx/kube-proxy"
  cp "$TOOLCHAIN_DIR/node/component-images/Dockerfile.kube-proxy" "$TOOLCHAIN_DIR/node/component-images/iptables-select" "$ctx/"
  build_image_if_changed "$REG/kube-proxy:$K8S_VERSION" "$ctx" -f "$ctx/Dockerfile.kube-proxy" --build-arg "ROOTFS=$kp_root"
  mkdir -p "$CACHE/images"
  log "docker save component images -> $images_tar"
  docker save "${COMPONENT_IMAGES[@]}" -o "$images_tar.tmp"
  mv "$images_tar.tmp" "$images_tar"
  find "$CACHE/images" -name "k8s-components-$K8S_VERSION-*.tar" ! -name "$(basename "$images_tar")" -delete
  log "component images: $(du -h "$images_tar" | cut -f1)"
fi

# ---- 2. node rootfs
NODE_PKGS="systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,conntrack,socat,ethtool,iproute2,util-linux,mount,kmod,procps,ca-certificates,libseccomp2,pigz,jq,ebtables,ipset,e2fsprogs,findutils,bash,hostname,less"
node_tar="$(debootstrap_tarball kind-node "$NODE_PKGS")"
node_root="$(import_rootfs "$node_tar" skiplock/rootfs-kind-node)"

# ---- 3. node image
ctx="$CACHE/build/node-$K8S_VERSION"
mkdir -p "$ctx/bin" "$ctx/images"
rm -rf "$ctx/files"; cp -a "$TOOLCHAIN_DIR/node/files" "$ctx/files"
sed -i "s/@PAUSE_VERSION@/$PAUSE_VERSION/" "$ctx/files/etc/containerd/config.toml"
cp "$TOOLCHAIN_DIR/node/Dockerfile" "$ctx/Dockerfile"
for b in kubelet kubeadm kubectl crictl; do
  src="$(bin "$b")"
  [[ "$(stat -c '%s %Y' "$src")" == "$(stat -c '%s %Y' "$ctx/bin/$b" 2>/dev/null)" ]] || cp -p "$src" "$ctx/bin/$b"
done
cmp -s "$TOOLCHAIN_DIR/runc-capfilter" "$ctx/bin/skiplock-runc" || cp "$TOOLCHAIN_DIR/runc-capfilter" "$ctx/bin/skiplock-runc"
# Hard link (same filesystem) instead of copying the big tarball.
find "$ctx/images" -name '*.tar' ! -name "$(basename "$images_tar")" -delete
[[ -e "$ctx/images/$(basename "$images_tar")" ]] || ln "$images_tar" "$ctx/images/" 2>/dev/null || cp "$images_tar" "$ctx/images/"
build_image_if_changed "$NODE_IMAGE" "$ctx" --build-arg "ROOTFS=$node_root" --build-arg "K8S_VERSION=$K8S_VERSION"
log "node image $NODE_IMAGE ready in $((SECONDS - T0))s ($(docker image inspect -f '{{.Size}}' "$NODE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
