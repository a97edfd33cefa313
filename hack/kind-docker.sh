#!/usr/bin/env bash
# A private Docker daemon for the offline kind workflow (hack/kind-node-image.sh,
# KVOL_KIND_OFFLINE=1 hack/kind-up.sh): Debian's dockerd inside a network namespace of its
# own with no route out, its data and socket apart from any system Docker, so kind's nodes
# and their networks exist only inside that namespace.
#
#   hack/kind-docker.sh up     start it (idempotent); prints nothing else
#   hack/kind-docker.sh down   stop it and remove the namespace (data is kept)
#   hack/kind-docker.sh env    print the DOCKER_HOST to export
#   hack/kind-docker.sh run CMD...   run CMD inside the namespace with DOCKER_HOST set
#                              (kind, kubectl and helm reach the nodes only from there)
#
# Two fixes this needs on hosts whose capability bounding set lacks some capability (here
# CAP_SYS_RESOURCE): docker 20.10 asks runc for every capability for --privileged and runc
# fails ("unable to apply caps"); the daemon's default runtime is a wrapper that drops the
# missing ones from each container's config before calling runc. And `ip netns exec`
# remounts /sys and hides the cgroup mounts from the daemon: it is started with
# `nsenter --net` instead.
#
# Environment: KVOL_KIND_NETNS (kvol-kind), KVOL_KIND_DIR (/var/lib/kvol-kind, Docker's data),
# KVOL_KIND_RUN (/run/kvol-kind, socket, pid, log).
# Needs root and the Debian package docker.io (apt-get install docker.io).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

NETNS="${KVOL_KIND_NETNS:-kvol-kind}"
DATA="${KVOL_KIND_DIR:-/var/lib/kvol-kind}"
RUN="${KVOL_KIND_RUN:-/run/kvol-kind}"
SOCKET="$RUN/docker.sock"
PIDFILE="$RUN/dockerd.pid"
LOG="$RUN/dockerd.log"

say() { printf '[kind-docker] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

running_pid() { live_pid "$PIDFILE"; }

answers() { DOCKER_HOST="unix://$SOCKET" /usr/bin/docker info >/dev/null 2>&1; }

# The runtime wrapper: runc with the capabilities the bounding set lacks taken out of the
# bundle's config (create and run are the only commands that read it).
write_runc_wrapper() {
  mkdir -p "$RUN"
  cat >"$RUN/runc-capfix.new" <<'EOF'
#!/usr/bin/python3
"""runc, minus the capabilities this host's bounding set does not have."""
import json
import os
import sys

NAMES = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP "
         "LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER "
         "SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE "
         "SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
         "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF "
         "CHECKPOINT_RESTORE").split()
args = sys.argv[1:]


def option(names, default=None):
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return default


def drop_missing(path, process_of):
    with open("/proc/self/status") as f:
        bounding = int(next(l for l in f if l.startswith("CapBnd:")).split()[1], 16)
    have = {"CAP_" + n for i, n in enumerate(NAMES) if bounding >> i & 1}
    with open(path) as f:
        spec = json.load(f)
    caps = process_of(spec).get("capabilities") or {}
    changed = False
    for kind, names in caps.items():
        kept = [n for n in names if n in have]
        if kept != names:
            caps[kind] = kept
            changed = True
    if changed:
        with open(path + ".capfix", "w") as f:
            json.dump(spec, f)
        os.replace(path + ".capfix", path)


# create/run read the bundle's config.json; exec (docker exec --privileged) a process.json.
if "create" in args or "run" in args:
    bundle = option(("--bundle", "-b"), ".")
    drop_missing(os.path.join(bundle, "config.json"), lambda spec: spec.get("process", {}))
elif "exec" in args:
    process = option(("--process", "-p"))
    if process:
        drop_missing(process, lambda spec: spec)
os.execv("/usr/sbin/runc", ["runc"] + args)
EOF
  chmod 755 "$RUN/runc-capfix.new"
  mv "$RUN/runc-capfix.new" "$RUN/runc-capfix"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (it creates a network namespace)"
  [ -x /usr/sbin/dockerd ] || die "dockerd is missing: apt-get install docker.io"
  # Rewritten each time (atomically), so a running daemon picks up a changed wrapper too.
  write_runc_wrapper
  if [ -n "$(running_pid)" ] && answers; then return 0; fi
  if [ -n "$(running_pid)" ]; then die "dockerd (pid $(running_pid)) runs but does not answer: see $LOG"; fi
  if [ ! -e "/var/run/netns/$NETNS" ]; then
    ip netns add "$NETNS"
    ip -n "$NETNS" link set lo up
  fi
  # Nothing routes out: the namespace has only lo and the bridges Docker makes inside it.
  ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
  mkdir -p "$DATA/docker" "$RUN/exec"
  cat >"$RUN/daemon.json" <<EOF
{
  "data-root": "$DATA/docker",
  "exec-root": "$RUN/exec",
  "pidfile": "$PIDFILE",
  "hosts": ["unix://$SOCKET"],
  "runtimes": {"runc-capfix": {"path": "$RUN/runc-capfix"}},
  "default-runtime": "runc-capfix",
  "storage-driver": "overlay2",
  "log-driver": "json-file",
  "log-opts": {"max-size": "10m", "max-file": "2"},
  "registry-mirrors": [],
  "features": {"buildkit": false}
}
EOF
  echo "--- $(date -u +%FT%TZ) kind-docker up" >>"$LOG"
  # Close every inherited descriptor: a caller's lock must not be held by the daemon.
  (
    for fd in /proc/"$BASHPID"/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
    done
    exec setsid nsenter --net="/var/run/netns/$NETNS" /usr/sbin/dockerd \
      --config-file "$RUN/daemon.json" </dev/null >>"$LOG" 2>&1
  ) &
  local deadline=$((SECONDS + 60))
  until answers; do
    [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$LOG" >&2; die "dockerd did not answer within 60s (log: $LOG)"; }
    sleep 0.5
  done
  say "dockerd up in network namespace $NETNS (DOCKER_HOST=unix://$SOCKET, log $LOG)"
}

down() {
  local pid
  pid=$(running_pid)
  if [ -n "$pid" ]; then
    # Containers first, so no kind node outlives the daemon holding its mounts.
    local ids
    mapfile -t ids < <(DOCKER_HOST="unix://$SOCKET" /usr/bin/docker ps -q 2>/dev/null || true)
    [ ${#ids[@]} = 0 ] || DOCKER_HOST="unix://$SOCKET" /usr/bin/docker stop -t 20 "${ids[@]}" >/dev/null 2>&1 || true
    kill "$pid"
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    say "dockerd stopped"
  fi
  # dockerd's own containerd exits with it; wait for its shims' mounts to go.
  if [ -e "/var/run/netns/$NETNS" ]; then
    ip netns delete "$NETNS"
    say "network namespace $NETNS removed"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) echo "DOCKER_HOST=unix://$SOCKET" ;;
  run)
    shift
    [ -e "/var/run/netns/$NETNS" ] || die "namespace $NETNS is missing: run hack/kind-docker.sh up"
    exec nsenter --net="/var/run/netns/$NETNS" env DOCKER_HOST="unix://$SOCKET" PATH="/usr/bin:/usr/sbin:$PATH" "$@"
    ;;
  *) die "usage: hack/kind-docker.sh up|down|env|run CMD..." ;;
esac
