#!/usr/bin/env bash
# Install the Debian packages listed in hack/debian-packages.txt (only the missing ones).
set -euo pipefail
cd "$(dirname "$0")"
mapfile -t wanted < <(grep -v '^\s*#' debian-packages.txt | grep -v '^\s*$')
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "[hack] debian packages: all present" >&2; exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "[hack] missing Debian packages ${missing[*]}: run as root or install them" >&2; exit 1
fi
echo "[hack] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
