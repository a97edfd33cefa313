#!/usr/bin/env bash
# Build kind's node image with no container registry, for KVOL_KIND_OFFLINE=1 hack/kind-up.sh.
#
# Every part comes from a package registry and is pinned:
#   - a Debian root filesystem (debootstrap, $DEBIAN_SUITE), turned into kind's base image:
#     kind's own files (images/base/files of the kind module, pinned by hack/install-kind.sh),
#     kind's base package list, and Debian's containerd, runc and CNI plugins in place of
#     the binaries kind builds from git;
#   - the Kubernetes binaries of $KUBE_VERSION (hack/install-kube.sh; kubeadm, kubelet,
#     kubectl go into the node, the control plane and kube-proxy go in as images);
#   - every image kind preloads, built here as image archives (hack/oci_image.py), named as
#     kind and kubeadm expect them: etcd (a wrapper module around go.etcd.io/etcd/server/v3),
#     coredns and local-path-provisioner (go install), pause and local-path's helper (static
#     busybox). kindnetd, kind's CNI, is not served by the Go module proxy: the node image
#     carries a placeholder under its name (so kind's builder pulls nothing) and clusters
#     made from it set `disableDefaultCNI` and use Debian's CNI plugins (bridge + host-local,
#     configured per node by hack/kind-cni.sh).
# kind's own builder (`kind build node-image --type file`) assembles the node image from
# the base image and a kubernetes-server-shaped tarball whose image archives hold them all.
#
# Cached under $KVOL_CACHE/kind as archives (the Debian root filesystem, the base image, each
# image, the node image): a second run loads the node image into Docker and is done.
# Docker is the private daemon of hack/kind-docker.sh (started if needed, and stopped again
# if this script started it).
#
# Usage: hack/kind-node-image.sh        prints the node image's name on stdout
# Needs root, Go, and the Debian packages debootstrap and docker.io (apt-get install
# debootstrap docker.io; neither is in hack/debian-packages.txt, which CI installs).
source "$(dirname "$0")/lib.sh"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KUBE_VERSION="${KUBE_VERSION:-v1.35.4}"
KIND_VERSION="${KIND_VERSION:-$(sed -n 's/^KIND_VERSION="\${KIND_VERSION:-\(.*\)}"$/\1/p' "$ROOT/hack/install-kind.sh")}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.6}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.13.1}"
LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-v0.0.30}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# kind's base image packages (images/base/Dockerfile) less nfs-common and open-iscsi, which
# no kvol test uses, plus what kind builds from git there.
BASE_PACKAGES=(systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod
  libseccomp2 pigz fuse-overlayfs e2fsprogs bash ca-certificates curl jq procps
  containerd runc containernetworking-plugins)
# Bump when the way a part is built changes, so its cached archive is rebuilt.
BASE_REV=1
IMAGES_REV=1
NODE_REV=1

NODE_IMAGE="${KVOL_KIND_NODE_IMAGE:-kvol.local/kind-node:$KUBE_VERSION}"
OUT="$KVOL_CACHE/kind"
DOCKER=(/usr/bin/docker)
mkdir -p "$OUT"

