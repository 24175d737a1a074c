#!/usr/bin/env bash
# End-to-end proof of the offline toolchain:
#   docker.sh, tools.sh, base-images.sh, node-image.sh, cluster up, a Postgres pod
#   (skiplock/postgres:15-bookworm, imagePullPolicy: Never) on a PVC of the default StorageClass,
#   psql through `kubectl port-forward` on 127.0.0.1, pod deleted and recreated: data survives,
#   cluster down. Prints the time of each step.
# SMOKE_KEEP_CLUSTER=1 leaves the cluster running.
set -euo pipefail
LOG_TAG=smoke
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TC="$TOOLCHAIN_DIR"

declare -a TIMINGS=()
timed() { # timed NAME CMD...
  local name="$1"; shift
  local t0=$SECONDS
  log "=== $name"
  "$@"
  TIMINGS+=("$(printf '%-22s %5ss' "$name" "$((SECONDS - t0))")")
}
T_ALL=$SECONDS

timed docker.sh "$TC/docker.sh"
timed tools.sh "$TC/tools.sh"
timed base-images.sh "$TC/base-images.sh"
timed node-image.sh "$TC/node-image.sh"
timed cluster-up "$TC/cluster.sh" up
timed load-postgres "$TC/cluster.sh" load "$PG_IMAGE"

export KUBECONFIG
KUBECONFIG="$("$TC/cluster.sh" kubeconfig)"
KUBECTL="$CACHE/bin/kubectl"
NS=skiplock-smoke
command -v psql >/dev/null || { apt-get update -qq >/dev/null; apt-get install -y -qq postgresql-client >/dev/null; }

pg_pod() {
  "$KUBECTL" -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: pg
  labels: {app: smoke-pg}
spec:
  terminationGracePeriodSeconds: 20
  containers:
    - name: postgres
      image: $PG_IMAGE
      imagePullPolicy: Never
      env:
        - {name: POSTGRES_PASSWORD, value: smoke}
        - {name: POSTGRES_USER, value: skiplock}
        - {name: POSTGRES_DB, value: skiplock}
        - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
      ports: [{containerPort: 5432}]
      readinessProbe:
        exec: {command: [pg_isready, -h, 127.0.0.1, -U, skiplock, -d, skiplock]}
        periodSeconds: 2
      volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumes:
    - name: data
      persistentVolumeClaim: {claimName: pg-data}
YAML
  "$KUBECTL" -n "$NS" wait --for=condition=Ready pod/pg --timeout=180s >/dev/null || {
    "$KUBECTL" -n "$NS" describe pod pg >&2; "$KUBECTL" -n "$NS" logs pg >&2 || true; die "postgres pod not ready"; }
}

PF_PID=""
PF_PORT=""
port_forward() {
  local out="$CACHE/logs/smoke-port-forward.log"
  "$KUBECTL" -n "$NS" port-forward --address 127.0.0.1 pod/pg :5432 >"$out" 2>&1 &
  PF_PID=$!
  local i
  for i in $(seq 1 50); do
    PF_PORT="$(sed -n 's/^Forwarding from 127.0.0.1:\([0-9]*\) .*/\1/p' "$out" | head -1)"
    [[ -n "$PF_PORT" ]] && break
    sleep 0.2
  done
  [[ -n "$PF_PORT" ]] || { cat "$out" >&2; die "port-forward did not start"; }
  log "port-forward 127.0.0.1:$PF_PORT -> pod/pg:5432 (pid $PF_PID)"
}
stop_port_forward() {
  if [[ -n "$PF_PID" ]]; then
    kill "$PF_PID" 2>/dev/null || true
    wait "$PF_PID" 2>/dev/null || true
  fi
  PF_PID=""
}
trap stop_port_forward EXIT
sql() { PGPASSWORD=smoke psql -h 127.0.0.1 -p "$PF_PORT" -U skiplock -d skiplock -v ON_ERROR_STOP=1 -qtAX -c "$1"; }
sql_retry() { local i; for i in $(seq 1 20); do sql "$1" 2>/dev/null && return 0; sleep 0.5; done; sql "$1"; }

postgres_on_pvc() {
  # Start from a fresh namespace (and so a fresh PVC).
  "$KUBECTL" delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s >/dev/null
  "$KUBECTL" create namespace "$NS" >/dev/null
  "$KUBECTL" -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: pg-data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
  pg_pod
  log "PVC: $("$KUBECTL" -n "$NS" get pvc pg-data -o jsonpath='{.status.phase} {.spec.volumeName} {.spec.storageClassName}')"
  port_forward
  local token="smoke-$(date +%s)-$RANDOM"
  sql_retry "CREATE TABLE IF NOT EXISTS smoke (token text primary key, at timestamptz default now()); INSERT INTO smoke(token) VALUES ('$token');"
  log "wrote $token; server: $(sql 'SHOW server_version')"
  stop_port_forward
  log "deleting pod pg (PVC stays)"
  "$KUBECTL" -n "$NS" delete pod pg --wait=true >/dev/null
  pg_pod
  port_forward
  local got
  got="$(sql_retry "SELECT count(*) FROM smoke WHERE token = '$token'")"
  stop_port_forward
  [[ "$got" == 1 ]] || die "data did not survive the pod restart (count=$got)"
  log "data survived the pod restart"
  "$KUBECTL" delete namespace "$NS" --wait=true --timeout=120s >/dev/null
}
timed postgres-pvc postgres_on_pvc

if [[ "${SMOKE_KEEP_CLUSTER:-0}" != 1 ]]; then
  timed cluster-down "$TC/cluster.sh" down
fi

log "SMOKE PASSED in $((SECONDS - T_ALL))s"
{
  echo "smoke run $(date -u +%FT%TZ)"
  printf '  %s\n' "${TIMINGS[@]}"
  printf '  %-22s %5ss\n' total "$((SECONDS - T_ALL))"
} | tee -a "$CACHE/logs/smoke-timings.txt" >&2
