#!/usr/bin/env bash
# Ensure a working Docker engine on this machine (no systemd, no registry):
#  - installs Debian's docker.io (dockerd, containerd, runc) when dockerd is missing,
#  - installs the capability-filtering OCI runtime wrapper and makes it Docker's default runtime,
#  - starts dockerd in the background when it is not running and waits for `docker info`.
set -euo pipefail
LOG_TAG=docker
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WRAPPER=/usr/local/sbin/skiplock-runc
DAEMON_JSON=/etc/docker/daemon.json

apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then log "apt-get update"; apt-get update -qq >/dev/null; apt_updated=1; fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[[ -x /usr/sbin/runc ]] || need+=(runc)
command -v jq >/dev/null || need+=(jq)
command -v iptables >/dev/null || need+=(iptables)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then apt_install "${need[@]}"; else log "docker.io, runc, jq, debootstrap present"; fi

# Capability-filtering runtime wrapper.
if ! cmp -s "$TOOLCHAIN_DIR/runc-capfilter" "$WRAPPER"; then
  log "installing runtime wrapper $WRAPPER"
  install -m 0755 "$TOOLCHAIN_DIR/runc-capfilter" "$WRAPPER"
fi

# Register it as default runtime (merging with an existing daemon.json).
mkdir -p /etc/docker
current='{}'
[[ -s "$DAEMON_JSON" ]] && current="$(cat "$DAEMON_JSON")"
wanted="$(jq --arg p "$WRAPPER" '.runtimes["skiplock-runc"] = {path: $p} | ."default-runtime" = "skiplock-runc"' <<<"$current")"
config_changed=0
if [[ "$(jq -S . <<<"$current")" != "$(jq -S . <<<"$wanted")" ]]; then
  log "writing $DAEMON_JSON"
  printf '%s\n' "$wanted" >"$DAEMON_JSON"
  config_changed=1
fi

docker_ok() { timeout 10 docker info >/dev/null 2>&1; }
dockerd_pid() { pgrep -x dockerd | head -1 || true; }

if docker_ok && [[ $config_changed == 1 ]]; then
  pid="$(dockerd_pid)"
  if [[ -n "$pid" ]]; then
    log "reloading dockerd (pid $pid) for the new runtime config"
    kill -HUP "$pid"; sleep 2
  fi
fi

if ! docker_ok; then
  if [[ -z "$(dockerd_pid)" ]]; then
    log "starting dockerd in the background (log: /var/log/dockerd.log)"
    nohup dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  fi
  for i in $(seq 1 60); do
    docker_ok && break
    sleep 1
    [[ $i == 60 ]] && { tail -20 /var/log/dockerd.log >&2; die "dockerd did not come up"; }
  done
fi
rt="$(docker info --format '{{.DefaultRuntime}}' 2>/dev/null)"
[[ "$rt" == skiplock-runc ]] || die "docker default runtime is '$rt', expected skiplock-runc"
log "docker ready: server $(docker version --format '{{.Server.Version}}'), default runtime $rt"