say() { printf '[kind-node-image] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, Docker)"
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
[ -x /usr/bin/docker ] || die "Debian's docker is missing: apt-get install docker.io"
[ -n "$KIND_VERSION" ] || die "cannot read kind's pinned version from hack/install-kind.sh"
started=$SECONDS
WORK=$(mktemp -d /var/tmp/kvol-kind-node.XXXXXX)
started_docker=0
cleanup() {
  # Mounts made for chroots live in private mount namespaces and are gone already.
  rm -rf "$WORK"
  if [ "$started_docker" = 1 ]; then "$ROOT/hack/kind-docker.sh" down; fi
}
trap cleanup EXIT

node_key=$(key "$NODE_REV" "$KUBE_VERSION" "$KIND_VERSION" "$ETCD_VERSION" "$COREDNS_VERSION" \
  "$LOCAL_PATH_VERSION" "$DEBIAN_SUITE" "$BASE_REV" "$IMAGES_REV" "${BASE_PACKAGES[*]}" \
  "$(sha256sum "$ROOT/hack/oci_image.py" "$ROOT/hack/kind_image_archive.py" | sha256sum | cut -c1-16)")
NODE_TAR="$OUT/node-$node_key.tar"
NODE_ID="$OUT/node-$node_key.id"

# --- Docker ----------------------------------------------------------------------------------
eval "export $("$ROOT/hack/kind-docker.sh" env)"
if ! "${DOCKER[@]}" info >/dev/null 2>&1; then
  "$ROOT/hack/kind-docker.sh" up
  [ "${KVOL_KIND_KEEP_DOCKER:-0}" = 1 ] || started_docker=1
fi
# The image Docker holds under that name is this build if its id is the one recorded.
node_ready() {
  [ -f "$NODE_ID" ] &&
    [ "$("${DOCKER[@]}" image inspect -f '{{.Id}}' "$NODE_IMAGE" 2>/dev/null)" = "$(cat "$NODE_ID")" ]
}
if node_ready; then
  say "$NODE_IMAGE: already in Docker ($((SECONDS - started))s)"
  echo "$NODE_IMAGE"
  exit 0
fi
if [ -f "$NODE_TAR" ]; then
  say "$NODE_IMAGE: loading $NODE_TAR"
  "${DOCKER[@]}" load -i "$NODE_TAR" >/dev/null
  node_ready || die "$NODE_TAR did not hold $NODE_IMAGE"
  say "$NODE_IMAGE: loaded in $((SECONDS - started))s"
  echo "$NODE_IMAGE"
  exit 0
fi

# --- kind and its module (the base image files, the names of the images kind preloads) ------
"$ROOT/hack/install-kind.sh"
KUBE_DIR="$KVOL_CACHE/tools/kube-$KUBE_VERSION"
KIND_SRC="$GOMODCACHE/sigs.k8s.io/kind@$KIND_VERSION"
[ -d "$KIND_SRC/images/base/files" ] ||
  (cd "$WORK" && go mod download "sigs.k8s.io/kind@$KIND_VERSION")
[ -d "$KIND_SRC/images/base/files" ] || die "kind's module has no images/base/files"

# in_chroot DIR CMD...: CMD chrooted into DIR, with /proc, /sys and /dev mounted in a private
# mount namespace (nothing of it is left mounted afterwards).
in_chroot() {
  local dir=$1; shift
  unshare --mount --propagation private -- sh -ec '
    dir=$1; shift
    mount -t proc proc "$dir/proc"
    mount -t sysfs sysfs "$dir/sys"
    mount --rbind /dev "$dir/dev"
    exec chroot "$dir" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root DEBIAN_FRONTEND=noninteractive "$@"' sh "$dir" "$@"
}

# --- the Debian root filesystem ----------------------------------------------------------------
DEBIAN_TAR="$OUT/debian-$DEBIAN_SUITE-minbase.tar"
if [ ! -f "$DEBIAN_TAR" ]; then
  say "debootstrap $DEBIAN_SUITE (first run only)"
  t=$SECONDS
  nice -n 19 debootstrap --variant=minbase "$DEBIAN_SUITE" "$WORK/debian" "$DEBIAN_MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
  tar -C "$WORK/debian" --numeric-owner -cf "$DEBIAN_TAR.new" .
  mv "$DEBIAN_TAR.new" "$DEBIAN_TAR"
  rm -rf "$WORK/debian"
  say "debootstrap $DEBIAN_SUITE: done in $((SECONDS - t))s"
fi

# --- kind's base image -------------------------------------------------------------------------
base_key=$(key "$BASE_REV" "$DEBIAN_SUITE" "$KIND_VERSION" "${BASE_PACKAGES[*]}")
BASE_TAR="$OUT/base-$base_key.tar"
BASE_IMAGE="kvol.local/kind-base:$base_key"
if [ ! -f "$BASE_TAR" ]; then
  say "kind base image from Debian $DEBIAN_SUITE and kind $KIND_VERSION's files (first run only)"
  t=$SECONDS
  base="$WORK/base"
  mkdir -p "$base"
  tar -C "$base" --numeric-owner -xf "$DEBIAN_TAR"
  cp /etc/resolv.conf "$base/etc/resolv.conf"
  # No service may start while packages install.
  printf '#!/bin/sh\nexit 101\n' >"$base/usr/sbin/policy-rc.d"
  chmod 755 "$base/usr/sbin/policy-rc.d"
  printf 'deb %s %s main\n' "$DEBIAN_MIRROR" "$DEBIAN_SUITE" >"$base/etc/apt/sources.list"
  in_chroot "$base" sh -ec "
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends ${BASE_PACKAGES[*]} >/dev/null
    apt-get clean
    find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete
    rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
      /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
      /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
    echo ReadKMsg=no >>/etc/systemd/journald.conf
    ln -sf /usr/lib/systemd/systemd /sbin/init
    mkdir -p /etc/kubernetes/manifests /opt/cni/bin
  " >"$OUT/base-build.log" 2>&1 || { tail -n 30 "$OUT/base-build.log" >&2; die "installing the base packages failed (log: $OUT/base-build.log)"; }
  files="$KIND_SRC/images/base/files"
  # What kind's Dockerfile copies, with its modes; after the packages, whose files
  # (containerd's config) they replace.
  install -m 0755 "$files"/usr/local/bin/* "$base/usr/local/bin/"
  mkdir -p "$base/kind" "$base/LICENSES" "$base/etc/containerd" "$base/etc/default" \
    "$base/etc/sysctl.d" "$base/etc/systemd/system/kubelet.service.d"
  cp -r "$files/kind/." "$base/kind/"
  chmod -R u=rwX,go=rX "$base/kind"
  chmod 0755 "$base"/kind/bin/*
  install -m 0644 "$files"/LICENSES/* "$base/LICENSES/"
  install -m 0644 "$files/etc/crictl.yaml" "$base/etc/"
  install -m 0644 "$files"/etc/containerd/* "$base/etc/containerd/"
  install -m 0644 "$files"/etc/default/* "$base/etc/default/"
  install -m 0644 "$files"/etc/sysctl.d/* "$base/etc/sysctl.d/"
  find "$files/etc/systemd/system" -maxdepth 1 -type f -exec install -m 0644 {} "$base/etc/systemd/system/" \;
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$base/etc/systemd/system/kubelet.service.d/"
  rm -f "$base/usr/sbin/policy-rc.d"
  rm -rf "$base"/var/lib/apt/lists/* "$base"/var/log/* "$base"/usr/share/doc/* "$base"/usr/share/man/*
  : >"$base/etc/resolv.conf"
  # Debian's binaries where kind's units and scripts expect its own.
  ln -sf /usr/bin/containerd "$base/usr/local/bin/containerd"
  ln -sf /usr/bin/containerd-shim-runc-v2 "$base/usr/local/bin/containerd-shim-runc-v2"
  ln -sf /usr/sbin/runc "$base/usr/local/sbin/runc"
  for plugin in "$base"/usr/lib/cni/*; do ln -sf "/usr/lib/cni/${plugin##*/}" "$base/opt/cni/bin/"; done
  # containerd 1.6's ctr has no `info`, which kind's builder waits on: answer it with `version`.
  cat >"$base/usr/local/bin/ctr" <<'EOF'
