#!/usr/bin/env bash
# Build the Prometheus server and promtool from the github.com/prometheus/prometheus Go module,
# pinned and cached: promtool checks and unit-tests the alert rules, and the e2e tier runs the
# server to evaluate every dashboard query against the plugin's and operator's pods.
#
# The module (v0.3MM.P is Prometheus 3.MM.P) has no replace directives, so `go install` works.
# To keep the cold build short, `remove_all_sd` leaves out every service-discovery plugin (the
# cloud SDKs are most of the build): static and file targets still work. The web UI's assets
# are not embedded either; the HTTP API, which is all the tests use, is.
source "$(dirname "$0")/lib.sh"

PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.316.0}"
dest="$KVOL_CACHE/tools/prometheus-$PROMETHEUS_VERSION"

if [ -x "$dest/prometheus" ] && [ -x "$dest/promtool" ]; then
  ln -sfn "$dest/prometheus" "$KVOL_BIN/prometheus"
  ln -sfn "$dest/promtool" "$KVOL_BIN/promtool"
  log "prometheus, promtool $PROMETHEUS_VERSION: cached"
  exit 0
fi

require_go
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
started=$SECONDS
log "prometheus, promtool $PROMETHEUS_VERSION: building with go install (first run only; this takes a while)"

# Stamp the release both binaries report (module v0.316.0 is Prometheus 3.16.0).
minor_patch=${PROMETHEUS_VERSION#v0.}
release="${minor_patch:0:1}.${minor_patch:1}"
ldflags="-s -w -X github.com/prometheus/common/version.Version=$release"
ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"

tmp="$dest.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
GOBIN="$tmp" go install -trimpath -tags remove_all_sd "-ldflags=$ldflags" \
  "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
  "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
mkdir -p "$dest"
for b in prometheus promtool; do
  [ -x "$tmp/$b" ] || { log "go install produced no $b"; exit 1; }
  "$tmp/$b" --version >/dev/null
  mv "$tmp/$b" "$dest/$b"
  ln -sfn "$dest/$b" "$KVOL_BIN/$b"
done
log "prometheus, promtool $PROMETHEUS_VERSION: built in $((SECONDS - started))s"
