#!/usr/bin/env bash
# A local kvol cluster with kind: create the cluster (hack/kind-config.yaml), build the kvol
# image, load it into the nodes, install the Helm chart and apply the examples.
#
# Needs Docker (or another kind node provider) and access to the kind node image's and the
# CSI sidecars' registries. kind and helm come from hack/install-kind.sh and
# hack/install-helm.sh (or PATH); kubectl from PATH or hack/install-kube.sh.
#
# KVOL_KIND_OFFLINE=1 needs no registry at all (root, Linux): Docker is a private daemon in
# a network namespace with no route out (hack/kind-docker.sh), the node image is built
# locally (hack/kind-node-image.sh), the pod network is Debian's CNI plugins set up by
# hack/kind-cni.sh (the cluster is made with disableDefaultCNI), kvol's image comes from
# hack/build-image.sh, and kind, kubectl and helm run inside that namespace: use the
# wrappers it prints ($KVOL_KIND_DIR/bin/kubectl, .../helm).
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
#   KVOL_KIND_OFFLINE  1: build and run everything locally, as above (0)
#   KVOL_KIND_DIR      offline: Docker's data, the kubeconfig and the wrappers (/var/lib/kvol-kind)
# Usage: hack/kind-up.sh [down]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KVOL_CACHE="${KVOL_CACHE:-$HOME/.cache/kvol}"
CLUSTER="${KVOL_KIND_CLUSTER:-kvol}"
STORE="${KVOL_KIND_STORE:-/tmp/kvol-kind-store}"
IMAGE="${KVOL_IMAGE:-kvol:dev}"
NAMESPACE="${KVOL_NAMESPACE:-kvol-system}"
EXAMPLES="${KVOL_EXAMPLES:-$ROOT/examples}"
OFFLINE="${KVOL_KIND_OFFLINE:-0}"
KIND_DIR="${KVOL_KIND_DIR:-/var/lib/kvol-kind}"

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

# IN: the prefix every kind, kubectl and helm call runs under (offline: inside the private
# Docker's network namespace, with a kubeconfig of its own).
IN=()
if [ "$OFFLINE" = 1 ]; then
  [ "$(id -u)" = 0 ] || die "KVOL_KIND_OFFLINE=1 needs root (network namespace, private Docker)"
  [ -x "$KVOL_CACHE/bin/kind" ] || "$ROOT/hack/install-kind.sh"
  KIND="$KVOL_CACHE/bin/kind"
  mkdir -p "$KIND_DIR"
  export KUBECONFIG="$KIND_DIR/kubeconfig"
  if [ "${1:-up}" = down ]; then
    # The e2e tests' MinIO (hack/kind-minio.sh) runs in the namespace: it goes first.
    "$ROOT/hack/kind-minio.sh" down
    if [ -S "${KVOL_KIND_RUN:-/run/kvol-kind}/docker.sock" ]; then
      "$ROOT/hack/kind-docker.sh" run "$KIND" delete cluster --name "$CLUSTER"
    fi
    "$ROOT/hack/kind-docker.sh" down
    exit 0
  fi
  "$ROOT/hack/kind-docker.sh" up
  eval "export $("$ROOT/hack/kind-docker.sh" env)"
  DOCKER=/usr/bin/docker
  IN=("$ROOT/hack/kind-docker.sh" run env KUBECONFIG="$KUBECONFIG")
else
  DOCKER=$(find_tool docker "install Docker (https://docs.docker.com/engine/install/) and start it")
  KIND=$(find_tool kind "run hack/install-kind.sh")
fi
"$DOCKER" info >/dev/null 2>&1 ||
  die "docker is installed but its daemon does not answer ('docker info' failed): start it"

if [ "${1:-up}" = down ]; then
  "$KIND" delete cluster --name "$CLUSTER"
  exit 0
fi
[ "${1:-up}" = up ] || die "unknown argument '$1' (usage: hack/kind-up.sh [down])"

if [ "$OFFLINE" = 1 ]; then
  [ -x "$KVOL_CACHE/bin/helm" ] || "$ROOT/hack/install-helm.sh"
  [ -x "$KVOL_CACHE/bin/kubectl" ] || "$ROOT/hack/install-kube.sh" kubectl
  HELM="$KVOL_CACHE/bin/helm"
  KUBECTL="$KVOL_CACHE/bin/kubectl"
  say "building the node image (hack/kind-node-image.sh; cached after the first run)"
  KVOL_KIND_IMAGE=$(KVOL_KIND_KEEP_DOCKER=1 "$ROOT/hack/kind-node-image.sh")
else
  HELM=$(find_tool helm "run hack/install-helm.sh")
  KUBECTL=$(find_tool kubectl "install kubectl, or run hack/install-kube.sh kubectl")
fi
CONTEXT="kind-$CLUSTER"
trap 'rm -f "${config:-}"' EXIT

