#!/usr/bin/env bash
# Boot the demo image in QEMU and watch keel work: onboot containers in order, services
# supervised, then a graceful poweroff. Sets everything up on a fresh Debian machine (root).
set -euo pipefail
source "$(dirname "$0")/env.sh"
img="$top/target/demo/initrd.img"
"$top/scripts/build-image.sh" "$top/examples/demo" "$img" "$KEEL_BIN"
echo "demo: booting (serial console below; the VM powers itself off)" >&2
exec "$top/scripts/run-qemu.sh" "$KEEL_KERNEL" "$img" "$@"