#!/bin/sh
# containerd 1.6's ctr lacks `info`; kind's node-image builder only checks that it succeeds.
if [ "$1" = info ]; then shift; exec /usr/bin/ctr version "$@"; fi
exec /usr/bin/ctr "$@"
EOF
  chmod 755 "$base/usr/local/bin/ctr"
  # The runtime spec kind's Dockerfile derives (mounts the product files, no rlimits).
  in_chroot "$base" sh -ec "
    systemctl enable kubelet.service containerd.service undo-mount-hacks.service
    systemctl mask systemd-binfmt.service
    ctr oci spec |
    jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}' |
    jq 'del(.process.rlimits)' >/etc/containerd/cri-base.json"
  # Hosts without CAP_SYS_RESOURCE (a negative oom_score_adj) make runc fail otherwise.
  sed -i 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' "$base/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$base/etc/containerd/config.toml" ||
    die "kind's containerd config has no restrict_oom_score_adj to set"
  tar -C "$base" --numeric-owner -cf "$BASE_TAR.new" .
  mv "$BASE_TAR.new" "$BASE_TAR"
  rm -rf "$base"
  say "kind base image: built in $((SECONDS - t))s ($(du -sh "$BASE_TAR" | cut -f1))"
fi
if ! "${DOCKER[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  "${DOCKER[@]}" import "$BASE_TAR" "$BASE_IMAGE-rootfs" >/dev/null
  # docker import takes no STOPSIGNAL: the rest of kind's image settings by a local build.
  mkdir -p "$WORK/base-context"
  printf '%s\n' "FROM $BASE_IMAGE-rootfs" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
    'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' >"$WORK/base-context/Dockerfile"
  DOCKER_BUILDKIT=0 "${DOCKER[@]}" build -q -t "$BASE_IMAGE" "$WORK/base-context" >/dev/null
  "${DOCKER[@]}" rmi "$BASE_IMAGE-rootfs" >/dev/null
