#!/usr/bin/env bash
# Boot a kernel + initrd in QEMU (TCG by default) with the serial console on
# stdout. The VM exits on poweroff, reboot or kernel panic (-no-reboot, panic=-1).
#
#   run-qemu.sh KERNEL INITRD [EXTRA_CMDLINE...]
# Environment: KEEL_QEMU_MEM (MiB, default 256), KEEL_QEMU_ACCEL (default tcg),
# KEEL_QEMU_ARGS (extra QEMU arguments).
set -euo pipefail
kernel=${1:?usage: run-qemu.sh KERNEL INITRD [CMDLINE...]}
initrd=${2:?usage: run-qemu.sh KERNEL INITRD [CMDLINE...]}
shift 2
# /dev/kvm can exist without working (nested virtualisation): TCG unless asked otherwise.
accel=${KEEL_QEMU_ACCEL:-tcg}
exec qemu-system-x86_64 \
  -machine q35,accel="$accel" -cpu max -smp 1 -m "${KEEL_QEMU_MEM:-256}" \
  -nographic -monitor none -serial stdio -no-reboot -nodefaults \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 $*" \
  ${KEEL_QEMU_ARGS:-}
