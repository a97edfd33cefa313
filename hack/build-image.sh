#!/usr/bin/env bash
# Build kvol's images without a registry and import them into the test cluster's containerd.
#
#   kvol     docker.io/library/kvol:dev: Debian's python3.11 (the files of its packages and
#            the shared libraries they link to) plus the kvol wheel and its [operator,csi]
#            extras; runs kvol, kvol-csi and kvol-operator. Same contents as the Dockerfile's
#            image, built here without docker and without a base image.
#   busybox  kvol.test/busybox:1: a static busybox with its applets, and curl, for test pods.
#   pause    kvol.test/pause:1: the same busybox sleeping forever, the pod sandbox image.
#
# Each image is an OCI archive cached under $KVOL_CACHE/images, keyed by what went into it,
# so an unchanged image is neither rebuilt nor imported again.
#
# Usage: hack/build-image.sh [--no-import] [kvol|busybox|pause]...   (default: all three)
# Needs Debian packages python3.11 and busybox-static (hack/install-debian-deps.sh) and the
# repository's venv (hack/setup-venv.sh) to build the wheel.
source "$(dirname "$0")/lib.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CLUSTER_RUN="${KVOL_CLUSTER_RUN:-/run/kvol-cluster}"
SOCKET="$CLUSTER_RUN/containerd/containerd.sock"
OUT="$KVOL_CACHE/images"
KVOL_IMAGE="${KVOL_IMAGE:-docker.io/library/kvol:dev}"
BUSYBOX_IMAGE="kvol.test/busybox:1"
PAUSE_IMAGE="kvol.test/pause:1"
PYTHON_PACKAGES=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib python3.11)

say() { printf '[build-image] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

import=1
targets=()
for arg in "$@"; do
  case "$arg" in
    --no-import) import=0 ;;
    kvol|busybox|pause) targets+=("$arg") ;;
    *) die "unknown argument $arg (usage: hack/build-image.sh [--no-import] [kvol|busybox|pause]...)" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(kvol busybox pause)
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

need_package() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ||
    die "Debian package $1 is missing: run hack/install-debian-deps.sh"
}

# pack NAME REF ROOTFS [oci_image.py args...]: the archive path on stdout.
pack() {
  local name=$1 ref=$2 rootfs=$3; shift 3
  local tar="$OUT/$name.tar"
  python3 "$ROOT/hack/oci_image.py" --rootfs "$rootfs" --name "$ref" --out "$tar" "$@" >/dev/null
  echo "$tar"
}

# copy_libs STAGE: every shared library the ELF files under STAGE link to (and the loader),
# at their real paths under STAGE, plus an ld.so cache for them.
copy_libs() {
  local stage=$1 lib dir
  while read -r lib; do
    [ -e "$lib" ] || continue
    dir=$(readlink -f "$(dirname "$lib")")
    mkdir -p "$stage$dir"
    cp -L "$lib" "$stage$dir/$(basename "$lib")"
  done < <(find "$stage" -type f \( -name '*.so*' -o -perm -u+x \) -print0 |
    xargs -0 file -N | sed -n 's/^\([^:]*\): *ELF.*dynamic.*/\1/p' |
    xargs -r ldd 2>/dev/null | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*ld-linux[^ ]*\) .*/\1/p' |
    sort -u)
  mkdir -p "$stage/etc" "$stage/usr/sbin"
  cp /sbin/ldconfig "$stage/usr/sbin/ldconfig"
  cp -a /etc/ld.so.conf "$stage/etc/"
  cp -a /etc/ld.so.conf.d "$stage/etc/"
  ldconfig -r "$stage"
}

# busybox_rootfs DIR: a static busybox with a link per applet.
busybox_rootfs() {
  need_package busybox-static
  busybox_stage "$1"
}

build_busybox() {
  local key
  need_package curl
  key="busybox-$(sha256sum /bin/busybox /usr/bin/curl "$ROOT/hack/oci_image.py" "$ROOT/hack/build-image.sh" | sha256sum | cut -c1-16)"
  if [ ! -f "$OUT/$key.tar" ]; then
    local tmp=$WORK/busybox
    busybox_rootfs "$tmp/rootfs"
    # Test pods talk to their mount's control socket as users do: curl --unix-socket.
    mkdir -p "$tmp/rootfs/usr/bin" "$tmp/rootfs/usr/lib64"
    ln -s usr/lib64 "$tmp/rootfs/lib64"
    cp /usr/bin/curl "$tmp/rootfs/usr/bin/curl"
    copy_libs "$tmp/rootfs"
    rm -f "$OUT"/busybox-*.tar  # older builds
    pack "$key" "$BUSYBOX_IMAGE" "$tmp/rootfs" --cmd '["sh"]' >/dev/null
    say "built $BUSYBOX_IMAGE"
  fi
  echo "$OUT/$key.tar"
}

