#!/usr/bin/env bash
# Build the Kubernetes binaries the tests run from the k8s.io/kubernetes Go module, pinned
# and cached: kube-apiserver and kubectl (operator and manifest tests), and kubelet,
# kube-controller-manager and kube-scheduler (the e2e cluster, hack/cluster-up.sh).
#
# k8s.io/kubernetes points its staging modules (k8s.io/api, k8s.io/client-go, ...) at
# ./staging/src with replace directives, so `go install` refuses it. A small wrapper module
# requires k8s.io/kubernetes and replaces each staging module with its published release
# (k8s.io/api v0.<minor>.<patch> for kubernetes v1.<minor>.<patch>).
#
# Usage: hack/install-kube.sh [BINARY...]   (default: all five above)
# Other binaries of the same release can be named too; each is cached on its own, so asking
# for more later rebuilds nothing already built.
source "$(dirname "$0")/lib.sh"

KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] ||
  binaries=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler)

dest="$KVOL_CACHE/tools/kube-$KUBE_VERSION"
missing=()
for b in "${binaries[@]}"; do
  if [ -x "$dest/$b" ]; then
    ln -sfn "$dest/$b" "$KVOL_BIN/$b"
    log "$b $KUBE_VERSION: cached"
  else
    missing+=("$b")
  fi
done
[ ${#missing[@]} -gt 0 ] || exit 0

require_go
started=$SECONDS
log "building ${missing[*]} $KUBE_VERSION from k8s.io/kubernetes (first run only; this takes a while)"

# Resolve against the real module graph even if the caller's GOFLAGS says otherwise.
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

wrapper="$KVOL_CACHE/src/kube-wrapper-$KUBE_VERSION"
if [ ! -f "$wrapper/go.sum" ]; then
  rm -rf "$wrapper"
  mkdir -p "$wrapper"
  gomod=$(cd "$wrapper" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  [ -f "$gomod" ] || { log "could not download k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
  staging_version="v0.${KUBE_VERSION#v1.}"
  {
    echo "module kvol.dev/kube-wrapper"
    echo
    echo "go 1.25.0"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module the release replaces with a local path gets its published twin.
    sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$gomod" |
      while read -r module; do echo "	$module => $module $staging_version"; done
    echo ")"
  } >"$wrapper/go.mod.new"
  mv "$wrapper/go.mod.new" "$wrapper/go.mod"
  # Pull in the requirements of the commands we build, so go.sum is complete.
  (cd "$wrapper" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" \
    "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION")
fi

# Without these, /version reports v0.0.0 and clients warn about version skew.
minor=${KUBE_VERSION#v1.}
minor=${minor%%.*}
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp" "$dest"
pkgs=()
for b in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
(cd "$wrapper" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "${pkgs[@]}")
for b in "${missing[@]}"; do
  [ -x "$tmp/$b" ] || { log "go build produced no $b"; exit 1; }
  mv "$tmp/$b" "$dest/$b"
  ln -sfn "$dest/$b" "$KVOL_BIN/$b"
done
log "${missing[*]} $KUBE_VERSION: built in $((SECONDS - started))s"