# 1. The cluster, its nodes sharing one store directory.
mkdir -p "$STORE"
if "${IN[@]}" "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "cluster $CLUSTER exists; reusing it"
else
  config="$(mktemp)"
  sed "s|/tmp/kvol-kind-store|$STORE|g" "$ROOT/hack/kind-config.yaml" >"$config"
  # Kubernetes 1.35 refuses cgroup v1 unless the kubelet is told otherwise.
  if [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
    printf 'kubeadmConfigPatches:\n  - |\n    kind: KubeletConfiguration\n    failCgroupV1: false\n' >>"$config"
  fi
  wait=(--wait 120s)
  if [ "$OFFLINE" = 1 ]; then
    # No kindnetd offline: hack/kind-cni.sh sets up the pod network once the nodes exist.
    printf 'networking:\n  disableDefaultCNI: true\n' >>"$config"
    wait=()
  fi
  say "creating cluster $CLUSTER (store: $STORE)"
  "${IN[@]}" "$KIND" create cluster --name "$CLUSTER" --config "$config" \
    ${KVOL_KIND_IMAGE:+--image "$KVOL_KIND_IMAGE"} "${wait[@]}"
fi
# kind writes the context kind-<cluster> into the user's kubeconfig; every call names it.
"${IN[@]}" "$KIND" export kubeconfig --name "$CLUSTER"
kubectl() { "${IN[@]}" "$KUBECTL" --context "$CONTEXT" "$@"; }
if [ "$OFFLINE" = 1 ]; then
  "${IN[@]}" "$ROOT/hack/kind-cni.sh" "$CLUSTER" "$KUBECTL" --context "$CONTEXT"
  kubectl wait --for=condition=Ready nodes --all --timeout=180s >/dev/null
  # Wrappers that reach the cluster from outside its network namespace.
  mkdir -p "$KIND_DIR/bin"
  for tool in kubectl helm; do
    bin="$KVOL_CACHE/bin/$tool"
    printf '#!/bin/sh\n# %s for the offline kind cluster (its API is reachable only inside its network namespace).\nexec nsenter --net=/var/run/netns/%s env KUBECONFIG=%s %s "$@"\n' \
      "$tool" "${KVOL_KIND_NETNS:-kvol-kind}" "$KUBECONFIG" "$bin" >"$KIND_DIR/bin/$tool.new"
    chmod 755 "$KIND_DIR/bin/$tool.new"
    mv "$KIND_DIR/bin/$tool.new" "$KIND_DIR/bin/$tool"
  done
fi

# 2. The image, loaded into every node: no registry needed.
if [ "$OFFLINE" = 1 ]; then
  # The image's full name, as containerd stores it (kvol:dev is docker.io/library/kvol:dev).
  full=$IMAGE
  case "${IMAGE%%/*}" in
    "$IMAGE") full="docker.io/library/$IMAGE" ;;
    *.*|*:*|localhost) ;;
    *) full="docker.io/$IMAGE" ;;
  esac
  say "building $full (hack/build-image.sh)"
  # build-image.sh names the archive on its last line: "[build-image] REF: PATH".
  archive=$(KVOL_IMAGE="$full" "$ROOT/hack/build-image.sh" --no-import kvol 2>&1 >/dev/null | tail -n 1)
  archive=${archive##*: }
  [ -f "$archive" ] || die "hack/build-image.sh made no image archive ($archive)"
  say "loading $full into the nodes"
  "${IN[@]}" "$KIND" load image-archive "$archive" --name "$CLUSTER"
  # The examples' pods run busybox: the local one, never pulled.
  archive=$("$ROOT/hack/build-image.sh" --no-import busybox 2>&1 >/dev/null | tail -n 1)
  archive=${archive##*: }
  "${IN[@]}" "$KIND" load image-archive "$archive" --name "$CLUSTER"
else
  say "building $IMAGE"
  "$DOCKER" build -t "$IMAGE" "$ROOT"
  say "loading $IMAGE into the nodes"
  "$KIND" load docker-image "$IMAGE" --name "$CLUSTER"
fi

# 3. The chart. The image is only on the nodes, so never pull it.
repository="${IMAGE%:*}"
tag="${IMAGE##*:}"
[ "$repository" != "$IMAGE" ] || tag=latest
say "installing the chart into $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$NAMESPACE" --overwrite pod-security.kubernetes.io/enforce=privileged
"${IN[@]}" "$HELM" upgrade --install kvol "$ROOT/charts/kvol" --kube-context "$CONTEXT" \
  --namespace "$NAMESPACE" \
  --set image.kvol.repository="$repository" \
  --set image.kvol.tag="$tag" \
  --set image.kvol.pullPolicy=Never \
  --wait --timeout 5m

# 4. The examples: volumes first, then the pods that mount them once the operator has them.
if [ -f "$EXAMPLES/volumes.yaml" ]; then
  say "applying the examples from $EXAMPLES"
  kubectl apply -f - <"$EXAMPLES/volumes.yaml"
  kubectl wait --for=jsonpath='{.status.phase}'=Ready \
    -f - --timeout=120s <"$EXAMPLES/volumes.yaml"
  for pod in pod-inline.yaml pod-pvc.yaml; do
    [ -f "$EXAMPLES/$pod" ] || continue
    if [ "$OFFLINE" = 1 ]; then
      # Offline, the pods run the local busybox and never pull.
      sed -e 's|^\( *\)image: busybox$|\1image: kvol.test/busybox:1\n\1imagePullPolicy: Never|' \
        "$EXAMPLES/$pod" | kubectl apply -f -
    else
      kubectl apply -f - <"$EXAMPLES/$pod"
    fi
  done
else
  say "no $EXAMPLES/volumes.yaml: no examples applied"
fi

if [ "$OFFLINE" = 1 ]; then
  say "ready: $KIND_DIR/bin/kubectl --context $CONTEXT get volumes,volumebackends,pods -A"
  say "remove it all with: KVOL_KIND_OFFLINE=1 hack/kind-up.sh down"
else
  say "ready: kubectl --context $CONTEXT get volumes,volumebackends -A"
  say "remove it all with: hack/kind-up.sh down"
fi