build_pause() {
  local key
  key="pause-$(sha256sum /bin/busybox "$ROOT/hack/oci_image.py" "$ROOT/hack/build-image.sh" | sha256sum | cut -c1-16)"
  if [ ! -f "$OUT/$key.tar" ]; then
    local tmp=$WORK/pause
    busybox_rootfs "$tmp/rootfs"
    rm -f "$OUT"/pause-*.tar  # older builds
    # PID 1 ignores signals it has no handler for: trap them so the sandbox stops at once.
    pack "$key" "$PAUSE_IMAGE" "$tmp/rootfs" \
      --entrypoint '["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]' >/dev/null
    say "built $PAUSE_IMAGE"
  fi
  echo "$OUT/$key.tar"
}

# copy_path STAGE PATH: PATH (a file or link) at the same place under STAGE, with
# the merged /usr layout kept (/lib, /bin, /sbin are links into /usr in the image too).
copy_path() {
  local stage=$1 path=$2
  local dir real
  dir=$(dirname "$path")
  real=$(readlink -f "$dir")
  mkdir -p "$stage$real"
  cp -a "$path" "$stage$real/"
}

build_kvol() {
  local py=$ROOT/.venv/bin/python
  [ -x "$py" ] || die "the repository's venv is missing: run hack/setup-venv.sh"
  local pkg
  for pkg in "${PYTHON_PACKAGES[@]}"; do need_package "$pkg"; done
  # Key: the sources the wheel is built from, the Python packages' versions, this script.
  local key
  key="kvol-$(
    {
      (cd "$ROOT" && find pyproject.toml setup.py README.md kvol operator csi -type f \
        \( -name '*.py' -o -name '*.proto' -o -name '*.toml' -o -name '*.md' -o -name py.typed \) \
        ! -name '*_pb2*' ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum)
      dpkg-query -W "${PYTHON_PACKAGES[@]}"
      sha256sum "$ROOT/hack/build-image.sh" "$ROOT/hack/oci_image.py"
    } | sha256sum | cut -c1-16
  )"
  if [ -f "$OUT/$key.tar" ]; then echo "$OUT/$key.tar"; return; fi
  local started=$SECONDS
  local tmp=$WORK/kvol
  local stage=$tmp/rootfs src=$tmp/src
  mkdir -p "$stage"/usr/{bin,sbin,lib,lib64,local/bin} "$stage"/{etc,tmp,proc,sys,dev,root,var/tmp}
  chmod 1777 "$stage/tmp" "$stage/var/tmp"
  ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"
  ln -s usr/lib "$stage/lib"; ln -s usr/lib64 "$stage/lib64"

  # The wheel, built from a copy of exactly what the Dockerfile copies (the tree stays clean).
  mkdir -p "$src"
  (cd "$ROOT" && cp -r pyproject.toml setup.py README.md kvol operator csi "$src/")
  find "$src" \( -name __pycache__ -o -name '*_pb2*.py' -o -name '*_pb2*.pyi' -o -name '*.egg-info' \) \
    -prune -exec rm -rf {} +
  "$py" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$tmp/wheels" "$src" >&2
  local wheel; wheel=$(ls "$tmp"/wheels/kvol-*.whl)
  local site=$stage/usr/local/lib/python3.11/dist-packages
  # The dependencies change far less often than kvol: cached on their own, keyed by
  # pyproject.toml, so a source change reinstalls only the kvol wheel.
  local deps
  deps="$OUT/deps-$(cat "$ROOT/pyproject.toml" "$ROOT/hack/build-image.sh" | sha256sum | cut -c1-16)"
  if [ ! -d "$deps" ]; then
    rm -rf "$OUT"/deps-*
    "$py" -m pip install --quiet --no-warn-script-location --disable-pip-version-check \
      --only-binary=:all: --target "$tmp/deps" "$wheel[operator,csi]" >&2
    rm -rf "$tmp/deps/bin" "$tmp/deps/kvol" "$tmp"/deps/kvol-*.dist-info
    mv "$tmp/deps" "$deps"
  fi
  mkdir -p "$(dirname "$site")"
  cp -a "$deps" "$site"
  "$py" -m pip install --quiet --no-warn-script-location --disable-pip-version-check \
    --no-deps --target "$site" "$wheel" >&2
  rm -rf "$site/bin"

  # Debian's interpreter and standard library, less tests, docs and GUI modules.
  local path
  while read -r path; do
    case "$path" in
      /usr/share/doc/*|/usr/share/man/*|/usr/share/lintian/*|/usr/lib/python3.11/test/*) continue ;;
      */idlelib/*|*/tkinter/*|*/turtledemo/*|*/lib2to3/tests/*|*/ensurepip/*) continue ;;
    esac
    if [ -L "$path" ] || [ -f "$path" ]; then copy_path "$stage" "$path"; fi
  done < <(dpkg -L "${PYTHON_PACKAGES[@]}")

  # Every shared library the interpreter, its extension modules and the wheels' link to;
  # ctypes.util.find_library (kvol loads libc's syncfs through it) asks ldconfig's cache.
  copy_libs "$stage"
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$stage/etc/ssl/certs"
    cp -L /etc/ssl/certs/ca-certificates.crt "$stage/etc/ssl/certs/"
  fi
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/bin/false\n' \
    >"$stage/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$stage/etc/group"
  ln -sf python3.11 "$stage/usr/bin/python3"
  # Console scripts from the wheel's entry points, run by Debian's interpreter.
  local name target
  while IFS='=' read -r name target; do
    name=${name// /}; target=${target// /}
    [ -n "$name" ] && [ -n "$target" ] || continue
    printf '#!/usr/bin/python3.11\nimport sys\nfrom %s import %s\nsys.exit(%s())\n' \
      "${target%%:*}" "${target##*:}" "${target##*:}" >"$stage/usr/local/bin/$name"
    chmod 755 "$stage/usr/local/bin/$name"
  done < <(sed -n '/^\[console_scripts\]/,/^\[/{/^[^[]/p}' "$site"/kvol-*.dist-info/entry_points.txt)
  [ -x "$stage/usr/local/bin/kvol-csi" ] || die "the wheel has no kvol-csi entry point"
  # The image must run: its interpreter imports every component.
  chroot "$stage" /usr/bin/python3.11 -c 'import kvol.csi.main, kvol.operator.main, kvol.cli.main' ||
    die "the staged image cannot import kvol"
  rm -f "$OUT"/kvol-*.tar  # older builds
  pack "$key" "$KVOL_IMAGE" "$stage" \
    --env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin --env PYTHONUNBUFFERED=1 \
    --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONSAFEPATH=1 --cmd '["kvol","--help"]' >/dev/null
  say "built $KVOL_IMAGE ($(du -sh "$OUT/$key.tar" | cut -f1)) in $((SECONDS - started))s"
  echo "$OUT/$key.tar"
}

import_image() {
  local tar=$1 ref=$2
  local ctr=(ctr --address "$SOCKET" -n k8s.io)
  local digest
  digest=$(tar -xOf "$tar" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
  if "${ctr[@]}" images ls -q "name==$ref" 2>/dev/null | grep -qx "$ref" &&
     "${ctr[@]}" images ls "name==$ref" 2>/dev/null | grep -q "$digest"; then
    say "$ref: already in the cluster's containerd"
    return
  fi
  "${ctr[@]}" images import "$tar" >/dev/null
  say "$ref: imported into the cluster's containerd"
  # The CRI adds an id reference (sha256:...) for each image it sees; once no name points to
  # that image any more (a rebuild moved the name), drop it, so its content and snapshots
  # are garbage-collected: a rebuild on every source change must not fill the node's disk.
  local stale
  for stale in $("${ctr[@]}" images ls 2>/dev/null | awk '
      NR > 1 && $1 !~ /^sha256:/ { named[$3] = 1 }
      NR > 1 && $1 ~ /^sha256:/ { ids[$1] = $3 }
      END { for (id in ids) if (!(ids[id] in named)) print id }'); do
    "${ctr[@]}" images rm "$stale" >/dev/null 2>&1 || true
  done
}

for target in "${targets[@]}"; do
  case "$target" in
    kvol) tar=$(build_kvol); ref=$KVOL_IMAGE ;;
    busybox) tar=$(build_busybox); ref=$BUSYBOX_IMAGE ;;
    pause) tar=$(build_pause); ref=$PAUSE_IMAGE ;;
  esac
  if [ "$import" = 1 ]; then
    [ -S "$SOCKET" ] || die "the test cluster's containerd is not running ($SOCKET): run hack/cluster-up.sh, or pass --no-import"
    import_image "$tar" "$ref"
  else
    say "$ref: $tar"
  fi
done
