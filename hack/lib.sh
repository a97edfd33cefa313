# Shared helpers for hack/ scripts. Source it; do not run it.
# Every tool is pinned and cached under $KVOL_CACHE (default ~/.cache/kvol), so a
# second run finds it at once and nothing is rebuilt.
set -euo pipefail

KVOL_CACHE="${KVOL_CACHE:-$HOME/.cache/kvol}"
KVOL_BIN="$KVOL_CACHE/bin"
mkdir -p "$KVOL_BIN"
# Go's own caches live under ours too, so one directory holds everything a run reuses.
export GOPATH="${GOPATH:-$KVOL_CACHE/go}"
export GOMODCACHE="${GOMODCACHE:-$KVOL_CACHE/go/pkg/mod}"
export GOCACHE="${GOCACHE:-$KVOL_CACHE/go-build}"
export GOFLAGS="${GOFLAGS:--mod=mod}"
export CGO_ENABLED="${CGO_ENABLED:-0}"

log() { printf '[hack] %s\n' "$*" >&2; }

require_go() {
  command -v go >/dev/null 2>&1 || { log "Go is required (https://go.dev/doc/install) to build test tools"; exit 1; }
}

# go_install NAME MODULE/PATH@VERSION [extra go install args...]
# Builds with `go install` into a versioned directory and links $KVOL_BIN/NAME to it.
go_install() {
  local name=$1 spec=$2; shift 2
  local version=${spec##*@}
  local dest="$KVOL_CACHE/tools/$name-$version"
  if [ -x "$dest/$name" ]; then
    ln -sfn "$dest/$name" "$KVOL_BIN/$name"
    log "$name $version: cached"
    return 0
  fi
  require_go
  log "$name $version: building with go install (first run only; this takes a while)"
  local started=$SECONDS
  mkdir -p "$dest"
  GOBIN="$dest" go install "$@" "$spec"
  [ -x "$dest/$name" ] || { log "$name: go install produced no $name binary"; exit 1; }
  ln -sfn "$dest/$name" "$KVOL_BIN/$name"
  log "$name $version: built in $((SECONDS - started))s"
}

# busybox_stage DIR: a root filesystem of the host's static busybox (package
# busybox-static), a link per applet, and root and nobody in passwd and group.
busybox_stage() {
  local dir=$1 applet
  mkdir -p "$dir"/{bin,etc,tmp,proc,sys,dev,root}
  chmod 1777 "$dir/tmp"
  cp /bin/busybox "$dir/bin/busybox"
  for applet in $("$dir/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$dir/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$dir/etc/group"
}

# live_pid FILE: the pid FILE records, if that process is alive; nothing otherwise.
live_pid() {
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
}
