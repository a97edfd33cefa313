#!/usr/bin/env bash
# Build the Helm 3 client into ~/.cache/kvol/bin (used to lint and render charts/kvol).
# helm.sh/helm/v3 has no replace directives, so a plain `go install` of its command works.
source "$(dirname "$0")/lib.sh"

HELM_VERSION="${HELM_VERSION:-v3.22.0}"
go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" -trimpath -ldflags="-s -w"
