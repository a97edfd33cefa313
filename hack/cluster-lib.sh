# Shared settings of hack/cluster-up.sh and hack/cluster-down.sh. Source it; do not run it.
#
# The test cluster lives in a network namespace with no route out and a private mount
# namespace held by one "holder" process: every daemon runs inside both, so its listeners
# and every mount it makes (pod volumes, container root filesystems, pod network namespaces)
# stay inside, and nothing of it can outlive the holder.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NETNS="${KVOL_CLUSTER_NETNS:-kvol-e2e}"
# Persistent state (etcd, containerd's images, the kubelet's directory, the kvol store).
CLUSTER_DIR="${KVOL_CLUSTER_DIR:-/var/lib/kvol-cluster}"
# Runtime state: pid files, sockets, logs.
CLUSTER_RUN="${KVOL_CLUSTER_RUN:-/run/kvol-cluster}"
NODE_NAME="${KVOL_CLUSTER_NODE:-kvol-node}"
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
# The node's address sits on the bridge that also serves the pod network; nothing routes out.
BRIDGE=kvolbr0
NODE_IP=10.88.0.1
POD_SUBNET=10.88.0.0/16
SERVICE_RANGE=10.96.0.0/16
KUBERNETES_SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
PAUSE_IMAGE="kvol.test/pause:1"

PIDS="$CLUSTER_RUN/pids"
LOGS="$CLUSTER_RUN/logs"
PKI="$CLUSTER_DIR/pki"
KUBELET_DIR="$CLUSTER_DIR/kubelet"
CONTAINERD_SOCKET="$CLUSTER_RUN/containerd/containerd.sock"
ADMIN_KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"
# An S3 store for the cluster (hack/cluster-up.sh --minio): MinIO on the node's address,
# reachable from pods and from nothing outside the namespace. Its credentials are made on
# first start and kept in $MINIO_ENV.
MINIO_PORT=9000
MINIO_BUCKET=kvol-e2e
MINIO_REGION=us-east-1
MINIO_ENV="$CLUSTER_DIR/minio.env"
# Components in start order; cluster-down stops them in reverse. MinIO (started last, and
# only on request) comes first so it stops last: pods' final commits may still need it.
DAEMONS=(minio etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet)

say() { printf '[%s] %s\n' "$SCRIPT" "$*" >&2; }
die() { say "error: $*"; exit 1; }

# pid_of NAME: the pid recorded for NAME if that process still runs (else nothing).
pid_of() {
  local file="$PIDS/$1.pid" pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}

holder_pid() { pid_of holder; }

# close_inherited_fds: close every descriptor above stderr in this (sub)shell. Daemons must
# not keep what the caller had open: `flock LOCK hack/cluster-up.sh` would otherwise hold
# the lock for as long as the cluster runs.
close_inherited_fds() {
  local fd
  for fd in /proc/"$BASHPID"/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null || continue
    eval "exec $fd>&-" 2>/dev/null || true
  done
}

# in_cluster CMD...: run CMD in the cluster's network and mount namespaces.
in_cluster() {
  local holder
  holder=$(holder_pid)
  [ -n "$holder" ] || die "the cluster's namespaces are gone: run hack/cluster-up.sh"
  nsenter --target "$holder" --mount --net -- "$@"
}

kubectl_cluster() {
  nsenter --net="/var/run/netns/$NETNS" "$KVOL_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "$@"
}

api_ready() {
  [ -f "$ADMIN_KUBECONFIG" ] && [ -e "/var/run/netns/$NETNS" ] &&
    kubectl_cluster get --raw /readyz >/dev/null 2>&1
}
