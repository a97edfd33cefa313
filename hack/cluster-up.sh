#!/usr/bin/env bash
# A real one-node Kubernetes cluster on this machine, for the e2e tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and containerd, all inside
# a network namespace with no route out (hack/cluster-lib.sh describes the layout).
#
# Idempotent: whatever already runs is kept, whatever is missing (a daemon that died or was
# killed by a test) is started again. hack/cluster-down.sh stops it all.
#
# Parts: Debian packages containerd, runc, containernetworking-plugins, busybox-static,
# iptables, openssl, curl (hack/install-debian-deps.sh); etcd (hack/install-etcd.sh); the
# Kubernetes binaries (hack/install-kube.sh kube-apiserver kubectl kubelet
# kube-controller-manager kube-scheduler). Needs root (mounts, namespaces, cgroups).
#
# Afterwards: $KVOL_CLUSTER_DIR/bin/kubectl and .../bin/helm run in the cluster's network.
#
# Usage: hack/cluster-up.sh [--minio]
#   --minio   also run MinIO (hack/install-minio.sh) at http://10.88.0.1:9000 inside the
#             cluster's network, with the bucket kvol-e2e; its credentials are in
#             $KVOL_CLUSTER_DIR/minio.env (MINIO_ROOT_USER, MINIO_ROOT_PASSWORD).
SCRIPT=cluster-up
source "$(dirname "$0")/cluster-lib.sh"

with_minio=0
for arg in "$@"; do
  case "$arg" in
    --minio) with_minio=1 ;;
    *) die "unknown argument $arg (usage: hack/cluster-up.sh [--minio])" ;;
  esac
done

started=$SECONDS
[ "$(id -u)" = 0 ] || die "needs root (it creates namespaces and mounts)"

# --- every part, or a message naming what provides it -------------------------------------
for cmd in nsenter unshare ip openssl curl iptables containerd ctr runc; do
  command -v "$cmd" >/dev/null 2>&1 ||
    die "$cmd is missing: run hack/install-debian-deps.sh (Debian packages in hack/debian-packages.txt)"
done
for plugin in bridge host-local loopback; do
  [ -x "/usr/lib/cni/$plugin" ] ||
    die "CNI plugin $plugin is missing: run hack/install-debian-deps.sh (containernetworking-plugins)"
done
[ -x /bin/busybox ] || die "busybox is missing: run hack/install-debian-deps.sh (busybox-static)"
[ -x "$KVOL_BIN/etcd" ] || die "etcd is missing: run hack/install-etcd.sh"
for b in kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler; do
  [ -x "$KVOL_BIN/$b" ] ||
    die "$b is missing: run hack/install-kube.sh kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler"
done
[ "$with_minio" = 0 ] || [ -x "$KVOL_BIN/minio" ] || die "minio is missing: run hack/install-minio.sh"

mkdir -p "$CLUSTER_DIR" "$CLUSTER_RUN" "$PIDS" "$LOGS"

# --- namespaces ------------------------------------------------------------------------------
if [ -z "$(holder_pid)" ]; then
  if [ -e "/var/run/netns/$NETNS" ] || [ -n "$(pid_of kubelet)$(pid_of containerd)" ]; then
    say "a previous cluster was left half-stopped: cleaning it up first"
    "$(dirname "$0")/cluster-down.sh"
  fi
  ip netns add "$NETNS"
  ip -n "$NETNS" link set lo up
  ip -n "$NETNS" link add "$BRIDGE" type bridge
  ip -n "$NETNS" addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip -n "$NETNS" link set "$BRIDGE" up
  # The holder keeps both namespaces alive; unshare makes every mount in it private, so
  # nothing mounted inside propagates out.
  (
    close_inherited_fds
    exec setsid nsenter --net="/var/run/netns/$NETNS" unshare --mount --propagation private \
      sleep infinity </dev/null >/dev/null 2>&1
  ) &
  echo $! >"$PIDS/holder.pid"
  for _ in $(seq 50); do
    [ "$(readlink "/proc/$(cat "$PIDS/holder.pid")/ns/mnt")" != "$(readlink /proc/self/ns/mnt)" ] && break
    sleep 0.1
  done
  [ -n "$(holder_pid)" ] || die "could not start the namespace holder"
  # Mounts the kubelet and the plugin make for pods must reach containers (Bidirectional
  # hostPath mounts need a shared mount): the whole cluster directory is one, inside.
  in_cluster sh -c "mount --bind '$CLUSTER_DIR' '$CLUSTER_DIR' && mount --make-rshared '$CLUSTER_DIR'"
  # No kube-proxy: the one Service pods need (kubernetes) is a fixed DNAT to the apiserver.
  in_cluster iptables -t nat -A PREROUTING -d "$KUBERNETES_SERVICE_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$NODE_IP:$APISERVER_PORT"
  in_cluster iptables -t nat -A OUTPUT -d "$KUBERNETES_SERVICE_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$NODE_IP:$APISERVER_PORT"
  say "namespaces ready (network $NETNS, holder $(holder_pid))"
