#!/usr/bin/env bash
# Build or install every non-Python test dependency, each pinned and cached.
set -euo pipefail
cd "$(dirname "$0")"
started=$SECONDS
for script in install-debian-deps.sh install-minio.sh install-etcd.sh install-kube.sh \
              install-csi-sanity.sh install-helm.sh install-kind.sh install-prometheus.sh; do
  if [ -x "$script" ]; then
    echo "[test-deps] $script" >&2
    "./$script"
  fi
done
echo "[test-deps] ready in $((SECONDS - started))s" >&2
