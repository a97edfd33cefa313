#!/usr/bin/env bash
# Build kind into ~/.cache/kvol/bin. It is used by hack/kind-up.sh on a machine with Docker
# and registry access, and by the packaging tests to check the kind config we ship.
source "$(dirname "$0")/lib.sh"

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
go_install kind "sigs.k8s.io/kind@$KIND_VERSION" -trimpath -ldflags="-s -w"
