#!/usr/bin/env bash
# Build one of examples/ with keel build and boot it in QEMU, serial console on this
# terminal (the examples have a root shell there; `keel poweroff` ends the VM).
#
#   scripts/example.sh minimal|networked|persistent [--iso]
#
# Sets up the machine like scripts/demo.sh (root), builds keel's standard images into
# target/services, and gives the VM what the example needs: a virtio NIC on QEMU's user
# network (networked), a virtio disk kept in target/examples/persistent.img (persistent).
# --iso boots the hybrid ISO (keel build --format iso) instead of the kernel and initrd.
set -euo pipefail
name=${1:?usage: scripts/example.sh minimal|networked|persistent [--iso]}
iso=${2:-}
source "$(dirname "$0")/env.sh"
manifest="$top/examples/$name/keel.yml"
[ -f "$manifest" ] || { echo "example: no $manifest" >&2; exit 1; }
"$top/services/build.sh" "$top/target/services" >/dev/null
(cd "$top" && cargo build --quiet)
out="$top/target/examples/$name"
format=()
[ "$iso" = --iso ] && format=(--format iso)
"$top/target/debug/keel" build "$manifest" -o "$out" --store "$top/target/services" --keel "$KEEL_BIN" "${format[@]}"
qemu=()
case "$name" in
  networked) qemu=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0) ;;
  persistent)
    disk="$top/target/examples/persistent.img"
    [ -f "$disk" ] || truncate -s 256M "$disk"
    qemu=(-drive "file=$disk,format=raw,if=virtio") ;;
esac
echo "example: booting $name (type 'keel poweroff' in the shell to end it)" >&2
if [ "$iso" = --iso ]; then
  exec qemu-system-x86_64 -machine q35,accel="${KEEL_QEMU_ACCEL:-tcg}" -cpu max -m "${KEEL_QEMU_MEM:-256}" \
    -nographic -monitor none -serial stdio -no-reboot -nodefaults -cdrom "$out/keel.iso" "${qemu[@]}"
fi
KEEL_QEMU_ARGS="${qemu[*]}" exec "$top/scripts/run-qemu.sh" "$out/kernel" "$out/initrd.img" $(cat "$out/cmdline")
