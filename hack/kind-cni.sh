#!/usr/bin/env bash
# The pod network of an offline kind cluster (KVOL_KIND_OFFLINE=1 hack/kind-up.sh), in place
# of kindnetd, which no package registry serves: Debian's CNI plugins (ptp + host-local, as
# kindnetd configures them) on every node, each node handing out addresses from the pod
# range the controller-manager gave it, and a route on every node to every other node's
# range through that node's address. Pods then reach each other and Services across nodes;
# nothing is masqueraded, and nothing routes out of the cluster's network namespace. The
# namespace itself (where Docker runs) gets the same routes, so what runs there, a MinIO or
# a Prometheus of the e2e tests, and pods reach each other too.
#
# Usage: hack/kind-cni.sh CLUSTER KUBECTL...   (KUBECTL: the command that reaches the cluster)
# Run where `docker` reaches kind's nodes (hack/kind-docker.sh run). Idempotent.
set -euo pipefail

say() { printf '[kind-cni] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ $# -ge 2 ] || die "usage: hack/kind-cni.sh CLUSTER KUBECTL..."
cluster=$1; shift
kubectl=("$@")

# The controller-manager sets each node's podCIDR a moment after the node registers.
deadline=$((SECONDS + 120))
while :; do
  table=$("${kubectl[@]}" get nodes -o \
    'jsonpath={range .items[*]}{.metadata.name} {.spec.podCIDR} {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}')
  missing=$(awk 'NF < 3' <<<"$table")
  if [ -n "$table" ] && [ -z "$missing" ]; then break; fi
  [ "$SECONDS" -lt "$deadline" ] || die "nodes without a pod range after 120s: $missing"
  sleep 1
done

while read -r node cidr _; do
  docker exec -i "$node" sh -ec "
    mkdir -p /etc/cni/net.d
    cat >/etc/cni/net.d/10-kvol-ptp.conflist.new
    mv /etc/cni/net.d/10-kvol-ptp.conflist.new /etc/cni/net.d/10-kvol-ptp.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kvol-kind",
  "plugins": [
    {
      "type": "ptp",
      "ipMasq": false,
      "mtu": 1500,
      "ipam": {
        "type": "host-local",
        "dataDir": "/run/cni-ipam-state",
        "ranges": [[{"subnet": "$cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  while read -r other other_cidr other_ip; do
    [ "$other" != "$node" ] || continue
    docker exec "$node" ip route replace "$other_cidr" via "$other_ip"
  done <<<"$table"
  say "$node: pods in $cidr"
done <<<"$table"
while read -r node cidr ip; do
  ip route replace "$cidr" via "$ip"
done <<<"$table"
say "pod network of cluster $cluster configured on $(wc -l <<<"$table") nodes"
