#!/usr/bin/env bash
# Install everything keel's build, tests and demo need on a Debian machine (run as root).
# Idempotent: quick when everything is already there.
set -euo pipefail
# The second line: what services/build.sh puts into keel's standard images (mke2fs, blkid)
# and what `keel build --format iso` boots with (isolinux, assembled by xorriso).
packages=(qemu-system-x86 busybox-static linux-source linux-image-amd64 cpio file gzip runc crun
          flex bison bc make gcc g++ libelf-dev libssl-dev xz-utils
          e2fsprogs util-linux xorriso isolinux syslinux-common
          linux-perf strace)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  echo "setup: adding the rust target x86_64-unknown-linux-musl" >&2
  rustup target add x86_64-unknown-linux-musl >&2
fi
