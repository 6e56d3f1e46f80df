#!/usr/bin/env bash
# Assemble a keel initrd from a directory of bundles (the stop-gap until `keel build`).
#
#   build-image.sh SRC OUT.img [KEEL_BINARY]
#
# SRC holds onboot/NNN-name/, services/name/, onshutdown/NNN-name/ and optionally etc/.
# A bundle directory is either a full OCI bundle (config.json + rootfs/) or a busybox
# bundle: an `entry` shell script, an optional config.json (default:
# scripts/busybox-bundle.json) and optional `annotations` lines (key=value); its rootfs
# gets a static busybox and /bin/keel. The initrd is a gzip'd newc cpio with fixed owners and times.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
src=${1:?usage: build-image.sh SRC OUT.img [KEEL_BINARY]}
out=${2:?usage: build-image.sh SRC OUT.img [KEEL_BINARY]}
keel=${3:-$top/target/x86_64-unknown-linux-musl/release/keel}
busybox=${BUSYBOX:-/bin/busybox}
applets="sh echo cat sleep grep awk sed ls test [ printf true false kill ps head tail wc id hostname date cut tr readlink mount umount mkdir rm touch sync"

[ -x "$keel" ] || { echo "build-image: no keel binary at $keel" >&2; exit 1; }
file "$busybox" 2>/dev/null | grep -q 'statically linked' || { echo "build-image: $busybox is not a static busybox (install busybox-static)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$keel" "$stage/init"
mkdir -p "$stage/dev" "$stage/proc" "$stage/sys" "$stage/run" "$stage/tmp" "$stage/etc" "$stage/containers" "$stage/.busybox"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
cp "$busybox" "$stage/.busybox/busybox"
[ -d "$src/etc" ] && cp -a "$src/etc/." "$stage/etc/"

for kind in onboot services onshutdown; do
  [ -d "$src/$kind" ] || continue
  for b in "$src/$kind"/*/; do
    b=${b%/}
    name=$(basename "$b")
    dst="$stage/containers/$kind/$name"
    mkdir -p "$dst"
    if [ -d "$b/rootfs" ]; then
      cp -a "$b/." "$dst/"
      continue
    fi
    mkdir -p "$dst/rootfs/bin" "$dst/rootfs/proc" "$dst/rootfs/dev" "$dst/rootfs/sys" "$dst/rootfs/tmp" "$dst/rootfs/run" "$dst/rootfs/etc"
    # Hard links: the cpio stores busybox once however many bundles use it.
    ln "$stage/.busybox/busybox" "$dst/rootfs/bin/busybox"
    # keel itself, for `keel notify` and `keel ctl` inside containers (a hard link: free).
    ln "$stage/init" "$dst/rootfs/bin/keel"
    for a in $applets; do ln -s busybox "$dst/rootfs/bin/$a"; done
    install -m 0755 "$b/entry" "$dst/rootfs/entry"
    for extra in "$b"/files/*; do [ -e "$extra" ] && cp -a "$extra" "$dst/rootfs/"; done
    config="$top/scripts/busybox-bundle.json"
    [ -f "$b/config.json" ] && config="$b/config.json"
    if [ -f "$b/annotations" ]; then
      ann=$(sed -n 's/^\([^=]*\)=\(.*\)$/"\1": "\2"/p' "$b/annotations" | paste -sd, -)
      sed '$ d' "$config" > "$dst/config.json"
      printf '  ,"annotations": {%s}\n}\n' "$ann" >> "$dst/config.json"
    else
      cp "$config" "$dst/config.json"
    fi
  done
done
rm -rf "$stage/.busybox"

mkdir -p "$(dirname "$out")"
(cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
  cpio --null -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n > "$out.tmp"
mv "$out.tmp" "$out"
echo "build-image: $out ($(stat -c %s "$out") bytes)" >&2