fi

# --- certificates, tokens, configuration (once) ------------------------------------------------
mkdir -p "$PKI"
if [ ! -f "$PKI/tokens.csv" ]; then
  (
    cd "$PKI"
    openssl genrsa -out ca.key 2048 2>/dev/null
    openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=kvol-e2e-ca" -out ca.crt 2>/dev/null
    openssl genrsa -out apiserver.key 2048 2>/dev/null
    san="IP:$NODE_IP,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,DNS:localhost,DNS:kubernetes"
    san+=",DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" >apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    token() { openssl rand -hex 16; }
    {
      echo "$(token),kvol-admin,kvol-admin,\"system:masters\""
      echo "$(token),system:node:$NODE_NAME,system:node:$NODE_NAME,\"system:nodes\""
      echo "$(token),system:kube-controller-manager,system:kube-controller-manager,\"\""
      echo "$(token),system:kube-scheduler,system:kube-scheduler,\"\""
    } >tokens.csv.new
    mv tokens.csv.new tokens.csv
  )
fi
token_of() { awk -F, -v user="$1" '$2 == user { print $1 }' "$PKI/tokens.csv"; }
kubeconfig() {
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kvol-e2e
  cluster: {server: "https://$NODE_IP:$APISERVER_PORT", certificate-authority: "$PKI/ca.crt"}
users:
- name: user
  user: {token: "$(token_of "$1")"}
contexts:
- name: kvol-e2e
  context: {cluster: kvol-e2e, user: user, namespace: default}
current-context: kvol-e2e
EOF
}
kubeconfig kvol-admin >"$ADMIN_KUBECONFIG"
kubeconfig "system:node:$NODE_NAME" >"$CLUSTER_DIR/kubelet.kubeconfig"
kubeconfig system:kube-controller-manager >"$CLUSTER_DIR/controller-manager.kubeconfig"
kubeconfig system:kube-scheduler >"$CLUSTER_DIR/scheduler.kubeconfig"

mkdir -p "$CLUSTER_DIR/cni" "$CLUSTER_DIR/store" "$KUBELET_DIR" "$CLUSTER_RUN/containerd"
cat >"$CLUSTER_DIR/cni/10-kvol.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kvol-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni-ipam",
        "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.88.1.1", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
cat >"$CLUSTER_DIR/containerd.toml" <<EOF
version = 2
root = "$CLUSTER_DIR/containerd"
state = "$CLUSTER_RUN/containerd/state"
[grpc]
  address = "$CONTAINERD_SOCKET"
[ttrpc]
  address = "$CONTAINERD_SOCKET.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CLUSTER_DIR/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  # Preloaded by hack/build-image.sh: containerd never pulls.
  sandbox_image = "$PAUSE_IMAGE"
  # CAP_SYS_RESOURCE may be missing: a negative oom_score_adj would make runc fail.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$CLUSTER_RUN/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni"
    max_conf_num = 1
EOF
cat >"$CLUSTER_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$CONTAINERD_SOCKET
# cgroup v1 without systemd.
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
resolvConf: ""
clusterDomain: cluster.local
# Only the apiserver (in this namespace) talks to the kubelet.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
# A test machine's disk may be fuller than the defaults allow; images are never pulled, so
# they must never be collected either.
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF

# --- daemons -----------------------------------------------------------------------------------
# start NAME CMD...: CMD inside the cluster's namespaces, detached, its pid recorded.
start() {
  local name=$1; shift
  if [ -n "$(pid_of "$name")" ]; then return 1; fi
  local holder; holder=$(holder_pid)
  echo "--- $(date -u +%FT%TZ) started by $SCRIPT" >>"$LOGS/$name.log"
  (
    close_inherited_fds
    exec setsid nsenter --target "$holder" --mount --net -- \
      env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@" \
      </dev/null >>"$LOGS/$name.log" 2>&1
  ) &
  echo $! >"$PIDS/$name.pid"
  say "$name: started (pid $!, log $LOGS/$name.log)"
}

# wait_for WHAT SECONDS NAME CMD...: poll CMD until it succeeds; fail with NAME's log tail.
wait_for() {
  local what=$1 seconds=$2 name=$3; shift 3
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ -z "$(pid_of "$name")" ]; then
      tail -n 30 "$LOGS/$name.log" >&2
      die "$name exited while waiting for $what (log: $LOGS/$name.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$LOGS/$name.log" >&2
      die "timed out after ${seconds}s waiting for $what (log: $LOGS/$name.log)"
    fi
    sleep 0.2
  done
}

if start etcd "$KVOL_BIN/etcd" --name=kvol-e2e --data-dir="$CLUSTER_DIR/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=kvol-e2e=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn; then
  wait_for "etcd to be healthy" 30 etcd in_cluster curl -sf http://127.0.0.1:2379/health
fi

