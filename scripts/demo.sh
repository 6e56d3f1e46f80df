#!/usr/bin/env bash
# Boot the demo image in QEMU and watch keel work: onboot containers in order, services
# supervised, then a graceful poweroff. Sets everything up on a fresh Debian machine (root).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$top/scripts/busybox-rootfs.sh" "$top/examples/demo/busybox"
(cd "$top" && cargo build --quiet)
out="$top/target/demo"
"$top/target/debug/keel" build "$top/examples/demo/keel.yml" -o "$out" --keel "$KEEL_BIN"
echo "demo: booting (serial console below; the VM powers itself off)" >&2
exec "$top/scripts/run-qemu.sh" "$KEEL_KERNEL" "$out/initrd.img" "$@"
