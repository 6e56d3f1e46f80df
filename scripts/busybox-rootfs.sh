#!/usr/bin/env bash
# A minimal busybox root filesystem in DIR, usable as `image: ./DIR` in a manifest.
set -euo pipefail
dir=${1:?usage: busybox-rootfs.sh DIR}
rm -rf "$dir"
mkdir -p "$dir/bin" "$dir/proc" "$dir/dev" "$dir/sys" "$dir/tmp" "$dir/run" "$dir/etc"
cp /bin/busybox "$dir/bin/busybox"
for a in $("$dir/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$dir/bin/$a"
done
