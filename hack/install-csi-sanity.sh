#!/usr/bin/env bash
# Build the upstream csi-sanity suite (kubernetes-csi/csi-test) into ~/.cache/kvol/bin.
# v5.4.0 and older fail every Node test for a node-only plugin (they call
# ControllerGetCapabilities unconditionally); v5.6.0 is the newest v5 tag on the module
# proxy. Its go.mod has no replace directives, so a plain `go install` works: no wrapper
# module is needed.
source "$(dirname "$0")/lib.sh"

CSI_SANITY_VERSION="${CSI_SANITY_VERSION:-v5.6.0}"
go_install csi-sanity \
  "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_SANITY_VERSION" \
  -trimpath -ldflags="-s -w"
