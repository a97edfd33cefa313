#!/usr/bin/env bash
# MinIO for the s3 backend of the e2e tests on the offline kind cluster (KVOL_E2E_TARGET=kind):
# the minio binary of hack/install-minio.sh, run in the private Docker's network namespace
# (hack/kind-docker.sh) on the kind network's gateway address, which every node and pod
# reaches (hack/kind-cni.sh routes the pods' ranges back) and nothing outside does.
#
#   hack/kind-minio.sh up     start it (idempotent), make the bucket kvol-e2e; prints the
#                             endpoint, also kept in $KVOL_KIND_RUN/minio.endpoint
#   hack/kind-minio.sh down   stop it (its data stays in $KVOL_KIND_DIR/minio)
#
# Credentials are made on first start and kept in $KVOL_KIND_DIR/minio.env
# (MINIO_ROOT_USER, MINIO_ROOT_PASSWORD). Needs root and a running hack/kind-up.sh cluster.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${KVOL_KIND_DIR:-/var/lib/kvol-kind}"
RUN="${KVOL_KIND_RUN:-/run/kvol-kind}"
NETNS="${KVOL_KIND_NETNS:-kvol-kind}"
ENV_FILE="$DATA/minio.env"
PIDFILE="$RUN/minio.pid"
BUCKET=kvol-e2e
REGION=us-east-1
PORT=9000

say() { printf '[kind-minio] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

running_pid() { live_pid "$PIDFILE"; }

in_netns() { nsenter --net="/var/run/netns/$NETNS" "$@"; }

up() {
  [ -x "$KVOL_BIN/minio" ] || die "minio is missing: run hack/install-minio.sh"
  [ -e "/var/run/netns/$NETNS" ] || die "namespace $NETNS is missing: run KVOL_KIND_OFFLINE=1 hack/kind-up.sh"
  # The gateway of kind's Docker network: the address of that namespace on the nodes' bridge.
  local gateway
  gateway=$("$ROOT/hack/kind-docker.sh" run docker network inspect kind \
    --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9.]+$') ||
    die "kind's Docker network has no IPv4 gateway (is the cluster up?)"
  local endpoint="http://$gateway:$PORT"
  if [ ! -f "$ENV_FILE" ]; then
    mkdir -p "$DATA"
    printf 'MINIO_ROOT_USER=kvol-%s\nMINIO_ROOT_PASSWORD=%s\n' \
      "$(openssl rand -hex 4)" "$(openssl rand -hex 16)" >"$ENV_FILE.new"
    chmod 600 "$ENV_FILE.new"
    mv "$ENV_FILE.new" "$ENV_FILE"
  fi
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  s3() {
    in_netns curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
      --aws-sigv4 "aws:amz:$REGION:s3" --user "$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD" \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "$endpoint/$BUCKET"
  }
  if [ -z "$(running_pid)" ]; then
    mkdir -p "$DATA/minio" "$RUN"
    # Every inherited descriptor closed: a caller's lock must not live as long as MinIO.
    (
      for fd in /proc/"$BASHPID"/fd/*; do
        fd=${fd##*/}
        [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
      done
      exec setsid nsenter --net="/var/run/netns/$NETNS" env MINIO_ROOT_USER="$MINIO_ROOT_USER" \
        MINIO_ROOT_PASSWORD="$MINIO_ROOT_PASSWORD" MINIO_BROWSER=off MINIO_UPDATE=off \
        "$KVOL_BIN/minio" server --quiet --address "$gateway:$PORT" \
        --console-address 127.0.0.1:9001 "$DATA/minio" </dev/null >>"$RUN/minio.log" 2>&1
    ) &
    echo $! >"$PIDFILE"
    # Ready once signed requests are answered: a HEAD of the bucket says 200 or 404.
    local deadline=$((SECONDS + 60))
    until case "$(s3 -I)" in 200 | 404) true ;; *) false ;; esac; do
      [ -n "$(running_pid)" ] || { tail -n 20 "$RUN/minio.log" >&2; die "minio exited"; }
      [ "$SECONDS" -lt "$deadline" ] || die "minio did not answer within 60s (log: $RUN/minio.log)"
      sleep 0.5
    done
  fi
  local code
  code=$(s3 -X PUT)
  case "$code" in
    200 | 409) ;;  # made now, or already there
    *) die "could not create bucket $BUCKET on MinIO (HTTP $code; log: $RUN/minio.log)" ;;
  esac
  echo "$endpoint" >"$RUN/minio.endpoint"
  say "minio: $endpoint, bucket $BUCKET, credentials in $ENV_FILE"
  echo "$endpoint"
}

down() {
  local pid
  pid=$(running_pid)
  if [ -n "$pid" ]; then
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    say "minio stopped"
  fi
  rm -f "$PIDFILE" "$RUN/minio.endpoint"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) die "usage: hack/kind-minio.sh up|down" ;;
esac
