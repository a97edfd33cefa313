#!/usr/bin/env bash
# A local kvol cluster with kind: create the cluster (hack/kind-config.yaml), build the kvol
# image, load it into the nodes, install the Helm chart and apply the examples.
#
# Needs Docker (or another kind node provider) and access to the kind node image's and the
# CSI sidecars' registries. kind and helm come from hack/install-kind.sh and
# hack/install-helm.sh (or PATH); kubectl from PATH or hack/install-kube.sh.
#
# Environment:
#   KVOL_KIND_CLUSTER  cluster name (kvol)
#   KVOL_KIND_STORE    host directory shared by every node as the filesystem store
#                      (/tmp/kvol-kind-store)
#   KVOL_KIND_IMAGE    kind node image, e.g. kindest/node:v1.35.0 (kind's default)
#   KVOL_IMAGE         image to build and load (kvol:dev)
#   KVOL_NAMESPACE     namespace of the release (kvol-system)
#   KVOL_EXAMPLES      directory whose volumes.yaml, pod-inline.yaml and pod-pvc.yaml are
#                      applied at the end (examples/); the chart already made the backend
# Usage: hack/kind-up.sh [down]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KVOL_CACHE="${KVOL_CACHE:-$HOME/.cache/kvol}"
CLUSTER="${KVOL_KIND_CLUSTER:-kvol}"
STORE="${KVOL_KIND_STORE:-/tmp/kvol-kind-store}"
IMAGE="${KVOL_IMAGE:-kvol:dev}"
NAMESPACE="${KVOL_NAMESPACE:-kvol-system}"
EXAMPLES="${KVOL_EXAMPLES:-$ROOT/examples}"

say() { printf '[kind-up] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# find_tool NAME HOW-TO-GET-IT: a binary from PATH or the kvol tool cache.
find_tool() {
  local name=$1 hint=$2
  if command -v "$name" >/dev/null 2>&1; then
    command -v "$name"
  elif [ -x "$KVOL_CACHE/bin/$name" ]; then
    echo "$KVOL_CACHE/bin/$name"
  else
    die "$name is missing: $hint"
  fi
}

DOCKER=$(find_tool docker "install Docker (https://docs.docker.com/engine/install/) and start it")
KIND=$(find_tool kind "run hack/install-kind.sh")
"$DOCKER" info >/dev/null 2>&1 ||
  die "docker is installed but its daemon does not answer ('docker info' failed): start it"

if [ "${1:-up}" = down ]; then
  "$KIND" delete cluster --name "$CLUSTER"
  exit 0
fi
[ "${1:-up}" = up ] || die "unknown argument '$1' (usage: hack/kind-up.sh [down])"

HELM=$(find_tool helm "run hack/install-helm.sh")
KUBECTL=$(find_tool kubectl "install kubectl, or run hack/install-kube.sh kubectl")
CONTEXT="kind-$CLUSTER"
trap 'rm -f "${config:-}"' EXIT

# 1. The cluster, its nodes sharing one store directory.
mkdir -p "$STORE"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "cluster $CLUSTER exists; reusing it"
else
  config="$(mktemp)"
  sed "s|/tmp/kvol-kind-store|$STORE|g" "$ROOT/hack/kind-config.yaml" >"$config"
  say "creating cluster $CLUSTER (store: $STORE)"
  "$KIND" create cluster --name "$CLUSTER" --config "$config" \
    ${KVOL_KIND_IMAGE:+--image "$KVOL_KIND_IMAGE"} --wait 120s
fi
# kind writes the context kind-<cluster> into the user's kubeconfig; every call names it.
"$KIND" export kubeconfig --name "$CLUSTER"

# 2. The image, loaded into every node: no registry needed.
say "building $IMAGE"
"$DOCKER" build -t "$IMAGE" "$ROOT"
say "loading $IMAGE into the nodes"
"$KIND" load docker-image "$IMAGE" --name "$CLUSTER"

# 3. The chart. The image is only on the nodes, so never pull it.
repository="${IMAGE%:*}"
tag="${IMAGE##*:}"
[ "$repository" != "$IMAGE" ] || tag=latest
say "installing the chart into $NAMESPACE"
"$KUBECTL" --context "$CONTEXT" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" --context "$CONTEXT" apply -f -
"$KUBECTL" --context "$CONTEXT" label namespace "$NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=privileged
"$HELM" upgrade --install kvol "$ROOT/charts/kvol" --kube-context "$CONTEXT" \
  --namespace "$NAMESPACE" \
  --set image.kvol.repository="$repository" \
  --set image.kvol.tag="$tag" \
  --set image.kvol.pullPolicy=Never \
  --wait --timeout 5m

# 4. The examples: volumes first, then the pods that mount them once the operator has them.
if [ -f "$EXAMPLES/volumes.yaml" ]; then
  say "applying the examples from $EXAMPLES"
  "$KUBECTL" --context "$CONTEXT" apply -f "$EXAMPLES/volumes.yaml"
  "$KUBECTL" --context "$CONTEXT" wait --for=jsonpath='{.status.phase}'=Ready \
    -f "$EXAMPLES/volumes.yaml" --timeout=120s
  for pod in pod-inline.yaml pod-pvc.yaml; do
    [ ! -f "$EXAMPLES/$pod" ] || "$KUBECTL" --context "$CONTEXT" apply -f "$EXAMPLES/$pod"
  done
else
  say "no $EXAMPLES/volumes.yaml: no examples applied"
fi

say "ready: kubectl --context $CONTEXT get volumes,volumebackends -A"
say "remove it all with: hack/kind-up.sh down"