fi

# --- the Go-built parts ------------------------------------------------------------------------
"$ROOT/hack/install-kube.sh" kubeadm kubelet kubectl kube-apiserver kube-controller-manager \
  kube-scheduler kube-proxy
# etcd's server module points at its siblings with relative replace directives, so
# `go install` refuses it: a wrapper module requires it and builds its main package.
build_etcd() {
  local dest="$KVOL_CACHE/tools/etcd-$ETCD_VERSION"
  if [ -x "$dest/etcd" ]; then log "etcd $ETCD_VERSION: cached"; return; fi
  require_go
  local wrapper="$KVOL_CACHE/src/etcd-wrapper-$ETCD_VERSION" t=$SECONDS
  log "etcd $ETCD_VERSION: building (first run only)"
  mkdir -p "$wrapper" "$dest"
  (
    cd "$wrapper" || exit 1
    export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
    printf 'module kvol.dev/etcd-wrapper\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' \
      "$ETCD_VERSION" >go.mod
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$dest/etcd.new" go.etcd.io/etcd/server/v3
  )
  mv "$dest/etcd.new" "$dest/etcd"
  log "etcd $ETCD_VERSION: built in $((SECONDS - t))s"
}
build_etcd
go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION" -trimpath -ldflags="-s -w"
go_install local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" \
  -trimpath -ldflags="-s -w"
ETCD_BIN="$KVOL_CACHE/tools/etcd-$ETCD_VERSION/etcd"
COREDNS_BIN="$KVOL_CACHE/tools/coredns-$COREDNS_VERSION/coredns"
LOCAL_PATH_BIN="$KVOL_CACHE/tools/local-path-provisioner-$LOCAL_PATH_VERSION/local-path-provisioner"

# --- the images kind preloads --------------------------------------------------------------------
# Names as kind $KIND_VERSION and kubeadm $KUBE_VERSION look them up: any name missing from the
# archives would be pulled.
images_src="$KIND_SRC/pkg/build/nodeimage"
kindnetd_ref=$(sed -n 's/^const kindnetdImage = "\(.*\)"$/\1/p' "$images_src/const_cni.go")
provisioner_ref=$(sed -n 's/^const storageProvisionerImage = "\(.*\)"$/\1/p' "$images_src/const_storage.go")
helper_ref=$(sed -n 's/^const storageHelperImage = "\(.*\)"$/\1/p' "$images_src/const_storage.go")
pause_ref=$(sed -n 's/^ *sandbox_image = "\(.*\)"$/\1/p' "$KIND_SRC/images/base/files/etc/containerd/config.toml")
[ -n "$kindnetd_ref" ] && [ -n "$provisioner_ref" ] && [ -n "$helper_ref" ] && [ -n "$pause_ref" ] ||
  die "could not read the image names kind $KIND_VERSION preloads"
mapfile -t kubeadm_refs < <("$KUBE_DIR/kubeadm" config images list --kubernetes-version "$KUBE_VERSION")
ref_of() {
  local r
  for r in "${kubeadm_refs[@]}"; do case "$r" in */"$1":*) echo "$r"; return ;; esac; done
  die "kubeadm lists no $1 image"
}

IMAGES="$OUT/images"
mkdir -p "$IMAGES"
BASE_ROOT="$WORK/base-root"

