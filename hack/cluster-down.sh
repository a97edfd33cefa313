#!/usr/bin/env bash
# Stop the test cluster of hack/cluster-up.sh and leave nothing behind: workload pods are
# deleted first while the kvol plugin still runs (their volumes get their final commits),
# then the plugin's pods, then every daemon by pid (MinIO last); every mount it made is
# unmounted and the namespaces are removed. The cluster's state (etcd, the kubelet's
# directory, the store, MinIO's data) is wiped; containerd's image store is kept so the next
# bring-up imports nothing again.
#
# Idempotent: safe to run on a cluster that is half up, or already down.
# Usage: hack/cluster-down.sh [--purge]   (--purge also drops the image store)
SCRIPT=cluster-down
source "$(dirname "$0")/cluster-lib.sh"

purge=0
[ "${1:-}" != --purge ] || purge=1
[ "$(id -u)" = 0 ] || die "needs root"

# stop NAME [SECONDS]: SIGTERM the recorded pid, SIGKILL after SECONDS (default 20).
stop() {
  local name=$1 seconds=${2:-20} pid
  pid=$(pid_of "$name")
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + seconds))
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    say "$name: stopped"
  fi
  rm -f "$PIDS/$name.pid"
}

# delete_pods FILTER: delete the pods FILTER (an awk condition on $1 namespace, $2 name,
# $3 component label, $4 name label) selects, and wait until the kubelet has finished them.
delete_pods() {
  local pods
  pods=$(kubectl_cluster get pods -A -o go-template='{{range .items}}{{.metadata.namespace}} {{.metadata.name}} {{index .metadata.labels "app.kubernetes.io/component"}} {{index .metadata.labels "app.kubernetes.io/name"}}{{"\n"}}{{end}}' 2>/dev/null |
    sed 's/<no value>/-/g' | awk "$1 { print \$1 \"/\" \$2 }") || return 0
  [ -n "$pods" ] || return 0
  local pod
  for pod in $pods; do
    kubectl_cluster -n "${pod%%/*}" delete pod "${pod#*/}" --wait=false >/dev/null 2>&1 || true
  done
  for pod in $pods; do
    kubectl_cluster -n "${pod%%/*}" wait --for=delete "pod/${pod#*/}" --timeout=180s >/dev/null 2>&1 ||
      say "warning: pod $pod did not finish within 180s"
  done
  say "deleted $(echo "$pods" | wc -w) pod(s)"
}

# Whether anything of this cluster runs: only then are the kubelet's cgroups ours to clear.
ours=0
for name in holder "${DAEMONS[@]}"; do
  [ -z "$(pid_of "$name")" ] || ours=1
done

if [ -n "$(holder_pid)" ] && [ -n "$(pid_of kubelet)" ] && api_ready; then
  # Nothing may replace the pods deleted below.
  stop kube-controller-manager
  # Workloads first, while the kvol plugin runs and can commit what they wrote.
  delete_pods '!($3 == "node" && $4 == "kvol")'
  delete_pods '1'
fi

for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
  name=${DAEMONS[$i]}
  case "$name" in
    containerd)
      # Containers first: their shims hold mounts and outlive containerd otherwise.
      if [ -n "$(pid_of containerd)" ]; then
        ctr=(ctr --address "$CONTAINERD_SOCKET" -n k8s.io)
        for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
          "${ctr[@]}" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
        done
        for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
          "${ctr[@]}" tasks delete -f "$task" >/dev/null 2>&1 || true
        done
        for container in $("${ctr[@]}" containers ls -q 2>/dev/null); do
          "${ctr[@]}" containers delete "$container" >/dev/null 2>&1 || true
        done
      fi
      stop containerd ;;
    # It takes about a minute to exit on SIGTERM: its state is about to be wiped anyway.
    kube-apiserver) stop kube-apiserver 3 ;;
    *) stop "$name" ;;
  esac
done

holder=$(holder_pid)
if [ -n "$holder" ]; then
  mntns=$(readlink "/proc/$holder/ns/mnt")
  # Whatever else still runs in the cluster's namespaces (container shims) ends with it.
  for proc in /proc/[0-9]*; do
    pid=${proc#/proc/}
    [ "$pid" != "$holder" ] || continue
    if [ "$(readlink "$proc/ns/mnt" 2>/dev/null)" = "$mntns" ]; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  # Every mount made inside, deepest first; then the namespace itself goes with the holder.
  nsenter --target "$holder" --mount -- sh -c "
    findmnt -rn -o TARGET | grep -E '^($CLUSTER_DIR|$CLUSTER_RUN|/run/netns/cni-|/var/run/netns/cni-)' |
      sort -r | while read -r m; do umount -l \"\$m\" 2>/dev/null || true; done" || true
  kill -KILL "$holder" 2>/dev/null || true
  while kill -0 "$holder" 2>/dev/null; do sleep 0.1; done
  say "namespaces removed"
fi
rm -f "$PIDS/holder.pid"
if [ "$ours" = 1 ]; then
  # Container processes live in namespaces of their own: any left (their shim was killed
  # above) are found by the kubelet's cgroup.
  for tasks in /sys/fs/cgroup/pids/kubepods/tasks /sys/fs/cgroup/pids/kubepods/*/tasks \
               /sys/fs/cgroup/pids/kubepods/*/*/tasks /sys/fs/cgroup/pids/kubepods/*/*/*/tasks; do
    [ -f "$tasks" ] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done <"$tasks"
  done
fi
if [ -e "/var/run/netns/$NETNS" ]; then
  ip netns delete "$NETNS"
fi
# `ip netns add` mounts /run/netns onto itself; once no namespace is left there, neither is it.
if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ] && findmnt -rn /run/netns >/dev/null; then
  umount /run/netns 2>/dev/null || true
fi
if [ "$ours" = 1 ]; then
  # The kubelet's cgroups, deepest first (empty now).
  for controller in /sys/fs/cgroup/*/; do
    [ -d "$controller/kubepods" ] || continue
    find "$controller/kubepods" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
fi
# Nothing of ours may stay mounted in this (the host's) mount namespace either.
while read -r m; do
  umount -l "$m" 2>/dev/null || true
done < <(findmnt -rn -o TARGET | grep -E "^($CLUSTER_DIR|$CLUSTER_RUN)(/|$)" | sort -r)
if findmnt -rn -o TARGET | grep -qE "^($CLUSTER_DIR|$CLUSTER_RUN)(/|$)"; then
  die "mounts under $CLUSTER_DIR or $CLUSTER_RUN remain: $(findmnt -rn -o TARGET | grep -E "^($CLUSTER_DIR|$CLUSTER_RUN)")"
fi

if [ -d "$CLUSTER_DIR" ]; then
  keep=(containerd containerd-opt)
  [ "$purge" = 0 ] || keep=()
  for entry in "$CLUSTER_DIR"/* "$CLUSTER_DIR"/.[!.]*; do
    [ -e "$entry" ] || continue
    base=$(basename "$entry")
    if [ ${#keep[@]} -gt 0 ] && printf '%s\n' "${keep[@]}" | grep -qx "$base"; then continue; fi
    rm -rf "$entry"
  done
fi
rm -rf "$CLUSTER_RUN"
rm -rf /var/lib/cni/results/kvol-e2e-* 2>/dev/null || true
rmdir /var/lib/cni/results /var/lib/cni 2>/dev/null || true
say "cluster down"