if start kube-apiserver "$KVOL_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
  --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --client-ca-file="$PKI/ca.crt" --token-auth-file="$PKI/tokens.csv" \
  --service-cluster-ip-range="$SERVICE_RANGE" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --kubelet-preferred-address-types=InternalIP \
  --profiling=false; then
  wait_for "kube-apiserver /readyz" 90 kube-apiserver api_ready
fi

if start containerd containerd --config "$CLUSTER_DIR/containerd.toml"; then
  wait_for "containerd" 30 containerd ctr --address "$CONTAINERD_SOCKET" version
fi
# The sandbox image must be there before the kubelet asks for a pod (nothing is pulled).
"$REPO_ROOT/hack/build-image.sh" pause busybox

start kube-controller-manager "$KVOL_BIN/kube-controller-manager" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-name=kvol-e2e || true
start kube-scheduler "$KVOL_BIN/kube-scheduler" \
  --kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false || true
start kubelet "$KVOL_BIN/kubelet" \
  --config="$CLUSTER_DIR/kubelet.yaml" --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" \
  --root-dir="$KUBELET_DIR" --cert-dir="$KUBELET_DIR/pki" \
  --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=2 || true

node_ready() {
  [ "$(kubectl_cluster get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for "node $NODE_NAME to be Ready" 120 kubelet node_ready
sa_ready() { kubectl_cluster -n default get serviceaccount default; }
wait_for "the default service account" 60 kube-controller-manager sa_ready

# --- MinIO (on request) --------------------------------------------------------------------------
if [ "$with_minio" = 1 ]; then
  if [ ! -f "$MINIO_ENV" ]; then
    printf 'MINIO_ROOT_USER=kvol-%s\nMINIO_ROOT_PASSWORD=%s\n' \
      "$(openssl rand -hex 4)" "$(openssl rand -hex 16)" >"$MINIO_ENV.new"
    chmod 600 "$MINIO_ENV.new"
    mv "$MINIO_ENV.new" "$MINIO_ENV"
  fi
  # shellcheck disable=SC1090
  source "$MINIO_ENV"
  mkdir -p "$CLUSTER_DIR/minio"
  # s3 SIGNATURE: a request signed with the root credentials (curl signs SigV4 itself).
  s3() {
    in_cluster curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
      --aws-sigv4 "aws:amz:$MINIO_REGION:s3" --user "$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD" \
      -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "http://$NODE_IP:$MINIO_PORT/$MINIO_BUCKET"
  }
  # Ready once signed requests are answered (health answers a moment before the server
  # has loaded its users): a HEAD of the bucket says 200 or 404.
  minio_ready() { case "$(s3 -I)" in 200 | 404) return 0 ;; *) return 1 ;; esac; }
  # The console listens on loopback (of the namespace) only; the S3 API on the node address.
  if start minio env MINIO_ROOT_USER="$MINIO_ROOT_USER" MINIO_ROOT_PASSWORD="$MINIO_ROOT_PASSWORD" \
    MINIO_BROWSER=off MINIO_UPDATE=off "$KVOL_BIN/minio" server --quiet \
    --address "$NODE_IP:$MINIO_PORT" --console-address 127.0.0.1:9001 "$CLUSTER_DIR/minio"; then
    wait_for "MinIO to answer signed requests" 60 minio minio_ready
  fi
  code=$(s3 -X PUT)
  case "$code" in
    200 | 409) ;;  # made now, or already there
    *) die "could not create bucket $MINIO_BUCKET on MinIO (HTTP $code; log: $LOGS/minio.log)" ;;
  esac
  say "minio: http://$NODE_IP:$MINIO_PORT, bucket $MINIO_BUCKET, credentials in $MINIO_ENV"
fi

# --- clients that reach the cluster's network ---------------------------------------------------
mkdir -p "$CLUSTER_DIR/bin"
cat >"$CLUSTER_DIR/bin/kubectl.new" <<EOF
#!/bin/sh
# kubectl for the kvol e2e cluster (its apiserver is reachable only inside $NETNS).
exec nsenter --net=/var/run/netns/$NETNS "$KVOL_BIN/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" "\$@"
EOF
cat >"$CLUSTER_DIR/bin/helm.new" <<EOF
#!/bin/sh
# helm for the kvol e2e cluster (hack/install-helm.sh builds it).
exec nsenter --net=/var/run/netns/$NETNS "$KVOL_BIN/helm" --kubeconfig "$ADMIN_KUBECONFIG" "\$@"
EOF
chmod 755 "$CLUSTER_DIR/bin/kubectl.new" "$CLUSTER_DIR/bin/helm.new"
mv "$CLUSTER_DIR/bin/kubectl.new" "$CLUSTER_DIR/bin/kubectl"
mv "$CLUSTER_DIR/bin/helm.new" "$CLUSTER_DIR/bin/helm"
say "cluster ready in $((SECONDS - started))s: $CLUSTER_DIR/bin/kubectl get nodes"
