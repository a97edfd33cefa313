#!/usr/bin/env bash
# Build the Helm 3 client into ~/.cache/kvol/bin (used to lint and render charts/kvol).
# helm.sh/helm/v3 has no replace directives, so a plain `go install` of its command works.
source "$(dirname "$0")/lib.sh"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"

# Helm's release builds stamp their version and the Kubernetes version that `helm template`
# and `helm lint` assume (one minor above client-go's v0.N) through -X flags; without them it
# reports "v3.22" and assumes Kubernetes 1.20. Read client-go's version from Helm's go.mod.
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
if [ ! -x "$KVOL_CACHE/tools/helm-$HELM_VERSION/helm" ]; then
  require_go
  gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
  client_go=$(awk '$1 == "k8s.io/client-go" { print $2 }' "$gomod")
  [[ $client_go =~ ^v0\.([0-9]+)\. ]] || { log "cannot read k8s.io/client-go from $gomod"; exit 1; }
  for pkg in chartutil lint/rules; do
    ldflags+=" -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMajor=1"
    ldflags+=" -X helm.sh/helm/v3/pkg/$pkg.k8sVersionMinor=${BASH_REMATCH[1]}"
  done
fi
go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" -trimpath "-ldflags=$ldflags"
