#!/usr/bin/env bash
# `make e2e-kind`: kvol on a real three-node kind cluster, with no registry. Brings the
# cluster up (KVOL_KIND_OFFLINE=1 hack/kind-up.sh: local node image, local kvol image, the
# chart, the examples), runs the multi-node checks below, and removes everything again
# (cluster, private Docker, its network namespace) unless KVOL_KIND_KEEP=1.
#
# The checks, each on named nodes so they cross nodes for certain:
#   1. cluster DNS from a worker: a pod on kvol-worker resolves the kubernetes Service
#      through CoreDNS (which runs on the control plane) over the pod network;
#   2. sharing through the store: a pod on kvol-worker writes a file and commits it; a pod on
#      kvol-worker2, started before the write, sees it after reload() (curl on its mount's
#      control socket, as users do);
#   3. the final commit: a pod on kvol-worker2 writes without committing and ends; a new pod
#      on kvol-worker reads what it wrote.
# Prints "N passed, N failed" at the end; exits non-zero if any check failed.
#
# Needs root. Environment: KVOL_KIND_CLUSTER (kvol), KVOL_KIND_KEEP (0).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER="${KVOL_KIND_CLUSTER:-kvol}"
KIND_DIR="${KVOL_KIND_DIR:-/var/lib/kvol-kind}"
NS="kvol-kind-e2e-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
BUSYBOX=kvol.test/busybox:1

say() { printf '[kind-e2e] %s\n' "$*" >&2; }

started=$SECONDS
teardown() {
  if [ "${KVOL_KIND_KEEP:-0}" = 1 ]; then
    say "cluster kept (KVOL_KIND_KEEP=1): remove it with KVOL_KIND_OFFLINE=1 hack/kind-up.sh down"
  else
    KVOL_KIND_OFFLINE=1 "$ROOT/hack/kind-up.sh" down
  fi
}
trap teardown EXIT

t=$SECONDS
KVOL_KIND_OFFLINE=1 "$ROOT/hack/kind-up.sh"
say "cluster up in $((SECONDS - t))s"
kubectl() { "$KIND_DIR/bin/kubectl" --context "kind-$CLUSTER" "$@"; }

# pod NAME NODE SCRIPT [VOLUME]: a busybox pod pinned to NODE running SCRIPT, with VOLUME
# (a kvol Volume of the namespace) at /data.
pod() {
  local name=$1 node=$2 script=$3 volume=${4:-}
  {
    cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $name, namespace: $NS}
spec:
  nodeName: $node
  restartPolicy: Never
  terminationGracePeriodSeconds: 30
  containers:
    - name: main
      image: $BUSYBOX
      imagePullPolicy: Never
      command: [sh, -c, $(printf '%s' "$script" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')]
EOF
    if [ -n "$volume" ]; then
      cat <<EOF
      volumeMounts: [{name: data, mountPath: /data}]
  volumes:
    - name: data
      csi: {driver: csi.kvol.dev, volumeAttributes: {volume: $volume}}
EOF
    fi
  } | kubectl apply -f - >/dev/null
}
phase() { kubectl -n "$NS" get pod "$1" -o 'jsonpath={.status.phase}' 2>/dev/null; }
# wait_phase POD SECONDS PHASE...: until POD is in one of PHASEs.
wait_phase() {
  local name=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds)) now
  while :; do
    now=$(phase "$name")
    for want in "$@"; do [ "$now" != "$want" ] || return 0; done
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name: still '$now' after ${seconds}s"
      kubectl -n "$NS" describe pod "$name" | tail -n 15 >&2 || true
      return 1
    fi
    sleep 1
  done
}
volume() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: kvol.dev/v1alpha1
kind: Volume
metadata: {name: $1, namespace: $NS}
spec: {autocommitIntervalSeconds: 2}
EOF
  kubectl -n "$NS" wait --for=jsonpath='{.status.phase}'=Ready "volume.kvol.dev/$1" --timeout=120s >/dev/null
}

passed=0
failed=0
check() {
  local name=$1; shift
  local t=$SECONDS
  if "$@"; then
    passed=$((passed + 1)); say "PASS $name ($((SECONDS - t))s)"
  else
    failed=$((failed + 1)); say "FAIL $name ($((SECONDS - t))s)"
  fi
}

dns_from_a_worker() {
  # busybox's nslookup also asks for AAAA and exits 1 when there is none: judge the answer.
  pod dns kvol-worker 'nslookup -type=A kubernetes.default.svc.cluster.local 10.96.0.10'
  wait_phase dns 120 Succeeded Failed || return 1
  kubectl -n "$NS" logs dns >&2
  # (grep on a variable: grep -q on a pipe would fail the pipe by SIGPIPE under pipefail)
  grep -qx 'Address: 10.96.0.1' <<<"$(kubectl -n "$NS" logs dns)"
}

sharing_across_nodes() {
  volume shared
  # The reader starts first, so it begins from a commit without the file.
  pod reader kvol-worker2 '
    while :; do
      curl -sf --unix-socket /data/.kvol/control.sock -X POST http://kvol/reload >/dev/null || echo reload-failed
      if [ -f /data/hello ]; then echo "found: $(cat /data/hello)"; exit 0; fi
      sleep 0.5
    done' shared
  wait_phase reader 120 Running || return 1
  pod writer kvol-worker '
    echo "written on kvol-worker" >/data/hello
    curl -sf --unix-socket /data/.kvol/control.sock -X POST http://kvol/commit && echo committed
    trap "exit 0" TERM; sleep 3600 & wait' shared
  wait_phase reader 120 Succeeded || return 1
  kubectl -n "$NS" logs writer >&2
  kubectl -n "$NS" logs reader >&2
  grep -qx 'found: written on kvol-worker' <<<"$(kubectl -n "$NS" logs reader)"
}

final_commit_across_nodes() {
  volume final
  # No commit here: only the one the plugin makes when the pod ends.
  pod ender kvol-worker2 'echo "left by kvol-worker2" >/data/note' final
  wait_phase ender 120 Succeeded || return 1
  kubectl -n "$NS" delete pod ender --wait=true --timeout=120s >/dev/null
  pod later kvol-worker 'cat /data/note' final
  wait_phase later 120 Succeeded Failed || return 1
  kubectl -n "$NS" logs later >&2
  [ "$(kubectl -n "$NS" logs later)" = "left by kvol-worker2" ]
}

kubectl create namespace "$NS" >/dev/null
check "cluster DNS from a worker (CoreDNS on the control plane)" dns_from_a_worker
check "a pod on one worker writes, a pod on another reads after reload" sharing_across_nodes
check "a pod's final commit on one worker reaches a pod on another" final_commit_across_nodes
kubectl delete namespace "$NS" --wait=true --timeout=180s >/dev/null || say "namespace $NS: delete timed out"

say "checks done in $((SECONDS - started))s in all"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