# stage_libs STAGE: every shared library ELF files under STAGE need, from the base root
# filesystem (the binaries come from there too), at the same paths.
stage_libs() {
  local stage=$1 lib
  while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$stage$(dirname "$lib")"
    cp -L "$BASE_ROOT$lib" "$stage$lib"
  done < <(find "$stage" -type f \( -perm -u+x -o -name '*.so*' \) -printf '/%P\n' |
    while read -r f; do in_chroot_plain ldd "$f" 2>/dev/null || true; done |
    sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*ld-linux[^ ]*\) .*/\1/p' | sort -u)
}
# in_chroot_plain CMD...: CMD in the base root filesystem (with the stage bound at /stage).
in_chroot_plain() { chroot "$BASE_ROOT" "$@"; }

# image NAME REF SETUP [oci_image.py args...]: an image archive for REF, built by the
# function SETUP (given the stage directory) when not cached; its path on stdout.
image() {
  local name=$1 ref=$2 setup=$3; shift 3
  local ikey tar
  ikey=$(key "$IMAGES_REV" "$ref" "$KUBE_VERSION" "$ETCD_VERSION" "$COREDNS_VERSION" \
    "$LOCAL_PATH_VERSION" "$base_key" "$*" "$(sha256sum "$ROOT/hack/oci_image.py" | cut -c1-16)")
  tar="$IMAGES/$name-$ikey.tar"
  if [ ! -f "$tar" ]; then
    local stage="$WORK/stage-$name"
    rm -rf "$stage"
    mkdir -p "$stage"/{etc,tmp,usr/local/bin}
    chmod 1777 "$stage/tmp"
    "$setup" "$stage"
    rm -f "$IMAGES/$name"-*.tar
    python3 "$ROOT/hack/oci_image.py" --rootfs "$stage" --name "$ref" --out "$tar" "$@" >/dev/null
    rm -rf "$stage"
    say "image $ref: built ($(du -sh "$tar" | cut -f1))"
  fi
  echo "$tar"
}

setup_bin() { cp "$BIN_SRC" "$1/usr/local/bin/"; }
setup_apiserver() { BIN_SRC="$KUBE_DIR/kube-apiserver" setup_bin "$1"; }
setup_controller_manager() { BIN_SRC="$KUBE_DIR/kube-controller-manager" setup_bin "$1"; }
setup_scheduler() { BIN_SRC="$KUBE_DIR/kube-scheduler" setup_bin "$1"; }
setup_etcd() { BIN_SRC="$ETCD_BIN" setup_bin "$1"; mkdir -p "$1/var/lib/etcd"; }
setup_coredns() { cp "$COREDNS_BIN" "$1/coredns"; }
setup_local_path() { BIN_SRC="$LOCAL_PATH_BIN" setup_bin "$1"; }
setup_busybox() { busybox_stage "$1"; }
# kube-proxy runs iptables-restore and conntrack: Debian's, from the base root filesystem.
# iptables-wrapper picks the backend the node uses (kind's entrypoint chose it by which one
# holds rules), as upstream's image does.
setup_kube_proxy() {
  local stage=$1 f
  busybox_stage "$stage"
  cp "$KUBE_DIR/kube-proxy" "$stage/usr/local/bin/"
  mkdir -p "$stage/usr/sbin" "$stage/usr/lib/x86_64-linux-gnu"
  for f in xtables-legacy-multi xtables-nft-multi conntrack; do cp "$BASE_ROOT/usr/sbin/$f" "$stage/usr/sbin/"; done
  cp -a "$BASE_ROOT/usr/lib/x86_64-linux-gnu/xtables" "$stage/usr/lib/x86_64-linux-gnu/"
  cat >"$stage/usr/sbin/iptables-wrapper" <<'EOF'
#!/bin/sh
# Run the iptables command named by $0 with the backend (nft or legacy) holding more rules.
legacy=$( (xtables-legacy-multi iptables-save; xtables-legacy-multi ip6tables-save) 2>/dev/null | grep -c '^-')
nft=$( (xtables-nft-multi iptables-save; xtables-nft-multi ip6tables-save) 2>/dev/null | grep -c '^-')
if [ "${legacy:-0}" -gt "${nft:-0}" ]; then multi=xtables-legacy-multi; else multi=xtables-nft-multi; fi
exec "$multi" "$(basename "$0")" "$@"
EOF
  chmod 755 "$stage/usr/sbin/iptables-wrapper"
  for f in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf iptables-wrapper "$stage/usr/sbin/$f"
  done
  mkdir -p "$stage/usr/lib64" && ln -sf usr/lib64 "$stage/lib64"
  stage_libs "$stage"
}

if [ ! -d "$BASE_ROOT" ]; then
  mkdir -p "$BASE_ROOT"
  tar -C "$BASE_ROOT" --numeric-owner -xf "$BASE_TAR"
fi
pause_cmd='["/bin/sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]'
declare -A archive_of
archive_of[kube-apiserver]=$(image kube-apiserver "$(ref_of kube-apiserver)" setup_apiserver)
archive_of[kube-controller-manager]=$(image kube-controller-manager "$(ref_of kube-controller-manager)" setup_controller_manager)
archive_of[kube-scheduler]=$(image kube-scheduler "$(ref_of kube-scheduler)" setup_scheduler)
proxy=$(image kube-proxy "$(ref_of kube-proxy)" setup_kube_proxy \
  --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
etcd=$(image etcd "$(ref_of etcd)" setup_etcd)
coredns=$(image coredns "$(ref_of coredns)" setup_coredns --entrypoint '["/coredns"]')
pause=$(image pause "$pause_ref" setup_busybox --entrypoint "$pause_cmd")
pause_kubeadm=$(image pause-kubeadm "$(ref_of pause)" setup_busybox --entrypoint "$pause_cmd")
provisioner=$(image local-path-provisioner "$provisioner_ref" setup_local_path)
helper=$(image local-path-helper "$helper_ref" setup_busybox --cmd '["sh"]')
kindnetd=$(image kindnetd-placeholder "$kindnetd_ref" setup_busybox --entrypoint \
  '["/bin/sh","-c","echo kindnetd is not part of this offline node image: use disableDefaultCNI >&2; exit 1"]')

# --- the kubernetes-server tarball kind's file builder reads --------------------------------------
say "assembling the Kubernetes $KUBE_VERSION tarball"
kdir="$WORK/kube/kubernetes"
mkdir -p "$kdir/server/bin"
echo "$KUBE_VERSION" >"$kdir/version"
for b in kubeadm kubelet kubectl; do cp "$KUBE_DIR/$b" "$kdir/server/bin/"; done
# kind imports only these four archives and pulls every other image it needs: the rest ride
# along in kube-proxy's.
for name in kube-apiserver kube-controller-manager kube-scheduler; do
  python3 "$ROOT/hack/kind_image_archive.py" --out "$kdir/server/bin/$name.tar" "${archive_of[$name]}" >&2
done
python3 "$ROOT/hack/kind_image_archive.py" --out "$kdir/server/bin/kube-proxy.tar" \
  "$proxy" "$etcd" "$coredns" "$pause" "$pause_kubeadm" "$provisioner" "$helper" "$kindnetd" >&2
tar -C "$WORK/kube" -czf "$WORK/kubernetes-server-linux-amd64.tar.gz" kubernetes
rm -rf "$WORK/kube" "$BASE_ROOT"

# --- the node image ---------------------------------------------------------------------------
say "kind build node-image (base $BASE_IMAGE)"
t=$SECONDS
"$ROOT/hack/kind-docker.sh" run "$KVOL_BIN/kind" build node-image --type file \
  --base-image "$BASE_IMAGE" --image "$NODE_IMAGE" \
  "$WORK/kubernetes-server-linux-amd64.tar.gz" >&2
rm -f "$OUT"/node-*.tar "$OUT"/node-*.id
"${DOCKER[@]}" save -o "$NODE_TAR.new" "$NODE_IMAGE"
mv "$NODE_TAR.new" "$NODE_TAR"
"${DOCKER[@]}" image inspect -f '{{.Id}}' "$NODE_IMAGE" >"$NODE_ID"
say "$NODE_IMAGE: built in $((SECONDS - t))s, $((SECONDS - started))s in all ($(du -sh "$NODE_TAR" | cut -f1) cached at $NODE_TAR)"
echo "$NODE_IMAGE"
